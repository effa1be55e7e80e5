"""Scratch git + DVC repositories holding a copy of the real pipeline (stage code, dvc.yaml,
and with ``ORCHESTRATION`` the flows and prefect.yaml too), for tests that run it end to end."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE_CODE = ("pipelines",)
ORCHESTRATION = ("pipelines", "flows", "tasks", "prefect.yaml")

# As in this repository: metrics and plots are committed, outputs live in DVC, rolling
# checkpoints nowhere but here.
GITIGNORE = """\
/mlflow.db
/mlruns/
/checkpoints/
/logs/
/dvc_plots/
"""

# The pipeline on a few of the sample photos, with settings that make every stage take
# seconds: scale 2, 32 px crops, resnet18 with 8 HR channels, a few steps, one process
# (params.yaml's launcher auto would start two, each stage then spent starting them;
# test_launch covers it).
TINY = {
    "base": {"seed": 7, "device": "cpu", "scale": 2, "crop": 32, "launcher": "single"},
    "download": {"source": "sample", "max_images": 7, "valid_fraction": 0.2, "test_fraction": 0.2},
    "crappify": {"workers": 1, "examples": 2},
    "pretrain_generator": {
        "model": {"kind": "unet", "encoder": "resnet18", "pretrained": "none", "hr_channels": 8},
        "phases": [
            {"steps": 3, "batch_size": 2, "lr": 0.001, "frozen": True},
            {"steps": 3, "batch_size": 2, "lr": 0.001, "crop": 48},
        ],
        "valid_crop": 48,
        "eval_every": 3,
        "checkpoint_every": 3,
        "log_every": 1,
        "sample_every": 3,
    },
    "pretrain_critic": {
        "model": {"nf": 8, "n_blocks": 2},
        "steps": 4,
        "batch_size": 2,
        "checkpoint_every": 2,
        "log_every": 1,
    },
    "train_gan": {
        "steps": 4,
        "batch_size": 2,
        "checkpoint_every": 2,
        "valid_crop": 48,
        "valid_degradations": ["crappy", "clean"],
        "max_critic_steps": 2,
        "log_every": 1,
    },
    "evaluate": {"max_images": 2, "folder_draws": 2, "grid_images": 2, "grid_crop": 64},
    "export": {"check_sizes": [[21, 27]]},
}


def with_defaults(params: dict, defaults: dict) -> dict:
    """``params`` over ``defaults`` (nested mappings merged, any other value replaced)."""
    out = dict(defaults)
    for key, value in params.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = with_defaults(value, out[key]) if both else value
    return out


def tiny_params(changes: dict | None = None) -> dict:
    """``TINY`` with ``changes`` merged in, section by section."""
    return with_defaults(changes or {}, copy.deepcopy(TINY))


def git(path: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=path, check=True, capture_output=True, text=True
    ).stdout.strip()


def dvc_cli(
    path: Path,
    *args: str,
    env: dict | None = None,
    prefix: Sequence[str] = (),
    timeout: float = 900,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run a DVC command in ``path`` (stderr merged into stdout); ``prefix`` wraps it."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "dvc", *args],
        cwd=path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    if check and proc.returncode:
        raise AssertionError(
            f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
        )
    return proc


def commit_repo(
    path: Path,
    files: dict[str, str],
    copies: Sequence[str] = (),
    gitignore: str = GITIGNORE,
    env: dict | None = None,
    prefix: Sequence[str] = (),
    message: str = "workspace",
) -> Path:
    """A committed git + DVC repository at ``path``: ``copies`` (paths of this checkout) and
    ``files`` (name -> text); every scratch repository of the suite is made here."""
    path.mkdir(parents=True, exist_ok=True)
    for part in copies:
        if (ROOT / part).is_dir():
            shutil.copytree(
                ROOT / part, path / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(ROOT / part, path / part)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    (path / ".gitignore").write_text(gitignore)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "tests@example.com")
    git(path, "config", "user.name", "tests")
    dvc_cli(path, "init", "-q", env=env, prefix=prefix)
    dvc_cli(path, "config", "core.analytics", "false", env=env, prefix=prefix)  # no network
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)
    return path


def make_pipeline_repo(
    path: Path,
    params: dict,
    parts: Sequence[str] = STAGE_CODE,
    env: dict | None = None,
    prefix: Sequence[str] = (),
) -> Path:
    """A repository with ``parts`` of this checkout, its dvc.yaml and ``params`` over this
    checkout's params.yaml (dvc.yaml names the keys each stage reads, so every key must be
    present)."""
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    files = {
        "dvc.yaml": (ROOT / "dvc.yaml").read_text(),
        ".dvcignore": (ROOT / ".dvcignore").read_text(),
        "params.yaml": yaml.safe_dump(with_defaults(params, defaults), sort_keys=False),
    }
    return commit_repo(path, files, parts, env=env, prefix=prefix, message="pipeline workspace")

"""Scratch git + DVC repositories holding a copy of the real pipeline (stage code, dvc.yaml,
and with ``ORCHESTRATION`` the flows and prefect.yaml too), for tests that run it end to end."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

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
# seconds: scale 2, 32 px crops, resnet18 with 8 HR channels, a few steps.
TINY_SAMPLE = {
    "base": {"seed": 7, "device": "cpu", "scale": 2, "crop": 32},
    "download": {"source": "sample", "max_images": 7, "valid_fraction": 0.2, "test_fraction": 0.2},
    "crappify": {"workers": 1, "examples": 2},
    "pretrain_generator": {
        "model": {"encoder": "resnet18", "pretrained": "none", "hr_channels": 8},
        "phases": [{"steps": 3, "batch_size": 2, "lr": 0.001, "frozen": True},
                   {"steps": 3, "batch_size": 2, "lr": 0.001, "crop": 48}],
        "valid_crop": 48, "eval_every": 3, "checkpoint_every": 3, "log_every": 1,
        "sample_every": 3},
    "pretrain_critic": {"model": {"nf": 8, "n_blocks": 2}, "steps": 4, "batch_size": 2,
                        "checkpoint_every": 2, "log_every": 1},
    "train_gan": {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "valid_crop": 48,
                  "max_critic_steps": 2, "log_every": 1},
    "evaluate": {"max_images": 2, "grid_images": 2, "grid_crop": 64},
}


def git(path: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True,
                          text=True).stdout.strip()


def dvc_cli(path: Path, *args: str, env: dict | None = None, prefix: Sequence[str] = (),
            timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run a DVC command in ``path`` (stderr merged into stdout); ``prefix`` wraps it."""
    proc = subprocess.run([*prefix, sys.executable, "-m", "dvc", *args], cwd=path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def with_defaults(params: dict, defaults: dict) -> dict:
    """``params`` over ``defaults`` (nested mappings merged, any other value replaced)."""
    out = dict(defaults)
    for key, value in params.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = with_defaults(value, out[key]) if both else value
    return out


def make_pipeline_repo(path: Path, params: dict, parts: Sequence[str] = STAGE_CODE,
                       env: dict | None = None, prefix: Sequence[str] = ()) -> Path:
    """A committed git + DVC repository with ``parts`` of this checkout, dvc.yaml and ``params``
    over this checkout's params.yaml (dvc.yaml names the keys each stage reads, so every key
    must be present)."""
    path.mkdir(parents=True)
    for part in parts:
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, path / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / part, path / part)
    shutil.copy2(ROOT / "dvc.yaml", path / "dvc.yaml")
    shutil.copy2(ROOT / ".dvcignore", path / ".dvcignore")
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    (path / "params.yaml").write_text(yaml.safe_dump(with_defaults(params, defaults),
                                                     sort_keys=False))
    (path / ".gitignore").write_text(GITIGNORE)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "tests@example.com")
    git(path, "config", "user.name", "tests")
    dvc_cli(path, "init", "-q", env=env, prefix=prefix)
    dvc_cli(path, "config", "core.analytics", "false", env=env, prefix=prefix)  # no network
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "pipeline workspace")
    return path

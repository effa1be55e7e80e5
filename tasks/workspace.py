"""The DVC workspace a training flow runs in: stage order, experiment workspaces, provenance.

Runs with param overrides are DVC experiments, and they run the way ``dvc exp run --temp``
does, stage by stage: a throwaway git worktree of the current workspace (committed state
plus uncommitted changes to tracked files) shares the DVC cache, gets the overrides applied
to its params file by DVC's own ``-S`` code, runs each stage with ``dvc repro
--single-item``, and is saved with ``dvc exp save``. The user's params.yaml, dvc.lock and
outputs are never touched; ``dvc exp show`` lists the run, ``dvc exp apply`` adopts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tasks.dvc_stage import run_dvc, workspace_lock

EXPERIMENTS_DIR = Path(".dvc") / "tmp" / "flow-experiments"
# Links instead of copies: the worktree is thrown away and DVC removes a stage's outputs
# before running it, so nothing writes through a link into the cache.
WORKTREE_CACHE_TYPES = "reflink,hardlink,copy"


class PipelineOrderError(ValueError):
    """dvc.yaml lists a stage before a stage it depends on."""


class OverrideError(ValueError):
    """An override is not valid for the params file (unknown key, bad syntax)."""


def stage_order(root: Path) -> list[str]:
    """The stages of ``root``/dvc.yaml in the order listed there, checked against DVC's graph."""
    from dvc.repo import Repo

    dvcfile = str(Path(root).resolve() / "dvc.yaml")
    with Repo(str(root)) as repo:
        stages = [s for s in repo.index.stages if Path(s.path).resolve() == Path(dvcfile)]
        position = {stage: i for i, stage in enumerate(stages)}
        # DVC's graph has an edge from each stage to the stage producing one of its deps.
        for stage, upstream in repo.index.graph.edges:
            if stage in position and upstream in position and position[upstream] > position[stage]:
                raise PipelineOrderError(
                    f"dvc.yaml lists {stage.name!r} before {upstream.name!r}, whose "
                    f"outputs it depends on: list the stages in the order they run"
                )
        return [s.name for s in stages]


def select_stages(order: list[str], wanted: list[str] | None) -> list[str]:
    """``wanted`` (all if None) in pipeline order; an unknown name is an error."""
    if wanted is None:
        return list(order)
    unknown = [s for s in wanted if s not in order]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; dvc.yaml has {', '.join(order)}")
    return [s for s in order if s in wanted]


def set_param_args(overrides: Mapping[str, Any]) -> list[str]:
    """``key=value`` strings as ``dvc exp run -S`` takes them.

    A string value is passed as written after ``-S key=`` (DVC parses ``1e-5`` as a number,
    ``"'1e-5'"`` stays a string); other values (numbers, booleans, None, lists, mappings)
    are spelled in the override grammar so they arrive with their type.
    """
    return [
        f"{key}={value if isinstance(value, str) else _override_literal(value)}"
        for key, value in overrides.items()
    ]


def _override_literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_override_literal(v)}" for k, v in value.items()) + "}"
    raise OverrideError(f"cannot express {value!r} ({type(value).__name__}) as a param value")


def apply_overrides(workspace: Path, overrides: Mapping[str, Any]) -> None:
    """Write ``overrides`` into the params file(s) of ``workspace`` exactly as ``-S`` would."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides as dvc_apply

    for path, items in to_path_overrides(set_param_args(overrides)).items():
        try:
            dvc_apply(str(workspace / path), items)
        except InvalidArgumentError as exc:
            cause = str(exc.__cause__ or exc).splitlines()[0]
            raise OverrideError(f"{path}: {', '.join(items)}: {cause}") from None


@contextlib.contextmanager
def experiment_workspace(
    root: Path, name: str, overrides: Mapping[str, Any], logger
) -> Iterator[Path]:
    """A worktree of ``root`` with ``overrides`` applied, saved as DVC experiment ``name``.

    Yields the worktree; when the block succeeds its state is saved with ``dvc exp save``.
    The worktree is removed either way.
    """
    root = Path(root).resolve()
    if git_commit(root) is None:
        raise OverrideError(
            f"{root}: runs with overrides are DVC experiments, which need a git "
            "repository with at least one commit"
        )
    # Uncommitted changes to tracked files, as a commit that touches nothing; "" if clean.
    changes = _git(root, "stash", "create")
    uncached = _uncached_outputs(root)
    _warn_untracked(root, uncached, logger)
    path = root / EXPERIMENTS_DIR / name
    if path.exists():
        _remove_worktree(root, path)
    with workspace_lock(root, logger):
        _git(root, "worktree", "add", "--detach", str(path), "HEAD")
    try:
        # On top of HEAD, so the experiment's baseline is HEAD and `dvc exp show` lists it.
        if changes:
            _git(path, "stash", "apply", changes)
        # What DVC knows of the workspace and git may not track: dvc.lock, and the outputs
        # the cache does not hold (metrics, rolling checkpoints). A missing one would make
        # its stage look changed and run again.
        for rel in ["dvc.lock", *uncached]:
            _copy_missing(root / rel, path / rel)
        _share_cache(root, path)
        apply_overrides(path, overrides)
        _dvc(path, ["checkout", "--allow-missing"], logger, check=False)
        yield path
        # Experiment refs live in the repository's git directory, shared with the workspace.
        with workspace_lock(root, logger):
            _save(path, name, uncached, logger)
    finally:
        _remove_worktree(root, path)


def save_experiment(root: Path, name: str, logger) -> None:
    """Save the state of workspace ``root`` as DVC experiment ``name`` (HEAD stays as it is)."""
    root = Path(root).resolve()
    with workspace_lock(root, logger):
        _save(root, name, _uncached_outputs(root), logger)


def _save(workspace: Path, name: str, uncached: Mapping[str, bool], logger) -> None:
    save = ["exp", "save", "--name", name]
    for rel, persist in uncached.items():
        if not persist and (workspace / rel).exists():  # resume state stays out of git
            save += ["--include-untracked", rel]
    _dvc(workspace, save, logger)


def _share_cache(root: Path, worktree: Path) -> None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        cache_dir = repo.cache.local_cache_dir
    with Repo(str(worktree)) as repo, repo.config.edit("local") as conf:
        conf["cache"]["dir"] = cache_dir
        conf["cache"]["type"] = WORKTREE_CACHE_TYPES


def _uncached_outputs(workspace: Path) -> dict[str, bool]:
    """Outputs with ``cache: false`` (path relative to ``workspace`` -> ``persist``)."""
    from dvc.repo import Repo

    found = {}
    with Repo(str(workspace)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if not out.use_cache:
                    found[Path(out.fs_path).relative_to(workspace).as_posix()] = out.persist
    return found


def _warn_untracked(root: Path, uncached: Mapping[str, bool], logger) -> None:
    known = ["dvc.lock", *uncached]
    untracked = [
        f
        for f in _git(root, "ls-files", "--others", "--exclude-standard").splitlines()
        if not any(f == k or f.startswith(k + "/") for k in known)
    ]
    if untracked:
        shown = ", ".join(untracked[:10]) + (" ..." if len(untracked) > 10 else "")
        logger.warning(
            "untracked files are not part of the experiment (git add them to use them): %s", shown
        )


def _copy_missing(source: Path, target: Path) -> None:
    # Copies, not links: a stage may rewrite a metrics or checkpoint file in place.
    if not source.exists() or target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)


def _remove_worktree(root: Path, path: Path) -> None:
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(path)], cwd=root, capture_output=True
    )
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True)


def _dvc(workspace: Path, args: list[str], logger, check: bool = True) -> None:
    code = run_dvc(workspace, args, logger)
    if code and check:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {workspace} (exit code {code})")
    if code:
        logger.warning("dvc %s exited with %d in %s", " ".join(args), code, workspace)


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.strip()


# -- provenance ------------------------------------------------------------------------------
def git_commit(root: Path) -> str | None:
    """HEAD of the repository holding ``root``, or None outside git / before the first commit."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "HEAD"], cwd=root, capture_output=True, text=True
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_dirty(root: Path) -> bool | None:
    """Whether tracked files differ from HEAD (untracked files do not count)."""
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    return bool(proc.stdout.strip()) if proc.returncode == 0 else None


def lock_digest(workspace: Path) -> str | None:
    """sha256 of dvc.lock: names exactly which data, code and params the outputs come from."""
    path = Path(workspace) / "dvc.lock"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None

"""The Prefect task that runs one pipeline stage: it asks DVC to reproduce exactly that stage.

The task never calls stage code itself. ``dvc repro --single-item <stage>`` decides whether
the stage is up to date, restores it from the run-cache or runs its command, and writes
dvc.lock, so a stage behaves the same from a flow as from ``dvc repro``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from filelock import FileLock, Timeout
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipelines.running.stages import ACCELERATED
from tasks.process import run_streaming
from tasks.stage_progress import StageProgress

# Stages that need the accelerator. One `gpu` tag concurrency limit on the Prefect server
# (`prefect concurrency-limit create gpu 1`) then runs at most one of them at a time.
# Only a retry of a network fetch can succeed where the first try failed.
STAGE_RETRIES = {"download": 2}
RETRY_DELAY_SECONDS = 30
# Lines of a failed stage's output repeated in the error, enough to show a traceback.
TAIL_LINES = 60

LOCK_FILE = Path(".dvc") / "tmp" / "decrappify-flow.lock"

Outcome = Literal["ran", "restored", "up to date"]


@dataclass(frozen=True)
class StageResult:
    stage: str
    outcome: Outcome  # ran its command / restored from the run-cache / nothing to do
    seconds: float


class StageFailed(RuntimeError):
    """``dvc repro`` of a stage exited non-zero; the message ends with its last output lines."""

    def __init__(self, stage: str, returncode: int, tail: list[str]):
        self.stage, self.returncode, self.tail = stage, returncode, tail
        super().__init__(
            f"stage {stage!r} failed (dvc exit code {returncode}); last output:\n" + "\n".join(tail)
        )


def stage_task(stage: str):
    """``run_stage`` with the tags and retries that suit ``stage``."""
    tags = ["dvc", "gpu"] if stage in ACCELERATED else ["dvc"]
    return run_stage.with_options(
        tags=tags, retries=STAGE_RETRIES.get(stage, 0), retry_delay_seconds=RETRY_DELAY_SECONDS
    )


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def run_stage(
    stage: str, root: str, env: Mapping[str, str] | None = None, timeout: float | None = None
) -> StageResult:
    """``dvc repro --single-item <stage>`` in the DVC workspace ``root``.

    ``env`` is added to this process's environment for the stage; ``timeout`` (seconds)
    bounds the stage's run (not the wait for the workspace lock), after which its whole
    process tree is terminated.
    """
    logger = get_run_logger()
    workspace = Path(root)
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    ran = False
    running_line = f"Running stage '{stage}':"

    def on_line(line: str) -> None:
        nonlocal ran
        tail.append(line)
        ran = ran or line.strip() == running_line
        if line.strip():  # DVC spaces its hints with blank lines: no use in a log
            logger.info("%s", line)

    progress = StageProgress(stage, logger)  # bar refreshes move an artifact, not the log
    with workspace_lock(workspace, logger):
        before = _lock_entry(workspace, stage)
        code = run_streaming(
            [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
            cwd=workspace,
            env=stage_environment(env),
            on_line=on_line,
            timeout=timeout,
            on_progress=progress,
        )
        after = _lock_entry(workspace, stage)
    if code != 0:
        raise StageFailed(stage, code, list(tail))
    progress.finish()
    outcome: Outcome = "ran" if ran else ("restored" if after != before else "up to date")
    seconds = time.monotonic() - started
    logger.info("stage %s: %s (%.1f s)", stage, outcome, seconds)
    return StageResult(stage, outcome, seconds)


def run_dvc(workspace: Path, args: list[str], logger, env: Mapping[str, str] | None = None) -> int:
    """``dvc <args>`` in ``workspace``, each line of its output to ``logger``; its exit code."""
    return run_streaming(
        [sys.executable, "-m", "dvc", *args],
        cwd=workspace,
        env=stage_environment(env),
        on_line=lambda line: logger.info("%s", line),
    )


def stage_environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment plus ``extra``, with this interpreter's bin first on PATH.

    Stage commands say ``python -m pipelines.<stage>``; launched from a virtual environment
    that is not activated, ``python`` would otherwise be whatever the system offers.
    """
    env = {**os.environ, **(extra or {})}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")  # stage logs reach the flow as they are written
    return env


@contextlib.contextmanager
def workspace_lock(workspace: Path, logger) -> Iterator[None]:
    """Hold the workspace's flow lock: two DVC commands in one workspace make one fail."""
    path = workspace / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another DVC command in %s to finish (lock %s)", workspace, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _lock_entry(workspace: Path, stage: str) -> dict | None:
    path = workspace / "dvc.lock"
    if not path.exists():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(stage)

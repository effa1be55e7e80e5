"""Ways to run the training flow on a schedule or on demand, from one machine or many.

* One machine: ``serve`` keeps a process running that is both deployment and worker.
* Workers: prefect.yaml describes the deployment, ``deploy`` registers it, ``worker``
  starts a process worker (on the GPU machine) in the repository checkout.
Both need a Prefect server (``prefect server start``) and ``PREFECT_API_URL`` pointing at it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

WORK_POOL = "decrappify"
# The work queues of prefect.yaml's deployments: runs in a checkout, runs that clone from git.
CHECKOUT_QUEUE, GIT_QUEUE = "checkout", "from-git"
GIT_URL_ENV = "DECRAPPIFY_GIT_URL"
PREFECT = [sys.executable, "-m", "prefect"]


def serve(
    root: Path,
    name: str = "training",
    cron: str | None = None,
    stages: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    experiment: str = "decrappify",
) -> None:
    """Serve the training flow from this process until interrupted; ``cron`` schedules runs.

    One run at a time: two trainings would compete for the GPU and the workspace.
    """
    from flows.training import training

    parameters: dict[str, Any] = {"root": str(Path(root).resolve()), "experiment": experiment}
    if stages:
        parameters["stages"] = stages
    if overrides:
        parameters["overrides"] = overrides
    training.serve(
        name=name,
        cron=cron,
        parameters=parameters,
        limit=1,
        description="Training pipeline of the repository at " + parameters["root"],
    )


def deploy(root: Path, prefect_args: list[str]) -> int:
    """``prefect deploy`` of ``root``/prefect.yaml (all deployments unless told otherwise)."""
    root = Path(root).resolve()
    args = prefect_args or ["--all"]
    cmd = [*PREFECT, "--no-prompt", "deploy", "--prefect-file", str(root / "prefect.yaml"), *args]
    return subprocess.call(cmd, cwd=root)


def start_worker(
    root: Path, pool: str = WORK_POOL, run_once: bool = False, git_url: str | None = None
) -> None:
    """Replace this process with a process worker for ``pool`` serving the checkout ``root``.

    The pull step of ``nightly`` changes into ``$DECRAPPIFY_ROOT``, exported here; with
    ``git_url``, the worker serves ``from-git`` instead, whose runs clone ``git_url``. Each
    kind polls only its own work queue: a checkout worker never takes a run that needs
    ``$DECRAPPIFY_GIT_URL``, nor a cloning worker one that needs a checkout.
    """
    env = dict(os.environ)
    if git_url:
        # Each run works in its own clone, found from the run's working directory.
        env.pop("DECRAPPIFY_ROOT", None)
        env[GIT_URL_ENV] = git_url
    else:
        env["DECRAPPIFY_ROOT"] = str(Path(root).resolve())
    queue = GIT_QUEUE if git_url else CHECKOUT_QUEUE
    cmd = [*PREFECT, "worker", "start", "--pool", pool, "--work-queue", queue, "--type", "process"]
    if run_once:
        cmd.append("--run-once")
    os.execve(sys.executable, cmd, env)

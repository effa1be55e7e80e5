"""Prefect tasks that move a workspace's data through its DVC remote, for workers that run
the flow in a fresh clone (another machine, or a process worker's temporary folder).

Before the stages, ``pull_data`` fetches what dvc.lock names from the remote, so stages that
ran elsewhere are up to date here. After them, ``push_experiment`` publishes the run as a DVC
experiment: its git ref goes to the git remote, its data to the DVC remote, and any clone
gets it with ``dvc exp pull <git remote> <name>`` and ``dvc exp apply <name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.dvc_stage import run_dvc, workspace_lock

# A remote is a network service: a retry after a pause can succeed where the first try failed.
RETRIES = 2
RETRY_DELAY_SECONDS = 30


class TransferFailed(RuntimeError):
    """A DVC command that talks to a remote exited non-zero."""


def _dvc(root: str, args: list[str], env: Mapping[str, str] | None) -> None:
    logger = get_run_logger()
    workspace = Path(root)
    with workspace_lock(workspace, logger):
        code = run_dvc(workspace, args, logger, env)
    if code:
        raise TransferFailed(f"dvc {' '.join(args)} failed in {workspace} (exit code {code})")


@task(
    name="dvc-pull", cache_policy=NO_CACHE, retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS
)
def pull_data(root: str, env: Mapping[str, str] | None = None) -> None:
    """``dvc pull`` of every output dvc.lock names; one the remote lacks is left to its stage."""
    _dvc(root, ["pull", "--allow-missing"], env)


@task(
    name="dvc-exp-push",
    cache_policy=NO_CACHE,
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_SECONDS,
)
def push_experiment(
    root: str, name: str, git_remote: str = "origin", env: Mapping[str, str] | None = None
) -> None:
    """``dvc exp push``: experiment ``name``'s git ref to ``git_remote``, its data to the
    default DVC remote."""
    _dvc(root, ["exp", "push", git_remote, name], env)

"""The training flow: the selected DVC stages in dvc.yaml order, one Prefect task each.

DVC decides what runs: an up-to-date stage is skipped, a stage seen before with the same
inputs is restored from the run-cache. The flow adds what DVC does not: retries, the
``gpu`` concurrency tag, timeouts that kill the whole stage process tree, an MLflow parent
run that says which stages ran, param overrides run as DVC experiments, and for a worker in a
fresh clone, data pulled from the DVC remote and the run pushed back as an experiment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.artifacts import publish
from flows.parent_run import ParentRun
from pipelines.running.tracking import (
    EXPERIMENT_ENV,
    PARENT_RUN_ENV,
    ROOT_ENV,
    repo_root,
    resolve_tracking_uri,
)
from tasks.dvc_remote import pull_data, push_experiment
from tasks.dvc_stage import stage_task
from tasks.workspace import (
    experiment_workspace,
    git_commit,
    git_dirty,
    lock_digest,
    save_experiment,
    select_stages,
    stage_order,
)


@flow(name="training", description="Reproduce the DVC pipeline stage by stage, tracked in MLflow.")
def training(
    stages: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    experiment: str = "decrappify",
    root: str | None = None,
    stage_timeout: float | None = None,
    dvc_remote: bool = False,
    git_remote: str = "origin",
) -> dict[str, str]:
    """Run ``stages`` (all when None) in dvc.yaml order; returns each stage's outcome.

    Args:
        stages: stage names, in any order; they run in the order dvc.yaml lists them, each
            exactly as ``dvc repro --single-item <stage>`` (upstream stages are not added).
        overrides: params for this run only, ``{"crappify.workers": 1}``, as ``dvc exp run
            -S`` takes them. The run becomes a DVC experiment named after the flow run and
            the workspace (params.yaml, dvc.lock, outputs) is left as it was.
        experiment: MLflow experiment of the parent run and of the stage runs.
        root: the DVC repository; default: ``DECRAPPIFY_ROOT``, else the working directory.
        stage_timeout: seconds per stage, after which the stage's process tree is killed.
        dvc_remote: for a workspace that is a fresh clone (a worker on another machine):
            first pull what dvc.lock names from the DVC remote, so stages that ran elsewhere
            are up to date; at the end publish the run as a DVC experiment named after the
            flow run, its git ref pushed to ``git_remote`` and its data to the DVC remote
            (``dvc exp pull <git_remote> <name>`` then ``dvc exp apply <name>`` in any clone).
        git_remote: the git remote the experiment is pushed to.
    """
    logger = get_run_logger()
    repo = Path(root).resolve() if root else repo_root()
    selected = select_stages(stage_order(repo), stages)
    name = _run_name()
    uri = resolve_tracking_uri(_configured_tracking_uri(repo), root=repo)
    outcomes = dict.fromkeys(selected, "not run")
    facts: dict[str, Any] = {
        "prefect.flow_run_id": flow_run.id,
        "prefect.flow_run_name": name,
        "mlflow.source.git.commit": git_commit(repo),
        "decrappify.git_dirty": git_dirty(repo),
    }

    with ParentRun(uri, experiment, name, logger) as parent:
        env = {EXPERIMENT_ENV: experiment, "MLFLOW_TRACKING_URI": uri}
        if parent.run_id:
            env[PARENT_RUN_ENV] = parent.run_id
        try:
            if dvc_remote:
                pull_data(str(repo), env)
            with _workspace(repo, name, overrides, logger) as workspace:
                env[ROOT_ENV] = str(workspace)
                try:
                    previous = None  # each stage waits for the one before: a chain in the graph
                    for stage in selected:
                        try:
                            state = stage_task(stage)(
                                stage,
                                str(workspace),
                                env,
                                stage_timeout,
                                wait_for=[previous] if previous else None,
                                return_state=True,
                            )
                            result = state.result()
                        except BaseException:
                            outcomes[stage] = "failed"
                            raise
                        outcomes[stage] = result.outcome
                        previous = state
                finally:
                    facts["dvc.lock.sha256"] = lock_digest(workspace)
                    publish(
                        workspace,
                        outcomes,
                        logger,
                        tracking_uri=uri,
                        experiment_id=parent.experiment_id,
                        parent_run_id=parent.run_id,
                    )
            if overrides:
                facts["dvc.experiment"] = name  # reached once `dvc exp save` succeeded
            if dvc_remote:
                if not overrides:
                    save_experiment(repo, name, logger)
                    facts["dvc.experiment"] = name
                push_experiment(str(repo), name, git_remote, env)
                facts["dvc.experiment.pushed_to"] = git_remote
        finally:
            parent.record(
                tags={**facts, **_outcome_tags(outcomes)},
                params={
                    "stages": ",".join(selected),
                    **{f"override.{k}": v for k, v in (overrides or {}).items()},
                },
            )
            logger.info("stages: %s", ", ".join(f"{s} {o}" for s, o in outcomes.items()))
    return outcomes


@contextlib.contextmanager
def _workspace(repo: Path, name: str, overrides: dict[str, Any] | None, logger) -> Iterator[Path]:
    """The repository itself, or with overrides a throwaway experiment workspace."""
    if not overrides:
        yield repo
        return
    with experiment_workspace(repo, name, overrides, logger) as workspace:
        logger.info("overrides %s: running as DVC experiment %r", overrides, name)
        yield workspace


def _outcome_tags(outcomes: dict[str, str]) -> dict[str, str]:
    tags = {f"decrappify.stage.{stage}": outcome for stage, outcome in outcomes.items()}
    for outcome in ("ran", "up to date", "restored", "failed", "not run"):
        key = "decrappify.stages." + outcome.replace(" ", "_")
        tags[key] = ",".join(s for s, o in outcomes.items() if o == outcome)
    return tags


def _run_name() -> str:
    """The flow run's name plus a piece of its id: unique, and a valid DVC experiment name."""
    run_id = flow_run.id or ""
    return f"{flow_run.name or 'training'}-{run_id[:8]}".rstrip("-")


def _configured_tracking_uri(repo: Path) -> str:
    params = repo / "params.yaml"
    if not params.exists():
        return ""
    data = yaml.safe_load(params.read_text()) or {}
    return str((data.get("base") or {}).get("tracking_uri") or "")

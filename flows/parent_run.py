"""The training flow's MLflow run, the parent of every stage run of that flow run.

It uses an explicit ``MlflowClient`` rather than mlflow's process-wide active run, because
one serving process may run several flows. Tracking is for browsing: the first failing
call warns once and turns it off, and the flow goes on (DVC files are the record).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.running.tracking import NeverStop, fail_fast


class ParentRun:
    """``with ParentRun(uri, experiment, name, logger) as run:``; ``run_id`` None when off."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, logger):
        self.uri, self.experiment, self.run_name, self.logger = (
            tracking_uri,
            experiment,
            run_name,
            logger,
        )
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client = None
        self._call = NeverStop(
            lambda why: self.logger.warning(
                "MLflow unavailable at %s (%s); the flow goes on without tracking", self.uri, why
            )
        )

    def __enter__(self) -> ParentRun:
        fail_fast()

        def start():
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment_id()
            run = self._client.create_run(
                self.experiment_id, run_name=self.run_name, tags={"decrappify.kind": "flow"}
            )
            self.run_id = run.info.run_id

        self._call(start)
        return self

    def _experiment_id(self) -> str:
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self._client.create_experiment(self.experiment)
        except Exception:
            # Another flow (or a stage) created it meanwhile.
            found = self._client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def __exit__(self, exc_type, exc, tb) -> None:
        # Interrupted (Ctrl-C, a cancelled flow run) is not the same as failed.
        status = (
            "FINISHED"
            if exc_type is None
            else "FAILED"
            if issubclass(exc_type, Exception)
            else "KILLED"
        )
        self._call(lambda: self._client.set_terminated(self.run_id, status=status))

    def record(self, tags: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        """Tags and params in one request; None values are left out."""

        def send():
            from mlflow.entities import Param, RunTag

            self._client.log_batch(
                self.run_id,
                params=[Param(k, str(v)[:6000]) for k, v in params.items() if v is not None],
                tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None],
            )

        self._call(send)

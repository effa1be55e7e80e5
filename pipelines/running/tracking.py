"""MLflow logging that never stops a stage.

One run per stage, nested under the flow's parent run when ``DECRAPPIFY_PARENT_RUN_ID`` is
set (not ``MLFLOW_RUN_ID``: a child started with it would resume the parent). The tracking
URI resolves to one absolute location so every working directory logs to the same store.
The first failing call warns once and turns logging off; checkpoints and DVC metric files
are written independently, so training goes on and the run's end says what was not logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core.config import ConfigError, flatten, read_params

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "DECRAPPIFY_PARENT_RUN_ID"
EXPERIMENT_ENV = "DECRAPPIFY_EXPERIMENT"
ROOT_ENV = "DECRAPPIFY_ROOT"
# Stages whose runs also record CPU, memory (and with nvidia-ml-py GPU) use over time.
SYSTEM_METRICS_STAGES = frozenset({"pretrain_generator", "pretrain_critic", "train_gan"})


def repo_root() -> Path:
    """The repository root: ``DECRAPPIFY_ROOT``, else the nearest folder holding dvc.yaml."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    return here


def resolve_tracking_uri(configured: str = "", root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` wins, then params, then ``sqlite:///<repo root>/mlflow.db``.

    Relative locations resolve against ``root`` (default: ``repo_root()``); a flow passes
    the repository it runs, which need not be its working directory.
    """
    root = Path(root) if root is not None else repo_root()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if not uri:
        return f"sqlite:///{root / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///") :]
        return f"sqlite:///{(root / rel).resolve()}"
    if "://" not in uri:
        return (root / uri).resolve().as_uri()
    return uri


def fail_fast() -> None:
    """An unreachable server would otherwise be retried for minutes before the error shows."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def reason(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line warnings."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class NeverStop:
    """Runs tracking calls so that none stops the caller (tracking is for browsing; checkpoints
    and DVC files are the record). The first failure of the store warns once, through
    ``off(reason)``, and turns the rest off; a call named ``what`` that fails loses only that
    item, through ``lost(what, reason)``."""

    def __init__(self, off: Callable[[str], None], lost: Callable[[str, str], None] | None = None):
        self.off, self.lost = off, lost
        self.on = True
        self.failures = 0  # calls that raised
        self.skipped = 0  # calls made after tracking was turned off

    def __call__(self, fn: Callable[[], Any], what: str = "") -> Any:
        if not self.on:
            self.skipped += 1
            return None
        try:
            return fn()
        except Exception as exc:  # tracking must never stop the caller
            self.failures += 1
            if what and self.lost is not None:
                self.lost(what, reason(exc))
                return None
            self.on = False
            self.off(reason(exc))
            return None


def project_tracking_uri(root: Path | None = None) -> str:
    """The store the stages of the repository ``root`` log to: params.yaml's
    ``base.tracking_uri``, resolved (what ``make ui`` and ``decrappify restore`` open)."""
    root = Path(root) if root is not None else repo_root()
    configured = ""
    try:
        configured = str(
            (read_params(root / "params.yaml").get("base") or {}).get("tracking_uri") or ""
        )
    except ConfigError:
        pass  # no params here: the default store of the repository root
    return resolve_tracking_uri(configured, root=root)


class Tracker:
    """A stage's MLflow run. Every method swallows tracking errors after warning once."""

    def __init__(
        self,
        stage: str,
        tracking_uri: str = "",
        experiment: str = "decrappify",
        enabled: bool = True,
    ):
        self.stage = stage
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = os.environ.get(EXPERIMENT_ENV) or experiment
        self._wanted = enabled
        self._guard = NeverStop(
            lambda why: log.warning(
                "MLflow unavailable at %s (%s); stage %s goes on without tracking.",
                self.uri,
                why,
                self.stage,
            ),
            lambda what, why: log.warning(
                "MLflow: could not log %s (%s); stage %s goes on.", what, why, self.stage
            ),
        )
        self.run_id: str | None = None
        self._mlflow = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        fail_fast()
        logging.getLogger("alembic").setLevel(logging.WARNING)

        def start():
            import mlflow

            self._mlflow = mlflow
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(self.experiment)
            parent = os.environ.get(PARENT_RUN_ENV) or None
            run = mlflow.start_run(
                run_name=self.stage,
                parent_run_id=parent,
                tags={"decrappify.stage": self.stage},
                log_system_metrics=self.stage in SYSTEM_METRICS_STAGES,
            )
            self.run_id = run.info.run_id

        self._call(start)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._mlflow is not None and self.run_id is not None and self._guard.on:
            status = "FINISHED" if exc_type is None else "FAILED"
            if self.failed_calls:
                self._call(lambda: self._mlflow.set_tag("decrappify.not_logged", self.failed_calls))
            self._call(lambda: self._mlflow.end_run(status=status))
        if self.failed_calls:
            log.warning(
                "MLflow: %d logging call(s) of stage %s were not recorded (%s); "
                "checkpoints and DVC metrics are complete.",
                self.failed_calls,
                self.stage,
                self.uri,
            )

    @property
    def enabled(self) -> bool:
        """Asked for, and the store has not failed."""
        return self._wanted and self._guard.on

    @property
    def failed_calls(self) -> int:
        """Logging calls that were not recorded (none are counted when tracking is off by
        choice, or never got as far as importing mlflow)."""
        started = self.run_id is not None or self._mlflow is not None
        return self._guard.failures + (self._guard.skipped if started else 0)

    def _call(self, fn: Callable[[], Any], what: str = "") -> Any:
        """Run one logging call. Without ``what`` a failure means the store is unreachable and
        turns logging off; with it, only that item is lost (e.g. a model that cannot be saved)."""
        if not self._wanted:
            return None
        return self._guard(fn, what)

    # -- logging ---------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
        self._call(lambda: self._mlflow.log_params(flat))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {
            k: float(v)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
        }
        if clean:
            self._call(lambda: self._mlflow.log_metrics(clean, step=step))

    def log_image(
        self,
        image: np.ndarray,
        name: str | None = None,
        *,
        key: str | None = None,
        step: int | None = None,
    ) -> None:
        """``image``: HxWx3 uint8 RGB, as the file ``name``, or with ``key`` as one step of an
        image series (the MLflow UI shows a slider over the steps of a key)."""
        if key is not None:
            self._call(lambda: self._mlflow.log_image(image, key=key, step=step or 0))
        else:
            self._call(lambda: self._mlflow.log_image(image, artifact_file=name))

    def log_table(self, columns: Mapping[str, list], name: str) -> None:
        """A table (column -> values) as the JSON artifact ``name``; RGB arrays become images."""

        def do():
            images = {k for k, v in columns.items() if any(isinstance(x, np.ndarray) for x in v)}
            data = {
                k: (
                    [self._mlflow.Image(x) if isinstance(x, np.ndarray) else x for x in v]
                    if k in images
                    else v
                )
                for k, v in columns.items()
            }
            self._mlflow.log_table(data=data, artifact_file=name)

        if columns:
            self._call(do, what=f"table {name}")

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self._call(lambda: self._mlflow.log_artifact(str(path), artifact_path=artifact_path))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call(lambda: self._mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def log_model(
        self,
        model,
        name: str,
        input_example: np.ndarray | None = None,
        registered_model_name: str | None = None,
    ) -> Any:
        """Log the generator ``model`` as an MLflow model in the ONNX flavour, with its
        safetensors weights: no pickle, and it loads where only mlflow and onnxruntime are
        installed (see ``pipelines.exporting.mlflow_model``)."""

        def do():
            from pipelines.exporting import mlflow_model

            return mlflow_model.log(model, name, registered_model_name, input_example)

        return self._call(do, what=f"model {name}")

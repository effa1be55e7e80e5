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
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pipelines.core.config import flatten

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
        rel = uri[len("sqlite:///"):]
        return f"sqlite:///{(root / rel).resolve()}"
    if "://" not in uri:
        return (root / uri).resolve().as_uri()
    return uri


def project_tracking_uri(root: Path | None = None) -> str:
    """The store the stages of the repository ``root`` log to: as ``resolve_tracking_uri``,
    with ``base.tracking_uri`` read from its params.yaml (what ``make ui`` opens)."""
    import yaml

    root = Path(root) if root is not None else repo_root()
    params = root / "params.yaml"
    data = (yaml.safe_load(params.read_text()) or {}) if params.exists() else {}
    configured = str(((data.get("base") or {}).get("tracking_uri")) or "")
    return resolve_tracking_uri(configured, root=root)


class Tracker:
    """A stage's MLflow run. Every method swallows tracking errors after warning once."""

    def __init__(self, stage: str, tracking_uri: str = "", experiment: str = "decrappify",
                 enabled: bool = True):
        self.stage = stage
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = os.environ.get(EXPERIMENT_ENV) or experiment
        self.enabled = enabled
        self.failed_calls = 0
        self.run_id: str | None = None
        self._mlflow = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Tracker":
        if not self.enabled:
            return self
        # An unreachable server would otherwise retry for minutes before raising.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        logging.getLogger("alembic").setLevel(logging.WARNING)

        def start():
            import mlflow
            self._mlflow = mlflow
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(self.experiment)
            parent = os.environ.get(PARENT_RUN_ENV) or None
            run = mlflow.start_run(run_name=self.stage, parent_run_id=parent,
                                   tags={"decrappify.stage": self.stage},
                                   log_system_metrics=self.stage in SYSTEM_METRICS_STAGES)
            self.run_id = run.info.run_id
        self._call(start)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._mlflow is not None and self.run_id is not None and self.enabled:
            status = "FINISHED" if exc_type is None else "FAILED"
            if self.failed_calls:
                self._call(lambda: self._mlflow.set_tag("decrappify.not_logged", self.failed_calls))
            self._call(lambda: self._mlflow.end_run(status=status))
        if self.failed_calls:
            log.warning("MLflow: %d logging call(s) of stage %s were not recorded (%s); "
                        "checkpoints and DVC metrics are complete.", self.failed_calls,
                        self.stage, self.uri)

    def _call(self, fn: Callable[[], Any], what: str = "") -> Any:
        """Run one logging call. Without ``what`` a failure means the store is unreachable and
        turns logging off; with it, only that item is lost (e.g. a model that cannot be saved)."""
        if not self.enabled:
            self.failed_calls += 1 if self.run_id is not None or self._mlflow is not None else 0
            return None
        try:
            return fn()
        except Exception as exc:  # tracking must never stop a stage
            self.failed_calls += 1
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if what:
                log.warning("MLflow: could not log %s (%s); stage %s goes on.", what, reason, self.stage)
                return None
            self.enabled = False
            log.warning("MLflow unavailable at %s (%s); stage %s goes on without tracking.",
                        self.uri, reason, self.stage)
            return None

    # -- logging ---------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
        self._call(lambda: self._mlflow.log_params(flat))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in flatten(metrics).items()
                 if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
        if clean:
            self._call(lambda: self._mlflow.log_metrics(clean, step=step))

    def log_image(self, image: np.ndarray, name: str | None = None, *, key: str | None = None,
                  step: int | None = None) -> None:
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
            data = {k: ([self._mlflow.Image(x) if isinstance(x, np.ndarray) else x for x in v]
                        if k in images else v) for k, v in columns.items()}
            self._mlflow.log_table(data=data, artifact_file=name)
        if columns:
            self._call(do, what=f"table {name}")

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self._call(lambda: self._mlflow.log_artifact(str(path), artifact_path=artifact_path))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call(lambda: self._mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def log_model(self, model, name: str, input_example: np.ndarray | None = None,
                  registered_model_name: str | None = None) -> Any:
        """Log ``model`` as an MLflow model (weight/spectral-norm parametrizations folded in,
        since parametrized modules cannot be pickled)."""
        def do():
            import mlflow.pytorch
            from pipelines.training.checkpoint import plain_copy
            model_ = plain_copy(model)
            kwargs = {}
            if input_example is not None:
                from mlflow.models import infer_signature
                import torch
                with torch.no_grad():
                    out = model_(torch.from_numpy(input_example)).numpy()
                kwargs["signature"] = infer_signature(input_example, out)
                kwargs["input_example"] = input_example
            return mlflow.pytorch.log_model(model_, name=name, serialization_format="pickle",
                                            registered_model_name=registered_model_name, **kwargs)
        return self._call(do, what=f"model {name}")

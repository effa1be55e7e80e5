"""A stage's numbers, split in two: results for DVC and git, the run's own numbers apart.

``metrics/<stage>.json`` holds only what the params, inputs and code decide, so a rerun with
identical results leaves it, dvc.lock and ``git status`` unchanged. What varies from run to
run (timings, throughput, how much was reused from an interrupted run) goes to
``logs/<stage>.json``, which is git-ignored and no DVC output; MLflow gets both, from the
dict the stage returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipelines.core.config import BaseConfig
from pipelines.core.files import write_json


def results_file(metrics_dir: Path | str, stage: str) -> Path:
    return Path(metrics_dir) / f"{stage}.json"


def write_results(
    base: BaseConfig, stage: str, metrics: Mapping[str, Any], run_keys: Iterable[str]
) -> None:
    """``metrics`` but ``run_keys`` to paths.metrics/<stage>.json, ``run_keys`` to
    paths.logs/<stage>.json."""
    run_keys = set(run_keys)
    unknown = run_keys - set(metrics)
    if unknown:
        raise KeyError(f"{stage}: run keys {sorted(unknown)} are not among its metrics")
    write_json(
        results_file(base.paths.metrics, stage),
        {k: v for k, v in metrics.items() if k not in run_keys},
    )
    write_json(
        Path(base.paths.logs) / f"{stage}.json", {k: v for k, v in metrics.items() if k in run_keys}
    )

"""What a training flow run shows in the Prefect UI besides its logs: Prefect artifacts.

* ``evaluation``: a table artifact, one row per data set and method (every metric, and each
  model's Y-PSNR gain over bicubic), from the workspace's evaluation;
* ``run-summary``: a markdown artifact with each stage's outcome, the GAN stage's chosen
  step and the evaluation's sample grid (inlined, shrunk to a few tens of kB);
* ``mlflow-run`` and ``report``: link artifacts to the MLflow parent run and the report page.

Artifacts are for looking at: one that cannot be made is a warning, never a failed run.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from pipelines.reporting.page import REPORT_NAME
from pipelines.reporting.results import read_evaluation, table_rows

EVALUATION_KEY, SUMMARY_KEY, MLFLOW_KEY, REPORT_KEY = (
    "evaluation",
    "run-summary",
    "mlflow-run",
    "report",
)
GRID_FILE, GAN_METRICS = "evaluate_grid.png", "train_gan.json"
GRID_WIDTH = 960  # px of the grid inlined in the summary
# Where `make ui` serves a local (sqlite) store; a server's own URL is used as it is.
LOCAL_UI = "http://127.0.0.1:5000"


# what workspace_paths raises for a params.yaml it cannot read as a mapping
PARAMS_ERRORS = (OSError, yaml.YAMLError, AttributeError)


def workspace_paths(workspace: Path) -> tuple[Path, Path, Path]:
    """The metrics, plots and reports folders of ``workspace``, as its params.yaml
    ``base.paths`` says."""
    params = workspace / "params.yaml"
    paths = {}
    if params.exists():
        data = yaml.safe_load(params.read_text()) or {}
        paths = (data.get("base") or {}).get("paths") or {}
    return tuple(workspace / paths.get(key, key) for key in ("metrics", "plots", "reports"))


def mlflow_run_url(tracking_uri: str, experiment_id: str | None, run_id: str) -> str:
    """The MLflow UI's page of a run: on the tracking server, or on `make ui` for a local store."""
    scheme = urlparse(tracking_uri).scheme
    base = tracking_uri.rstrip("/") if scheme in ("http", "https") else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id or '0'}/runs/{run_id}"


def publish(
    workspace: Path,
    outcomes: Mapping[str, str],
    logger,
    *,
    tracking_uri: str = "",
    experiment_id: str | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Make the run's artifacts; returns what was made, by key (the artifact ids)."""
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    made: dict[str, Any] = {}
    try:
        metrics_dir, plots_dir, reports_dir = workspace_paths(workspace)
    except PARAMS_ERRORS as exc:
        logger.warning("no artifacts: %s/params.yaml unreadable (%s)", workspace, exc)
        return made

    def attempt(key: str, make: Callable[[], Any]) -> None:
        try:
            made[key] = make()
        except FileNotFoundError as exc:
            logger.info("no %s artifact: %s", key, exc)
        except Exception as exc:  # noqa: BLE001 - an artifact never fails the run
            logger.warning("%s artifact not made (%s: %s)", key, type(exc).__name__, exc)

    def evaluation():
        results = read_evaluation(metrics_dir)
        return create_table_artifact(
            table_rows(results),
            key=EVALUATION_KEY,
            description="Evaluation: means per data set and method; "
            "`<metric>_gain` is the difference to bicubic.",
        )

    attempt(EVALUATION_KEY, evaluation)
    attempt(
        SUMMARY_KEY,
        lambda: create_markdown_artifact(
            summary_markdown(outcomes, metrics_dir, plots_dir),
            key=SUMMARY_KEY,
            description="Stage outcomes, the GAN's chosen step and the sample grid",
        ),
    )
    if parent_run_id:
        url = mlflow_run_url(tracking_uri, experiment_id, parent_run_id)
        attempt(
            MLFLOW_KEY,
            lambda: create_link_artifact(
                url,
                link_text=f"MLflow run {parent_run_id}",
                key=MLFLOW_KEY,
                description="The flow's MLflow parent run; its stage runs are nested under it.",
            ),
        )
    report = reports_dir / REPORT_NAME
    if report.exists():
        attempt(
            REPORT_KEY,
            lambda: create_link_artifact(
                report.resolve().as_uri(),
                link_text=str(report.resolve()),
                key=REPORT_KEY,
                description="The run's report page (a file on the machine that ran the flow; "
                "`decrappify report --open` opens it).",
            ),
        )
    return made


def summary_markdown(outcomes: Mapping[str, str], metrics_dir: Path, plots_dir: Path) -> str:
    lines = [
        "# Training run",
        "",
        "| stage | outcome |",
        "|---|---|",
        *(f"| {stage} | {outcome} |" for stage, outcome in outcomes.items()),
        "",
    ]
    gan = metrics_dir / GAN_METRICS
    if gan.exists():
        metrics = json.loads(gan.read_text())
        chosen = metrics.get("chosen_step")
        rule = metrics.get("select_metric", "")
        lines += [
            f"**Chosen GAN step: {chosen}** of {metrics.get('generator_steps', '?')} "
            f"(best validation {rule} among the eligible checkpoints).",
            "",
        ]
    grid = plots_dir / GRID_FILE
    if grid.exists():
        lines += [
            "## Sample grid",
            "",
            "Input, bicubic, each generator and the truth:",
            "",
            f"![sample grid]({grid_data_uri(grid)})",
            "",
        ]
    return "\n".join(lines)


def grid_data_uri(path: Path, width: int = GRID_WIDTH) -> str:
    """The grid as an inline JPEG at most ``width`` px wide (the PNG is too big to inline)."""
    import cv2

    from pipelines.imaging.images import encode_jpeg, read_rgb

    rgb = read_rgb(path)
    if rgb.shape[1] > width:
        rgb = cv2.resize(
            rgb, (width, round(rgb.shape[0] * width / rgb.shape[1])), interpolation=cv2.INTER_AREA
        )
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(rgb, 85)).decode("ascii")

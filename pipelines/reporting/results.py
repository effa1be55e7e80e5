"""The evaluation results as the report and the flow's artifacts read them.

Everything that reads the evaluation goes through ``read_evaluation``, so a change of the
metrics layout is adapted in one place. The structure is evaluate.json's: per data set, the
image count, one mapping of metric -> mean per method, and ``gain_db`` (each model's gain over
the reference: Y-PSNR over bicubic, or a colorizer's RGB PSNR over gray). Methods and metrics are taken as they come: nothing here names them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.core.tasks import REFERENCE

EVALUATION_FILE = "evaluate.json"
GAIN_KEY = "gain_db"
COUNT_KEY = "images"
# Metrics where a lower value is better; every other one is higher-is-better.
LOWER_IS_BETTER = frozenset({"gmsd", "lpips", "stlpips", "dists", "niqe", "fid"})


def read_evaluation(metrics_dir: Path | str) -> dict[str, dict]:
    """{data set: {"images": n, method: {metric: mean}, "gain_db": {model: dB}}}."""
    path = Path(metrics_dir) / EVALUATION_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no evaluation (run the evaluate stage first)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected {{data set: {{method: {{metric: value}}}}}}")
    return data


def reference_of(dataset: Mapping[str, Any]) -> str | None:
    """The baseline a data set's gains are over: bicubic (restore) or gray (colorize)."""
    return next((r for r in REFERENCE.values() if r in dataset), None)


def methods_of(dataset: Mapping[str, Any]) -> list[str]:
    """The methods of one data set's results, in the file's order."""
    return [k for k, v in dataset.items() if k != GAIN_KEY and isinstance(v, Mapping)]


def metrics_of(dataset: Mapping[str, Any]) -> list[str]:
    """Every metric any method of the data set has, in first-seen order."""
    return list(dict.fromkeys(m for method in methods_of(dataset) for m in dataset[method]))


def table_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (data set, method): its metrics, and its gain over the reference (bicubic,
    or a colorizer's gray) for each metric.

    ``gain_db`` is the stage's own Y-PSNR gain where it has one; ``<metric>_gain`` is the
    difference to the reference method of the same data set (sign as the metric's: for a
    lower-is-better metric a negative gain is an improvement).
    """
    rows = []
    for dataset, res in results.items():
        ref_name = reference_of(res)
        reference = res.get(ref_name, {}) if ref_name else {}
        gains = res.get(GAIN_KEY, {})
        for method in methods_of(res):
            row: dict[str, Any] = {
                "dataset": dataset,
                "method": method,
                "images": res.get(COUNT_KEY),
            }
            for metric in metrics_of(res):
                value = res[method].get(metric)
                row[metric] = value
                ref = reference.get(metric)
                row[f"{metric}_gain"] = (
                    None
                    if value is None or ref is None or method == ref_name
                    else round(value - ref, 4)
                )
            row[GAIN_KEY] = gains.get(method)
            rows.append(row)
    return rows

"""Evaluation results in the shapes DVC shows: a methods-by-scores table and per-image gains.

``dvc metrics show`` prints one row per metrics file, so each method of each data set gets a
small JSON of a few short keys (metrics/evaluate/<dataset>/<method>.json): the rows of the
table are the methods, its columns the scores. plots/evaluate_gains.csv holds each model's
Y-PSNR gain over the reference baseline per image, one column per model, for ``dvc plots``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.core.files import atomic_dir, write_csv, write_json
from pipelines.core.tasks import FIDELITY

# the table's columns per task: fidelity, the gain over the reference, then the perceptual
# scores (a colorizer's: RGB fidelity and its colourfulness against the truth's)
TABLE_KEYS = {
    "restore": ("psnr_y", "gain_db", "ssim_y", "ms_ssim", "gmsd", "haarpsi", "stlpips"),
    "colorize": (
        "psnr",
        "gain_db",
        "ssim",
        "colorfulness",
        "truth_colorfulness",
        "stlpips",
        "haarpsi",
    ),
}


def method_rows(
    summary: Mapping[str, Any],
    methods: Sequence[str],
    reference: str,
    task: str = "restore",
    decimals: int = 4,
) -> dict[str, dict[str, float]]:
    """One row per method of one data set's summary (evaluate's means): the task's
    ``TABLE_KEYS``.

    A baseline's gain is its PSNR over ``reference``'s (0 for the reference itself)."""
    key = FIDELITY[task]
    ref = summary[reference][key]
    gains = summary.get("gain_db", {})
    rows = {}
    for m in methods:
        row = {**summary[m], "gain_db": gains.get(m, round(summary[m][key] - ref, decimals))}
        rows[m] = {k: row[k] for k in TABLE_KEYS[task] if k in row}
    return rows


def write_method_tables(
    folder: Path | str,
    results: Mapping[str, Mapping[str, Any]],
    methods: Sequence[str],
    reference: str,
    task: str = "restore",
) -> None:
    """``folder``/<dataset>/<method>.json for every data set of ``results``; the folder is
    replaced as a whole, so a method or data set no longer evaluated leaves no file."""
    with atomic_dir(folder) as tmp:
        for dataset, summary in results.items():
            for method, row in method_rows(summary, methods, reference, task).items():
                write_json(tmp / dataset / f"{method}.json", row)


def write_image_gains(
    path: Path | str,
    rows: Sequence[Mapping[str, Any]],
    models: Sequence[str],
    reference: str,
    key: str = "psnr_y",
) -> None:
    """Per image (numbered in evaluation order): each model's ``key`` minus ``reference``'s."""
    by_image: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        by_image.setdefault((r["dataset"], r["image"]), {})[r["method"]] = r[key]
    out = []
    for index, ((dataset, image), psnr) in enumerate(by_image.items(), start=1):
        out.append(
            {
                "index": index,
                "image": f"{dataset}/{image}",
                **{m: round(psnr[m] - psnr[reference], 4) for m in models},
            }
        )
    write_csv(path, out)

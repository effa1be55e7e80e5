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

# the table's columns: fidelity, the gain over bicubic, then the perceptual scores
TABLE_KEYS = ("psnr_y", "gain_db", "ssim_y", "ms_ssim", "gmsd", "haarpsi", "stlpips")


def method_rows(
    summary: Mapping[str, Any], methods: Sequence[str], reference: str, decimals: int = 4
) -> dict[str, dict[str, float]]:
    """One row per method of one data set's summary (evaluate's means): its ``TABLE_KEYS``.

    A baseline's gain is its Y-PSNR over ``reference``'s (0 for the reference itself)."""
    ref = summary[reference]["psnr_y"]
    gains = summary.get("gain_db", {})
    rows = {}
    for m in methods:
        row = {**summary[m], "gain_db": gains.get(m, round(summary[m]["psnr_y"] - ref, decimals))}
        rows[m] = {k: row[k] for k in TABLE_KEYS if k in row}
    return rows


def write_method_tables(
    folder: Path | str,
    results: Mapping[str, Mapping[str, Any]],
    methods: Sequence[str],
    reference: str,
) -> None:
    """``folder``/<dataset>/<method>.json for every data set of ``results``; the folder is
    replaced as a whole, so a method or data set no longer evaluated leaves no file."""
    with atomic_dir(folder) as tmp:
        for dataset, summary in results.items():
            for method, row in method_rows(summary, methods, reference).items():
                write_json(tmp / dataset / f"{method}.json", row)


def write_image_gains(
    path: Path | str, rows: Sequence[Mapping[str, Any]], models: Sequence[str], reference: str
) -> None:
    """Per image (numbered in evaluation order): each model's Y-PSNR minus ``reference``'s."""
    by_image: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        by_image.setdefault((r["dataset"], r["image"]), {})[r["method"]] = r["psnr_y"]
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

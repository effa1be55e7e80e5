"""Stage: crappify every HR image into a low-res, watermarked, JPEG-compressed LR copy.

data/hr/<split>/<name>.png -> data/lr/<split>/<name>.jpg, the bytes ``crappify()`` encoded,
drawn from ``rng_for(seed, "<split>/<name>.png")`` so the output is byte-identical whatever the
worker count. data/lr/manifest.csv records what was drawn for every image.

Resuming an interrupted run, and why data/lr is a persistent output: see
pipelines/datasets/crappified.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipelines.core.results import write_results
from pipelines.datasets.crappified import (
    check_roots,
    crappify_all,
    example_grid,
    fingerprint,
    finish_manifest,
    list_sources,
    prepare,
)
from pipelines.imaging.degradations import CrappifyConfig
from pipelines.running.stage import stage_main

log = logging.getLogger(__name__)

# numbers of this run (how much an interrupted run left), not results: logs/, not DVC
RUN_KEYS = ("processed", "reused", "seconds", "images_per_s")


def run(cfg: CrappifyConfig, tracker=None) -> dict:
    hr_root, lr_root = Path(cfg.base.paths.hr), Path(cfg.base.paths.lr)
    check_roots(hr_root, lr_root)
    sources = list_sources(hr_root)
    if not sources:
        raise FileNotFoundError(f"{hr_root}: no images (run the download stage first)")
    rows = prepare(lr_root, fingerprint(cfg), sources)
    todo = [s for s in sources if s not in rows]
    log.info("%d HR images: %d already done, %d to crappify", len(sources), len(rows), len(todo))
    start = time.perf_counter()
    failed = crappify_all(todo, cfg, hr_root, lr_root, rows)
    seconds = time.perf_counter() - start
    finish_manifest(lr_root, rows)
    if not rows:
        raise RuntimeError(f"{hr_root}: not one image could be crappified ({len(failed)} failures)")

    quality = np.array([int(r["quality"]) for r in rows.values()])
    processed = len(todo) - len(failed)
    splits: dict[str, int] = {}
    for r in rows.values():
        splits[r["split"] or "."] = splits.get(r["split"] or ".", 0) + 1
    metrics = {
        "count": len(rows),
        "processed": processed,
        "reused": len(rows) - processed,
        "failures": len(failed),
        "seconds": round(seconds, 3),
        "images_per_s": round(processed / seconds, 2) if processed and seconds > 0 else 0.0,
        "quality_min": int(quality.min()),
        "quality_mean": round(float(quality.mean()), 2),
        "quality_max": int(quality.max()),
        "splits": dict(sorted(splits.items())),
    }
    write_results(cfg.base, "crappify", metrics, RUN_KEYS)
    if tracker is not None and getattr(tracker, "enabled", True) and cfg.examples:
        tracker.log_image(
            example_grid(list(rows.values()), hr_root, lr_root, cfg.examples),
            "crappify/examples.png",
        )
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main("crappify", CrappifyConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

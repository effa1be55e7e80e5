"""Data loading: paired LR/HR training batches per second.

Ours: ``TrainPairs`` with a fresh ``crappify()`` per crop (the default params: area x4, JPEG
10-70, quality watermark, flips/rot90 and lighting with albumentations) through
``step_loader``. Peer: ``bench.peers.PilPairs``, the same job with torchvision transforms on
PIL images. Both keep decoded photos in memory, both draw a degradation for every crop
(``clean_prob`` 0 here; the default 0.25 skips the JPEG and text on a quarter of the crops and
is slightly faster), both use the same DataLoader and sampler. Measured at steady state: the
first batches of every loader (worker start-up, prefetch) are not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import Report, fmt, interleave, rates, ratios, repeats, sample_images
from bench.peers import PilPairs
from pipelines.datasets.pairs import TrainPairs, step_loader
from pipelines.imaging.degradations import Degradation, make_degrader

NAME = "data"
TITLE = "Data loading (LR/HR pairs per second, batch 8)"
SCALE, BATCH, SEED = 4, 8, 0
# The recipe's generator on one 2019 GPU (lesson 7 superres-gan): 5 epochs of the ~6,650
# training photos at 128 px in ~4 min, i.e. ~140 images/s (derived from its recorded times).
RECIPE_GPU_RATE = 140.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--crops",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="data: HR crop sizes (default 64 128 256; 64 128 with --quick)",
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="data: DataLoader worker counts (default 0 1 2)",
    )


def _batches(crop: int, quick: bool) -> int:
    # about 2 s of loading per measurement on the reference machine: shorter ones are at the
    # mercy of other processes' scheduling
    n = {64: 200, 128: 100, 256: 40}.get(crop, max(8, 100 * 128 * 128 // (crop * crop)))
    return max(4, n // 2) if quick else n


def _variant(dataset, workers: int, batches: int):
    warm = 2 * workers + 1  # fills the prefetch queue of every worker

    def go() -> float:
        loader = step_loader(dataset, 0, warm + batches, BATCH, workers)
        it = iter(loader)
        for _ in range(warm):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - start
        del it
        return seconds

    return go


def _fill_cache(dataset) -> None:
    if isinstance(dataset, TrainPairs):
        for f in dataset.hr_files:
            dataset.cache.read(f)
    else:
        for k in range(len(dataset.hr_files)):
            dataset._image(k)


def run(args: argparse.Namespace) -> Report:
    crops = args.crops or ([64, 128] if args.quick else [64, 128, 256])
    worker_counts = args.workers or [0, 1, 2]
    n_rounds = repeats(args, 3, 2)
    report = Report(
        NAME,
        TITLE,
        {
            "crops": crops,
            "workers": worker_counts,
            "batch": BATCH,
            "scale": SCALE,
            "rounds": n_rounds,
        },
    )
    spec = Degradation(scale=SCALE)
    rows, feed = [], []
    report.data["images_per_s"] = {}
    for crop in crops:
        files = sample_images(min_side=crop)
        datasets = {
            "ours": TrainPairs(
                files, crop, SCALE, SEED, degrade=make_degrader(spec), lighting=0.1, clean_prob=0.0
            ),
            "torchvision/PIL": PilPairs(files, crop, SCALE, SEED, lighting=0.1),
        }
        for d in datasets.values():  # decode every photo once: forked workers inherit them
            _fill_cache(d)
        batches = _batches(crop, args.quick)
        for workers in worker_counts:
            res = interleave(
                {k: _variant(d, workers, batches) for k, d in datasets.items()},
                n_rounds,
                warmup=0,
                progress=f"crop {crop}, {workers} workers",
            )
            r = {k: rates(v, batches * BATCH) for k, v in res.items()}
            cores = max(1, workers)
            per_core = {k: [x / cores for x in v] for k, v in r.items()}
            report.data["images_per_s"][f"{crop}px/{workers}w"] = r
            rows.append(
                [
                    crop,
                    workers,
                    fmt(r["ours"]),
                    fmt(r["torchvision/PIL"]),
                    fmt(ratios(r["ours"], r["torchvision/PIL"]), 2) + "x",
                    fmt(per_core["ours"]),
                    fmt(per_core["torchvision/PIL"]),
                ]
            )
            if workers == 1 or (workers == max(worker_counts) and 1 not in worker_counts):
                # one worker process = one core, the main process only waiting
                med = statistics.median(per_core["ours"])
                peer = statistics.median(per_core["torchvision/PIL"])
                feed.append(
                    [
                        crop,
                        workers,
                        f"{med:.0f}",
                        f"{RECIPE_GPU_RATE / med:.2f}",
                        f"{1000 / med:.1f}",
                        f"{peer:.0f}",
                        f"{1000 / peer:.1f}",
                    ]
                )
    report.table(
        f"pairs/s, batch {BATCH}, x{SCALE}, median [min-max] of {n_rounds} rounds; "
        "per core = / max(1, workers)",
        [
            "HR crop",
            "workers",
            "ours",
            "torchvision/PIL",
            "ours / peer",
            "ours per core",
            "peer per core",
        ],
        rows,
    )
    report.table(
        "feeding a GPU: loader cores needed at the median per-core rate",
        [
            "HR crop",
            "from workers",
            "ours img/s/core",
            f"cores for {RECIPE_GPU_RATE:.0f} img/s",
            "cores for 1000 img/s",
            "peer img/s/core",
            "peer cores for 1000 img/s",
        ],
        feed,
        note=f"{RECIPE_GPU_RATE:.0f} img/s: the recipe's generator on one 2019 GPU at "
        "128 px (derived from its recorded ~4 min for 5 epochs of ~6,650 photos); "
        "our generator works at LR size and needs far fewer FLOPs per image, so a "
        "current GPU can consume 1000 img/s or more.",
    )
    report.data["feed"] = feed
    return report

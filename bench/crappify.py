"""Crappify throughput: our OpenCV ``crappify()`` against the recipe's PIL crappify.py.

Per image, each variant reads the HR PNG from disk, decodes it, degrades it, encodes the JPEG
and writes it, in 1 and 2 worker processes (one OpenCV thread each, as the crappify stage
runs them). Variants:

- ours (x4): ``crappify()`` with the default params (LR = HR / 4, area shrink);
- ours (short side 96): the recipe's LR size, for an equal amount of output;
- recipe (PIL): ``bench.peers.recipe_crappify``, the original crappify.py;
- floor: OpenCV decode of the HR PNG + one JPEG encode of an LR-sized image (strided
  subsample, no filtering) + write: the I/O no implementation avoids.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import random
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bench.common import Report, clock, fmt, interleave, rates, ratios, repeats, sample_images
from bench.peers import recipe_crappify, recipe_degrade
from pipelines.imaging.degradations import Degradation, crappify, rng_for
from pipelines.imaging.images import read_rgb

NAME = "crappify"
TITLE = "Crappify throughput (images/s, decode + degrade + encode + write)"
VARIANTS = ("ours (x4)", "ours (short side 96)", "recipe (PIL)", "floor (OpenCV decode+encode)")
SPECS = {
    "ours (x4)": Degradation(),
    "ours (short side 96)": Degradation(size_mode="short_side", short_side=96),
}

_out: dict = {}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--passes",
        type=int,
        default=None,
        help="crappify: passes over the photos per round (default 3, 1 with --quick)",
    )


def _init(out_dir: str) -> None:
    cv2.setNumThreads(1)
    _out["dir"] = Path(out_dir)


def _one(task: tuple[str, int, str]) -> int:
    variant, i, src = task
    path = Path(src)
    dest = _out["dir"] / f"{i}_{path.stem}.jpg"
    key = f"{i}/{path.name}"
    if variant in SPECS:
        hr = read_rgb(path)
        _, data, _ = crappify(hr, SPECS[variant], rng_for(0, key))
        dest.write_bytes(data)
    elif variant == "recipe (PIL)":
        recipe_crappify(path, dest, random.Random(key))
    else:
        bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(bgr[::4, ::4]), [cv2.IMWRITE_JPEG_QUALITY, 40]
        )
        dest.write_bytes(buf.tobytes())
    return 1


def run(args: argparse.Namespace) -> Report:
    files = sample_images()
    passes = args.passes or (1 if args.quick else 3)
    n_rounds = repeats(args, 5, 2)
    tasks_of = {v: [(v, i, str(f)) for i in range(passes) for f in files] for v in VARIANTS}
    n_images = passes * len(files)
    report = Report(
        NAME,
        TITLE,
        {
            "images": len(files),
            "passes": passes,
            "rounds": n_rounds,
            "files": [f.name for f in files],
        },
    )
    out = Path(tempfile.mkdtemp(prefix="decrappify-bench-crappify-"))
    seconds: dict[tuple[str, int], list[float]] = {}
    try:
        for workers in (1, 2):
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers, initializer=_init, initargs=(str(out),)) as pool:

                def variant(v: str):
                    def go() -> None:
                        for _ in pool.imap_unordered(_one, tasks_of[v], chunksize=1):
                            pass

                    return clock(go)

                res = interleave(
                    {v: variant(v) for v in VARIANTS}, n_rounds, progress=f"{workers} worker(s)"
                )
            for v, secs in res.items():
                seconds[(v, workers)] = secs
    finally:
        shutil.rmtree(out, ignore_errors=True)

    rate = {k: rates(v, n_images) for k, v in seconds.items()}
    report.data["images_per_s"] = {f"{v} / {w} workers": rate[(v, w)] for v, w in rate}
    rows = []
    for v in VARIANTS:
        rows.append(
            [
                v,
                fmt(rate[(v, 1)]),
                fmt(rate[(v, 2)]),
                fmt(ratios(rate[(v, 2)], rate[(v, 1)]), 2) + "x",
            ]
        )
    report.table(
        f"images/s, median [min-max] of {n_rounds} rounds of {n_images} images "
        f"({len(files)} photos x {passes})",
        ["variant", "1 worker", "2 workers", "2 vs 1 worker"],
        rows,
    )
    comp = []
    for label, a, b in (
        ("ours (x4) / recipe (PIL)", "ours (x4)", "recipe (PIL)"),
        ("ours (short side 96) / recipe (PIL)", "ours (short side 96)", "recipe (PIL)"),
        ("ours (x4) / floor", "ours (x4)", "floor (OpenCV decode+encode)"),
        ("recipe (PIL) / floor", "recipe (PIL)", "floor (OpenCV decode+encode)"),
    ):
        comp.append([label] + [fmt(ratios(rate[(a, w)], rate[(b, w)]), 2) + "x" for w in (1, 2)])
    report.data["ratios"] = {row[0]: row[1:] for row in comp}
    report.table("throughput ratios, round by round", ["ratio", "1 worker", "2 workers"], comp)
    degrade_only(report, files, n_rounds)
    return report


def degrade_only(report: Report, files: list[Path], n_rounds: int) -> None:
    """The degradation alone, on photos already decoded, to JPEG bytes in memory, in this
    process with one OpenCV thread: what is left once the PNG decode is taken out."""
    from PIL import Image

    cv2.setNumThreads(1)
    arrays = [read_rgb(f) for f in files]
    pils = [Image.fromarray(a) for a in arrays]

    def ours(spec: Degradation):
        def go() -> None:
            for i, hr in enumerate(arrays):
                crappify(hr, spec, rng_for(0, str(i)))

        return clock(go)

    def recipe() -> None:
        rng = random.Random(0)
        for img in pils:
            recipe_degrade(img, rng, io.BytesIO())

    res = interleave(
        {
            "ours (x4)": ours(SPECS["ours (x4)"]),
            "ours (short side 96)": ours(SPECS["ours (short side 96)"]),
            "recipe (PIL)": clock(recipe),
        },
        max(n_rounds, 3),
        progress="degradation only",
    )
    rate = {k: rates(v, len(arrays)) for k, v in res.items()}
    report.data["degrade_only_images_per_s"] = rate
    report.table(
        "degradation alone (decoded photo in memory -> JPEG bytes), 1 process, images/s",
        ["variant", "images/s", "vs recipe (PIL)"],
        [[k, fmt(v), fmt(ratios(v, rate["recipe (PIL)"]), 2) + "x"] for k, v in rate.items()],
        note="ours also decodes its JPEG back (the LR array the training loader "
        "uses); the recipe only encodes.",
    )

"""The evaluate stage's data sets: each image as (name, LR, HR, watermark mask), under two
degradations.

- ``crappy``: our own seeded degradation, ``crappify`` with the crappify section's params. For a
  crappify split these are the stage's own LR files; for a folder of HR images (e.g. Set5) the
  same function draws from ``rng_for(base.seed, <file path in the folder>)``, so a folder's
  crappy LR is the same in every run and on every machine. A folder has no LR of its own, and
  one draw of JPEG quality and watermark per photo makes a mean over 5 photos (Set5) swing with
  the seed (a standard deviation of about 0.4 dB): ``draws`` degradations of each photo are
  scored, the first keyed by the file path and the k-th after it ``<file path>#k``. The
  watermark's mask comes from the same draw: for a split it is recomputed and used only if the
  recomputed JPEG is byte for byte the stage's file (else the files were made with other
  params, and no mask is claimed).
- ``clean``: the SR benchmark protocol, MATLAB-style bicubic downscaling of the HR cropped to a
  multiple of the scale; inputs unlike the ones the generators learn from, so they show whether
  a restorer damages a photo that was only downscaled.

Data set names: a crappify split under its own LR files keeps its bare name (``test``), as
before both degradations existed; every other pairing is ``<source>/<degradation>``
(``test/clean``, ``Set5/crappy``, ``Set5/clean``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.config import BaseConfig
from pipelines.core.files import sha256_bytes, sha256_file
from pipelines.datasets.pairs import Kind, aligned_lr, lr_path_for
from pipelines.imaging.degradations import Degradation, crappify_with_mask, rng_for
from pipelines.imaging.images import list_images, read_rgb
from pipelines.imaging.resize import benchmark_lr
from pipelines.scoring.regions import watermark_mask_hr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalImage:
    name: str  # path inside the split or folder
    lr: np.ndarray
    hr: np.ndarray  # cropped to the region the LR covers
    watermark: np.ndarray | None  # bool HxW over ``hr``: where the text was drawn; None: none


def dataset_name(source: str, kind: Kind, split: bool) -> str:
    return source if split and kind == "crappy" else f"{source}/{kind}"


def crappy_pair(
    hr: np.ndarray, spec: Degradation, seed: int, key: str, scale: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bytes]:
    """(LR, HR region, watermark mask or None, JPEG bytes) of our degradation of ``hr``."""
    lr, data, _, mask = crappify_with_mask(hr, spec, rng_for(seed, key))
    lr, hr = aligned_lr(lr, hr, scale)
    return lr, hr, (watermark_mask_hr(mask, hr.shape, scale) if mask.any() else None), data


def split_images(
    base: BaseConfig, spec: Degradation, split: str, kind: Kind, limit: int
) -> Iterator[EvalImage]:
    """The images of a crappify split, HR cropped to the region its LR covers.

    Missing files are reported now, before any image is restored; pixels are read lazily.
    """
    hr_root, lr_root = Path(base.paths.hr), Path(base.paths.lr)
    hr_files = list_images(hr_root / split)[: limit or None]
    if not hr_files:
        raise FileNotFoundError(f"{hr_root / split}: no images (run the earlier stages first)")
    lr_files = [lr_path_for(f, hr_root, lr_root) for f in hr_files]
    if kind == "crappy":
        for hr_file, lr_file in zip(hr_files, lr_files):
            if not lr_file.is_file():
                raise FileNotFoundError(
                    f"{lr_file}: LR image of {hr_file} missing (rerun crappify)"
                )

    def images() -> Iterator[EvalImage]:
        resized = unmatched = 0
        for hr_file, lr_file in zip(hr_files, lr_files):
            name = hr_file.relative_to(hr_root / split).as_posix()
            hr = read_rgb(hr_file)
            if kind == "clean":
                lr, hr = benchmark_lr(hr, base.scale)
                yield EvalImage(name, lr, hr, None)
                continue
            # the stage's draw for this file, for its watermark mask
            _, _, mask, data = crappy_pair(
                hr, spec, base.seed, hr_file.relative_to(hr_root).as_posix(), base.scale
            )
            if sha256_bytes(data) != sha256_file(lr_file):
                unmatched += 1
                mask = None
            lr = read_rgb(lr_file)
            if lr.shape[:2] != (hr.shape[0] // base.scale, hr.shape[1] // base.scale):
                resized += 1
            lr, hr = aligned_lr(lr, hr, base.scale)
            yield EvalImage(name, lr, hr, mask)
        if resized:
            log.info(
                "%s: %d LR image(s) not at 1/%d of their HR (short-side crappify) were "
                "resized to HR/%d with area interpolation",
                split,
                resized,
                base.scale,
                base.scale,
            )
        if unmatched:
            log.warning(
                "%s: %d LR file(s) differ from what the current crappify params make; "
                "their watermark masks are unknown, so mask_psnr_y leaves them out",
                split,
                unmatched,
            )

    return images()


def draw_key(name: str, draw: int) -> str:
    """The name, and seed key, of a folder photo's ``draw``-th crappy LR (counted from 0): the
    first is the photo's own name, so one draw per photo is what it always was."""
    return name if draw == 0 else f"{name}#{draw}"


def folder_images(
    folder: Path, base: BaseConfig, spec: Degradation, kind: Kind, limit: int, draws: int = 1
) -> Iterator[EvalImage]:
    """The images of a folder of HR images, with LR made here by ``kind``; crappy: ``draws``
    seeded degradations of each photo, each an image of its own (``draw_key``)."""
    files = list_images(folder)[: limit or None]
    if not files:
        raise FileNotFoundError(f"{folder}: no images")

    def images() -> Iterator[EvalImage]:
        # every photo's first draw, then every photo's second...: the first images are the
        # one-draw set, and the report's first few samples are different photos
        for draw in range(1 if kind == "clean" else draws):
            for f in files:
                name = f.relative_to(folder).as_posix()
                hr = read_rgb(f)
                if kind == "clean":
                    yield EvalImage(name, *benchmark_lr(hr, base.scale), None)
                    continue
                key = draw_key(name, draw)
                lr, region, mask, _ = crappy_pair(hr, spec, base.seed, key, base.scale)
                yield EvalImage(key, lr, region, mask)

    return images()

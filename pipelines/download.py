"""Stage ``download``: gather high-resolution photographs, check them, split them into data/hr.

Sources (``download.source`` in params.yaml):
- ``sample``: photographs bundled with scikit-image, read from the installed package (offline);
- ``oxford-pets``: the Oxford-IIIT Pet images (7,390 photos, 755 MiB download);
- ``url``: any tar or zip archive of images, pinned by its sha256;
- ``folder``: a local folder of images (DVC does not track it: ``dvc repro -f`` after editing).

Every candidate is checked (``images.check_image``): bad files and pixel-identical duplicates
are skipped and listed with their reason, the rest are normalised to 8-bit RGB PNG.

The split rule: usable images are ranked by a hash of ``base.seed`` and their path inside the
source; the first ``test_fraction`` of the ranking is the test set, the next
``valid_fraction`` the validation set, the rest trains (sizes: ``split_sizes``). It does not
depend on the order the disk lists files in; the same seed and files give the same split.

Outputs: ``data/hr/{train,valid,test}/<path>.png``, ``data/hr/manifest.csv`` (written as one
atomic folder: an interrupted run leaves the previous data/hr intact) and
``metrics/download.json``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipelines.core.config import BaseConfig, ConfigError, bounded
from pipelines.core.files import atomic_dir, write_json
from pipelines.datasets.fetch import SHA256_RE
from pipelines.datasets.photos import (
    NoImagesError,
    accept,
    by_reason,
    gather,
    log_to_tracker,
    place,
    shown_names,
    split_key,
)
from pipelines.imaging import images
from pipelines.running.stage import stage_main

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadConfig:
    base: BaseConfig
    source: Literal["sample", "url", "folder", "oxford-pets"] = "sample"
    url: str = ""
    sha256: str = ""
    # relative to the working directory (the repository root under DVC)
    folder: str = ""
    valid_fraction: float = bounded(0.1, lo=0.0, hi=0.5)
    test_fraction: float = bounded(0.15, lo=0.0, hi=0.5)
    # keep at most this many usable images, chosen by the seeded hash order; 0 = all
    max_images: int = bounded(0, lo=0)
    # shortest side accepted, px; 0 = base.crop
    min_size: int = bounded(0, lo=0)
    max_pixels: int = bounded(images.MAX_PIXELS, lo=1, hi=images.DECODE_LIMIT)

    def check(self) -> None:
        if self.source == "url":
            if not self.url:
                raise ConfigError("url: required when source is 'url'")
            if not self.url.startswith(("http://", "https://")):
                raise ConfigError(f"url: {self.url!r} is not an http:// or https:// URL")
            if not SHA256_RE.match(self.sha256):
                raise ConfigError(
                    f"sha256: {self.sha256!r} is not 64 hex digits (required when source is 'url')"
                )
        if self.source == "folder" and not self.folder:
            raise ConfigError("folder: required when source is 'folder'")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"test_fraction: {self.test_fraction} + valid_fraction "
                f"{self.valid_fraction} leaves no training images"
            )
        if self.min_size and self.min_size < self.base.crop:
            raise ConfigError(
                f"min_size: {self.min_size} is below base.crop {self.base.crop}: "
                "training could not crop such images"
            )

    @property
    def min_side(self) -> int:
        return self.min_size or self.base.crop


def run(cfg: DownloadConfig, tracker: Any = None) -> dict:
    progress = sys.stderr.isatty()
    hr = Path(cfg.base.paths.hr)
    for stale in hr.parent.glob(f".{hr.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    root, candidates, skipped = gather(cfg, progress)
    n_missing = len(skipped)
    rels = shown_names(root, candidates, skipped)
    ordered = sorted(rels, key=lambda p: split_key(cfg.base.seed, rels[p]))
    log.info("download: %d candidate images in %s (source %s)", len(ordered), root, cfg.source)

    with atomic_dir(hr) as tmp:
        accepted = accept(ordered, rels, cfg, progress, tmp / ".staging", skipped)
        if not accepted:
            raise NoImagesError(
                f"no usable images in {root} ({len(candidates)} candidates; "
                f"skipped: {by_reason(skipped) or 'none'}); {hr} left unchanged"
            )
        rows, sizes = place(accepted, tmp, cfg.valid_fraction, cfg.test_fraction, cfg.source)

    n_train, n_valid, n_test = sizes
    metrics = {
        "candidates": len(candidates) + n_missing,
        "images": len(rows),
        "train": n_train,
        "valid": n_valid,
        "test": n_test,
        "converted": sum(1 for r in rows if r["note"] != "ok"),
        "skipped": len(skipped),
        "skipped_by_reason": by_reason(skipped),
        "skipped_files": dict(sorted(skipped.items())),
    }
    if cfg.base.task == "colorize":
        metrics["gray_training_only"] = sum(a.gray for a in accepted)
    write_json(Path(cfg.base.paths.metrics) / "download.json", metrics)
    log.info(
        "download: %d images (train %d, valid %d, test %d), %d skipped -> %s",
        len(rows),
        n_train,
        n_valid,
        n_test,
        len(skipped),
        hr,
    )
    if tracker is not None:
        log_to_tracker(tracker, hr, rows)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main("download", DownloadConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

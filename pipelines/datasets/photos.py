"""Gathering photographs for data/hr: sources, checks, the seeded split, the manifest.

See the ``download`` stage for the rules; this module holds how they are carried out.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import chain, count
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from pipelines.core.errors import StageError
from pipelines.core.files import csv_text, sha256_bytes, write_text
from pipelines.core.runtime import hash_seed
from pipelines.datasets.fetch import fetch_archive
from pipelines.imaging import images

if TYPE_CHECKING:
    from pipelines.download import DownloadConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("file", "split", "width", "height", "bytes", "sha256", "source", "note")

# Real photographs shipped in scikit-image's wheel. Left out: synthetic images (chessboard,
# color, horse, logo, phantom), clock_motion (deliberately motion-blurred: a poor sharp
# target) and motorcycle_right (a near copy of motorcycle_left that would leak across splits).
SAMPLE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)

# sha256 as pinned by tensorflow/datasets (checksums.tsv, 791,918,971 bytes) and by
# torchvision's prototype OxfordIIITPet; torchvision's stable dataset pins md5
# 5c4f3ee8e5d25df40f4fd59a7f44e54c for the same file.
PRESETS = {
    "oxford-pets": (
        "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
        "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d",
    ),
}


class NoImagesError(StageError):
    """The source holds no image that passes the checks."""


def split_sizes(n: int, valid_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, valid, test) counts for ``n`` images.

    Fractions round half up; from 3 images on, a non-zero fraction gets at least one image;
    training always keeps at least one.
    """
    valid = int(n * valid_fraction + 0.5)
    test = int(n * test_fraction + 0.5)
    if n >= 3:
        valid = max(valid, int(valid_fraction > 0))
        test = max(test, int(test_fraction > 0))
    while n and valid + test >= n:
        if test >= valid:
            test -= 1
        else:
            valid -= 1
    return n - valid - test, valid, test


def split_key(seed: int, rel: str) -> tuple[int, str]:
    """Sort key deciding an image's split: a seeded hash of its path inside the source."""
    return hash_seed(seed, rel), rel


def output_names(rels: list[str]) -> dict[str, str]:
    """Map source paths to distinct ``.png`` paths, compared case-insensitively.

    ``a/b.jpg`` becomes ``a/b.png``; when that is taken (``b.png`` beside ``b.jpg``), the old
    suffix stays in the name (``a/b.jpg.png``), then a counter (``a/b.jpg-2.png``). Deeper
    paths choose first, so a folder is claimed before a file could take its name; at one
    depth, files that already are PNGs choose first and keep their names.
    """
    taken: set[str] = set()
    names = {}
    order = sorted(rels, key=lambda r: (-r.count("/"), not r.lower().endswith(".png"), r))
    for rel in order:
        path = PurePosixPath(rel)
        plain = str(path.with_suffix(".png")) if path.suffix else rel + ".png"
        for candidate in chain((plain, rel + ".png"), (f"{rel}-{i}.png" for i in count(2))):
            if candidate.lower() not in taken:
                break
        names[rel] = candidate
        taken.add(candidate.lower())
        # folders on the way are taken too: no file may later be named like one of them
        taken |= {str(p).lower() for p in PurePosixPath(candidate).parents if str(p) != "."}
    return names


def utf8_name(rel: str) -> str:
    """``rel`` as UTF-8 text. A name whose bytes are not UTF-8 (a Latin-1 name from an old zip
    or camera) reaches Python with each such byte as a lone surrogate; it becomes ``%XX`` so
    the manifest, the metrics and the output file can hold the name."""
    return _UNDECODED.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", rel)


_UNDECODED = re.compile("[\udc80-\udcff]")


def sample_folder() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise StageError("scikit-image is not installed: the 'sample' source needs it")
    return Path(spec.submodule_search_locations[0]) / "data"


def gather(cfg: DownloadConfig, progress: bool) -> tuple[Path, list[Path], dict[str, str]]:
    """The source folder, its candidate image files, and candidates already known to be missing."""
    if cfg.source == "sample":
        root = sample_folder()
        present = [root / name for name in SAMPLE_PHOTOS if (root / name).exists()]
        missing = {
            name: "missing from this scikit-image version"
            for name in SAMPLE_PHOTOS
            if not (root / name).exists()
        }
        return root, present, missing
    if cfg.source == "folder":
        root = Path(cfg.folder)
        if not root.is_dir():
            raise StageError(f"download.folder: {root} is not a folder")
        return root, images.list_images(root), {}
    url, sha256 = PRESETS.get(cfg.source, (cfg.url, cfg.sha256))
    root = fetch_archive(url, sha256, cfg.base.paths.downloads, progress=progress)
    # Archives usually wrap everything in one top folder (images/): do not repeat it in data/hr.
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        root = entries[0]
    return root, images.list_images(root), {}


@dataclass(frozen=True)
class _Accepted:
    rel: str
    staged: Path
    width: int
    height: int
    note: str
    size: int
    sha256: str
    gray: bool = False


@dataclass(frozen=True)
class _Checked:
    rel: str
    note: str
    png: bytes | None = None
    width: int = 0
    height: int = 0
    pixels_sha256: str = ""
    gray: bool = False  # a gray photo given to a colorizer: training split only


def _check(path: Path, rel: str, cfg: DownloadConfig) -> _Checked:
    """Check one candidate and encode it as PNG; runs in a worker thread."""
    rgb, note = images.check_image(path, cfg.min_side, cfg.max_pixels)
    if rgb is None:
        return _Checked(rel, note)
    digest = images.pixels_sha256(rgb)
    # a colorizer is never measured on a photo that has no colour; it still learns from it
    # that gray things stay gray
    gray = cfg.base.task == "colorize" and images.is_gray(rgb)
    return _Checked(rel, note, images.encode_png(rgb), rgb.shape[1], rgb.shape[0], digest, gray)


def _checked_in_order(
    paths: list[Path], rels: dict[Path, str], cfg: DownloadConfig, progress: bool
) -> Iterator[_Checked]:
    """Check candidates on every core (OpenCV and Pillow release the GIL), in ``paths`` order.

    Small batches bound the memory held and the work wasted when the caller stops early.
    """
    workers = os.cpu_count() or 1
    batch = 4 * workers
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(paths), desc="checking", unit="img", disable=not progress) as bar,
    ):
        for start in range(0, len(paths), batch):
            for item in pool.map(lambda p: _check(p, rels[p], cfg), paths[start : start + batch]):
                bar.update()
                yield item


def by_reason(skipped: dict[str, str]) -> dict[str, int]:
    """Skipped files counted by the kind of reason (the part before the colon)."""
    return dict(sorted(Counter(r.split(":")[0] for r in skipped.values()).items()))


def log_to_tracker(tracker: Any, hr: Path, rows: list[dict], limit: int = 24) -> None:
    files = [r["file"] for r in rows if r["split"] == "train"][:limit]
    train = [images.read_rgb(hr / f) for f in files]
    if train:
        tracker.log_image(images.contact_sheet(train, tile=96), "download/hr_train.png")
    tracker.log_artifact(hr / MANIFEST, "download")


def shown_names(root: Path, candidates: list[Path], skipped: dict[str, str]) -> dict[Path, str]:
    """Each candidate's name in data/hr (bytes that are not UTF-8 as %XX); a name whose escaped
    form is another candidate's real name is skipped, not lost silently."""
    rels = {}
    real_names = {path.relative_to(root).as_posix() for path in candidates}
    for path in candidates:
        rel = path.relative_to(root).as_posix()
        shown = utf8_name(rel)
        if shown != rel and shown in real_names:
            skipped[f"{shown} (not UTF-8)"] = f"bad file name: not UTF-8, and {shown} exists"
            continue
        rels[path] = shown
    return rels


def accept(
    ordered: list[Path],
    rels: dict[Path, str],
    cfg: DownloadConfig,
    progress: bool,
    staging: Path,
    skipped: dict[str, str],
) -> list[_Accepted]:
    """The usable images in split-hash order, normalised to PNG in ``staging``, at most
    ``cfg.max_images``; bad files and pixel-identical duplicates go to ``skipped``."""
    staging.mkdir()
    accepted: list[_Accepted] = []
    seen: dict[str, str] = {}
    with closing(_checked_in_order(ordered, rels, cfg, progress)) as checked:
        for item in checked:
            if item.png is None:
                skipped[item.rel] = item.note
                log.info("skipped %s: %s", item.rel, item.note)
                continue
            if item.pixels_sha256 in seen:
                skipped[item.rel] = f"duplicate: same pixels as {seen[item.pixels_sha256]}"
                continue
            seen[item.pixels_sha256] = item.rel
            staged = staging / f"{len(accepted)}.png"
            staged.write_bytes(item.png)
            accepted.append(
                _Accepted(
                    item.rel,
                    staged,
                    item.width,
                    item.height,
                    item.note,
                    len(item.png),
                    sha256_bytes(item.png),
                    item.gray,
                )
            )
            if len(accepted) == cfg.max_images:
                break
    return accepted


def place(
    accepted: list[_Accepted], out: Path, valid_fraction: float, test_fraction: float, source: str
) -> tuple[list[dict], tuple[int, int, int]]:
    """Move the staged images into ``out``/<split>/ and write the manifest; returns its rows
    and the (train, valid, test) sizes. Gray photos given to a colorizer all train; the held-out
    fractions are of the others."""
    measurable = [a for a in accepted if not a.gray]
    _, n_valid, n_test = split_sizes(len(measurable), valid_fraction, test_fraction)
    sizes = (len(accepted) - n_valid - n_test, n_valid, n_test)
    # ``accepted`` is in hash order: the first measurable images go to test, then valid; the
    # rest train.
    held = iter(["test"] * n_test + ["valid"] * n_valid)
    splits = ["train" if a.gray else next(held, "train") for a in accepted]
    names = output_names([a.rel for a in accepted])
    rows = []
    for item, split in zip(accepted, splits):
        file = f"{split}/{names[item.rel]}"
        target = out / file
        target.parent.mkdir(parents=True, exist_ok=True)
        item.staged.rename(target)
        rows.append(
            {
                "file": file,
                "split": split,
                "width": item.width,
                "height": item.height,
                "bytes": item.size,
                "sha256": item.sha256,
                "source": f"{source}:{item.rel}",
                "note": item.note,
            }
        )
    (out / ".staging").rmdir()
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)
    rows.sort(key=lambda r: r["file"])
    write_text(out / MANIFEST, csv_text(rows, MANIFEST_COLUMNS))
    return rows, sizes

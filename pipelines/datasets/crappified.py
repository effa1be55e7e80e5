"""Crappified copies of data/hr in data/lr: the per-image work in worker processes, and resuming.

Resuming. A large HR set takes long enough that an interrupted run should not start over,
and DVC deletes a stage's outputs before rerunning it unless they are ``persist: true``; so
data/lr is persistent and this module, not DVC, decides what in it is still valid:
- ``.crappify.json`` holds a fingerprint of everything that decides an output's bytes for a
  given HR file (pipelines/core/fingerprint.py, shared with the training stages' checkpoints):
  the params but those that only say how it runs, the source of every module the stage runs
  and the OpenCV and NumPy versions. A different
  fingerprint (or none: a clear that was itself interrupted) clears data/lr first, so a
  param or code change never leaves old images beside new ones.
- With the same fingerprint, an image is kept if its record (from the last complete
  manifest, or the journal an interrupted run appended to) names the same HR sha256 and its
  JPEG still has the recorded sha256. Everything else is redone; JPEGs whose HR source is gone
  and leftover ``.tmp`` files of interrupted writes are removed.
- Every JPEG is written to a temporary file and renamed into place, so none is ever partial.
  There is no fsync per file (it halved the throughput): a file that a power cut left empty
  or torn fails the sha256 check above and is redone.
The journal is deleted once the manifest is complete, so a finished data/lr holds only
deterministic files (JPEGs, manifest.csv, .crappify.json) and its DVC hash is reproducible.

A simpler scheme (no persistence, rebuild everything each run) would be correct too, but any
HR change, or an interruption near the end of a long run, would cost a full rebuild.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import multiprocessing
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipelines.core.code_deps import code_digest, stage_module
from pipelines.core.config import as_dict
from pipelines.core.files import (
    atomic_path,
    remove_stale_temporaries,
    sha256_bytes,
    sha256_file,
    write_csv,
    write_json,
)
from pipelines.core.fingerprint import fingerprint as shared_fingerprint
from pipelines.core.runtime import cpu_cores
from pipelines.imaging.degradations import CrappifyConfig, Degradation, crappify, rng_for
from pipelines.imaging.images import contact_sheet, list_images, read_rgb

log = logging.getLogger(__name__)

STATE = ".crappify.json"
JOURNAL = ".crappify-journal.jsonl"
MANIFEST = "manifest.csv"
COLUMNS = (
    "file",
    "source",
    "split",
    "hr_sha256",
    "lr_sha256",
    "hr_width",
    "hr_height",
    "lr_width",
    "lr_height",
    "quality",
    "text",
    "x",
    "y",
    "box_w",
    "box_h",
    "font_scale",
    "thickness",
    "color",
    "opacity",
    "blur_sigma",
    "noise_sigma",
    "grayscale",
)


def spec_of(cfg: CrappifyConfig) -> dict:
    """The params that decide the output bytes (not workers, paths or logging)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Degradation)}


def fingerprint(cfg: CrappifyConfig) -> dict:
    """What decides the output bytes for a given HR file, and its hash (the shared resume
    fingerprint: params but how-it-runs, the stage's code, the OpenCV and NumPy versions)."""
    versions = {"opencv": cv2.__version__, "numpy": np.__version__}
    inputs = {
        "seed": cfg.base.seed,
        "spec": as_dict(Degradation(**spec_of(cfg))),
        "code_sha256": code_digest(stage_module("crappify")),
        **versions,
    }
    return {
        "fingerprint": shared_fingerprint(as_dict(cfg), stage="crappify", extra=versions),
        **inputs,
    }


def lr_name(source: str) -> str:
    return Path(source).with_suffix(".jpg").as_posix()


# -- the per-image work, run in worker processes -------------------------------------------------
_job: dict = {}


def _init_worker(
    spec: Degradation, seed: int, hr_root: str, lr_root: str, pooled: bool = True
) -> None:
    if pooled:  # one OpenCV thread per process: the pool already uses every core
        cv2.setNumThreads(1)
    _job.update(spec=spec, seed=seed, hr=Path(hr_root), lr=Path(lr_root))


def _crappify_one(source: str) -> dict:
    """Crappify one HR file and write its JPEG; returns its manifest row, or an error."""
    path = _job["hr"] / source
    try:
        hr_sha = sha256_file(path)
        hr = read_rgb(path)
        lr, data, rec = crappify(hr, _job["spec"], rng_for(_job["seed"], source))
    except (OSError, ValueError) as exc:
        # an unreadable or too small HR file must not stop the others; a failing write
        # (disk full) is not caught and stops the stage
        return {"source": source, "error": f"{type(exc).__name__}: {exc}"}
    name = lr_name(source)
    with atomic_path(_job["lr"] / name) as tmp:
        tmp.write_bytes(data)
    parts = Path(source).parts
    row = {
        "file": name,
        "source": source,
        "split": parts[0] if len(parts) > 1 else "",
        "hr_sha256": hr_sha,
        "lr_sha256": sha256_bytes(data),
        "hr_width": hr.shape[1],
        "hr_height": hr.shape[0],
        **rec,
        "color": "#{:02x}{:02x}{:02x}".format(*rec["color"]),
    }
    return {k: str(row[k]) for k in COLUMNS}


@contextlib.contextmanager
def _results(
    sources: list[str], cfg: CrappifyConfig, hr_root: Path, lr_root: Path
) -> Iterator[Iterator[dict]]:
    """The rows for ``sources`` in completion order, from ``cfg.workers`` processes.

    The workers are spawned, not forked: a child forked from a process whose OpenCV (or torch)
    thread pool has run inherits that pool's locks in whatever state they were, and hangs in its
    first ``cv2.setNumThreads``. A fresh interpreter per worker costs about a second.
    """
    workers = cfg.workers or cpu_cores()
    workers = max(1, min(workers, len(sources)))
    initargs = (Degradation(**spec_of(cfg)), cfg.base.seed, str(hr_root), str(lr_root))
    if workers == 1:
        _init_worker(*initargs, pooled=False)
        yield map(_crappify_one, sources)
        return
    chunk = max(1, min(16, len(sources) // (workers * 8)))
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        yield pool.imap_unordered(_crappify_one, sources, chunksize=chunk)


# -- what is already done ------------------------------------------------------------------------
def _read_rows(lr_root: Path) -> dict[str, dict]:
    """Rows of the last complete manifest, then of an interrupted run's journal (later wins)."""
    rows: dict[str, dict] = {}
    manifest = lr_root / MANIFEST
    if manifest.is_file():
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                rows[row["source"]] = row
    journal = lr_root / JOURNAL
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed run may be torn; that image is redone
            if isinstance(row, dict) and set(COLUMNS) <= set(row):
                rows[row["source"]] = row
    return rows


def _our_files(lr_root: Path) -> Iterable[Path]:
    """Files this stage may delete: its JPEGs and bookkeeping, never anything else."""
    for p in lr_root.rglob("*"):
        if p.is_file() and (p.suffix == ".jpg" or p.name in (MANIFEST, STATE, JOURNAL)):
            yield p


def _remove_empty_dirs(root: Path) -> None:
    for d in sorted(
        (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        if not any(d.iterdir()):
            d.rmdir()


def prepare(lr_root: Path, state: dict, sources: dict[str, Path]) -> dict[str, dict]:
    """Make ``lr_root`` hold only valid outputs for ``state``; return the rows to keep."""
    lr_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(lr_root)
    state_file = lr_root / STATE
    try:
        same = json.loads(state_file.read_text()).get("fingerprint") == state["fingerprint"]
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        # the state goes first: a clear interrupted halfway must not look valid afterwards
        state_file.unlink(missing_ok=True)
        old = list(_our_files(lr_root))
        for p in old:
            p.unlink()
        if old:
            log.info("params or code changed: removed %d old outputs from %s", len(old), lr_root)
        write_json(state_file, {k: state[k] for k in sorted(state)})
    keep: dict[str, dict] = {}
    for source, row in _read_rows(lr_root).items():
        out = lr_root / row["file"]
        if (
            source in sources
            and out.is_file()
            and row["hr_sha256"] == sha256_file(sources[source])
            and row["lr_sha256"] == sha256_file(out)
        ):
            keep[source] = row
    expected = {lr_root / lr_name(s) for s in sources} | {
        state_file,
        lr_root / MANIFEST,
        lr_root / JOURNAL,
    }
    stray = [p for p in _our_files(lr_root) if p not in expected]
    for p in stray:
        p.unlink()
    if stray:
        log.info("removed %d outputs whose HR image is gone", len(stray))
    others = [
        p for p in lr_root.rglob("*") if p.is_file() and p not in expected and p.suffix != ".jpg"
    ]
    for p in others[:5]:
        log.warning("%s: not an output of this stage (left in place)", p)
    _remove_empty_dirs(lr_root)
    return keep


# -- the stage -----------------------------------------------------------------------------------
def list_sources(hr_root: Path) -> dict[str, Path]:
    """HR images by their path relative to ``hr_root``; two mapping to one JPEG is an error."""
    sources = {p.relative_to(hr_root).as_posix(): p for p in list_images(hr_root)}
    seen: dict[str, str] = {}
    for source in sorted(sources):
        other = seen.setdefault(lr_name(source), source)
        if other != source:
            raise ValueError(f"{hr_root}: {other} and {source} would both become {lr_name(source)}")
    return dict(sorted(sources.items()))


def check_roots(hr_root: Path, lr_root: Path) -> None:
    hr, lr = hr_root.resolve(), lr_root.resolve()
    if hr == lr or hr in lr.parents or lr in hr.parents:
        raise ValueError(
            f"paths.lr ({lr_root}) must be outside paths.hr ({hr_root}) and not hold it"
        )


def write_manifest(lr_root: Path, rows: Iterable[dict]) -> None:
    write_csv(lr_root / MANIFEST, sorted(rows, key=lambda r: r["file"]), COLUMNS, float_format=None)


def example_grid(rows: list[dict], hr_root: Path, lr_root: Path, count: int) -> np.ndarray:
    """Pairs [HR | LR upscaled nearest to the HR region it covers], validation images first."""
    picked = sorted(rows, key=lambda r: (r["split"] != "valid", r["file"]))[:count]
    tiles = []
    for r in picked:
        hr = read_rgb(hr_root / r["source"])
        lr = read_rgb(lr_root / r["file"])
        lh, lw = lr.shape[:2]
        s = hr.shape[0] // lh
        if s >= 1 and hr.shape[1] // lw == s:  # scale mode: LR covers the HR's top-left region
            hr = hr[: lh * s, : lw * s]
        tiles += [hr, cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_NEAREST)]
    return contact_sheet(tiles, tile=256, columns=2)


def crappify_all(
    todo: list[str], cfg: CrappifyConfig, hr_root: Path, lr_root: Path, rows: dict[str, dict]
) -> dict[str, str]:
    """Crappify ``todo`` (HR paths relative to ``hr_root``) into ``rows``, journalling each
    result so an interrupted run keeps it; returns the failures by source."""
    failed: dict[str, str] = {}
    if not todo:
        return failed
    with (
        _results(todo, cfg, hr_root, lr_root) as results,
        open(lr_root / JOURNAL, "a") as journal,
        tqdm(total=len(todo), desc="crappify", unit="img", mininterval=1.0) as bar,
    ):
        for result in results:
            if "error" in result:
                failed[result["source"]] = result["error"]
                log.warning("%s: %s", result["source"], result["error"])
            else:
                rows[result["source"]] = result
                journal.write(json.dumps(result) + "\n")
                journal.flush()
            bar.update()
    return failed


def finish_manifest(lr_root: Path, rows: dict[str, dict]) -> None:
    """The complete manifest replaces the journal of the run."""
    write_manifest(lr_root, rows.values())
    (lr_root / JOURNAL).unlink(missing_ok=True)

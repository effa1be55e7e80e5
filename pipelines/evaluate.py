"""Stage: measure the generators against resampling baselines on held-out images.

Two kinds of data sets:
- the crappify stage's splits (``splits``): each HR image with its crappified LR file;
- folders of HR images only (``hr_dirs``, e.g. Set5): the SR benchmark protocol, LR made by
  MATLAB-style bicubic downscaling of the HR cropped to a multiple of the scale. These inputs are
  clean, unlike the crappified ones the generators learn from, so they show how a generator
  copes with a degradation it never saw.

Every method (baselines, then models) restores the same LR image and is scored with
``metrics.score`` against the HR, ``base.scale`` border pixels cropped. Outputs: means per data
set and method with the Y-PSNR gain of each model over OpenCV bicubic (metrics/evaluate.json,
for ``dvc metrics``), one row per image and method (metrics/evaluate_images.csv), and a labelled
grid of a few restorations (plots/evaluate_grid.png).
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
from torch import nn

from pipelines.running import registry
from pipelines.core.config import BaseConfig, ConfigError, bounded
from pipelines.datasets.pairs import aligned_lr, lr_path_for
from pipelines.core.files import write_json, write_text
from pipelines.imaging.images import list_images, read_rgb, write_image
from pipelines.scoring.metrics import score
from pipelines.inference.restore import benchmark_lr, load_generator, restore, upscale
from pipelines.core.runtime import autocast_dtype, pick_device
from pipelines.reporting.page import REPORT_FILE, Samples, samples_table, write_report
from pipelines.running.stage import stage_main
from pipelines.imaging.visualize import grid

log = logging.getLogger(__name__)
STAGE = "evaluate"

Baseline = Literal["nearest", "bilinear", "bicubic", "lanczos", "matlab_bicubic"]
# Gains are measured against this baseline, so it is always evaluated.
REFERENCE = "bicubic"
GAIN_KEY = "gain_db"
COUNT_KEY = "images"
ROW_KEYS = ("dataset", "image", "method")
DECIMALS = 4  # JSON means: 1e-4 dB / SSIM units is below any difference worth reading


@dataclass(frozen=True)
class EvaluateConfig:
    base: BaseConfig
    splits: tuple[str, ...] = ("test",)
    baselines: tuple[Baseline, ...] = ("bicubic", "bilinear")
    # model files; a bare name stands for <paths.models>/<name>.pt; reported under the file stem
    models: tuple[str, ...] = ("generator", "gan_generator")
    # folders of HR images evaluated with bicubic-downscaled LR; reported under the folder name
    hr_dirs: tuple[str, ...] = ()
    tile: int = bounded(256, lo=16)      # LR px per tile when restoring
    overlap: int = bounded(32, lo=0)     # LR px shared by neighbouring tiles
    max_images: int = bounded(0, lo=0)   # per data set; 0 = all
    grid_images: int = bounded(3, lo=1)  # rows of the comparison grid (first data set)
    grid_crop: int = bounded(256, lo=0)  # centre crop of each grid cell, HR px; 0 = whole image

    def check(self) -> None:
        if REFERENCE not in self.baselines:
            raise ConfigError(f"baselines: must include {REFERENCE!r}, the reference of the gains")
        if 2 * self.overlap > self.tile:
            raise ConfigError(f"overlap: {self.overlap} is more than half the tile ({self.tile})")
        methods = list(self.baselines) + [model_name(m) for m in self.models]
        clash = _first_duplicate(methods + [GAIN_KEY, COUNT_KEY])
        if clash:
            raise ConfigError(f"models: {clash!r} names two methods (or a reserved key)")
        clash = _first_duplicate(list(self.splits) + [Path(d).name for d in self.hr_dirs])
        if clash:
            raise ConfigError(f"hr_dirs: {clash!r} names two data sets")
        if not self.splits and not self.hr_dirs:
            raise ConfigError("splits: no data set to evaluate (give splits or hr_dirs)")


def _first_duplicate(names: list[str]) -> str | None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


def model_name(entry: str) -> str:
    return Path(entry).stem


def model_file(entry: str, base: BaseConfig) -> Path:
    return Path(entry) if entry.endswith(".pt") else Path(base.paths.models) / f"{entry}.pt"


Pairs = Iterator[tuple[str, np.ndarray, np.ndarray]]


def split_pairs(base: BaseConfig, split: str, limit: int) -> Pairs:
    """(name, LR, HR) of a crappify split, HR cropped to the region the LR covers.

    Missing files are reported now, before any image is restored; pixels are read lazily.
    """
    hr_root, lr_root = Path(base.paths.hr), Path(base.paths.lr)
    hr_files = list_images(hr_root / split)[:limit or None]
    if not hr_files:
        raise FileNotFoundError(f"{hr_root / split}: no images (run the earlier stages first)")
    lr_files = [lr_path_for(f, hr_root, lr_root) for f in hr_files]
    for hr_file, lr_file in zip(hr_files, lr_files):
        if not lr_file.is_file():
            raise FileNotFoundError(f"{lr_file}: LR image of {hr_file} missing (rerun crappify)")

    def pairs() -> Pairs:
        resized = 0
        for hr_file, lr_file in zip(hr_files, lr_files):
            lr, hr = read_rgb(lr_file), read_rgb(hr_file)
            if lr.shape[:2] != (hr.shape[0] // base.scale, hr.shape[1] // base.scale):
                resized += 1
            lr, hr = aligned_lr(lr, hr, base.scale)
            yield str(hr_file.relative_to(hr_root / split)), lr, hr
        if resized:
            log.info("%s: %d LR image(s) not at 1/%d of their HR (short-side crappify) were "
                     "resized to HR/%d with area interpolation", split, resized, base.scale,
                     base.scale)
    return pairs()


def folder_pairs(folder: Path, scale: int, limit: int) -> Pairs:
    """(name, LR, HR) of a benchmark folder: LR = MATLAB-style bicubic downscale of the HR."""
    files = list_images(folder)[:limit or None]
    if not files:
        raise FileNotFoundError(f"{folder}: no images")
    return ((str(f.relative_to(folder)), *benchmark_lr(read_rgb(f), scale)) for f in files)


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    if not size:
        return img
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[y:y + size, x:x + size]


def summarise(rows: list[dict], baselines: list[str], models: list[str]) -> dict:
    """Means per method over the rows of one data set, and each model's Y-PSNR gain over bicubic."""
    out: dict = {COUNT_KEY: len({r["image"] for r in rows})}
    for method in [*baselines, *models]:
        mine = [r for r in rows if r["method"] == method]
        keys = dict.fromkeys(k for r in mine for k in r if k not in ROW_KEYS)
        # A metric a small image lacks (ms_ssim under 21 px) is averaged over the others.
        out[method] = {k: round(float(np.mean([r[k] for r in mine if k in r])), DECIMALS)
                       for k in keys}
    if models:
        # Mean of per-image gains = difference of the means; rounded after subtracting.
        ref = np.mean([r["psnr_y"] for r in rows if r["method"] == REFERENCE])
        out[GAIN_KEY] = {m: round(float(np.mean([r["psnr_y"] for r in rows if r["method"] == m])
                                        - ref), DECIMALS) for m in models}
    return out


def write_rows(path: Path, rows: list[dict]) -> None:
    keys = [*ROW_KEYS, *sorted({k for r in rows for k in r} - set(ROW_KEYS))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


def run(cfg: EvaluateConfig, tracker=None,
        builder: Callable[..., nn.Module] | None = None) -> dict:
    """Evaluate; ``builder`` rebuilds networks from model files (default: build_generator)."""
    base = cfg.base
    device = pick_device(base.device)
    dtype = autocast_dtype(device, base.precision)
    models = {model_name(m): load_generator(model_file(m, base), device, builder)
              for m in cfg.models}
    datasets = [(s, split_pairs(base, s, cfg.max_images)) for s in cfg.splits]
    datasets += [(Path(d).name, folder_pairs(Path(d), base.scale, cfg.max_images))
                 for d in cfg.hr_dirs]

    results: dict = {}
    rows: list[dict] = []
    grid_rows: list[list[np.ndarray]] = []
    samples = Samples(base.scale)  # the report's image regions, taken as they are restored
    for i, (dataset, pairs) in enumerate(datasets):
        mine: list[dict] = []
        for name, lr, hr in pairs:
            outputs = {b: upscale(lr, base.scale, b) for b in cfg.baselines}
            for mname, model in models.items():
                outputs[mname] = restore(model, lr, cfg.tile, cfg.overlap, device, dtype)
            for method, sr in outputs.items():
                mine.append({"dataset": dataset, "image": name, "method": method,
                             **score(sr, hr, border=base.scale)})
            if i == 0 and len(grid_rows) < cfg.grid_images:
                cells = [upscale(lr, base.scale, "nearest"), outputs[REFERENCE],
                         *(outputs[m] for m in models), hr]
                grid_rows.append([centre_crop(c, cfg.grid_crop) for c in cells])
            samples.add(dataset, name, lr, outputs, hr)
        results[dataset] = summarise(mine, list(cfg.baselines), list(models))
        log.info("%s (%d images): %s", dataset, results[dataset][COUNT_KEY],
                 {m: results[dataset][m]["psnr_y"] for m in [*cfg.baselines, *models]})
        rows += mine

    metrics_dir, plots_dir = Path(base.paths.metrics), Path(base.paths.plots)
    write_json(metrics_dir / f"{STAGE}.json", results)
    write_rows(metrics_dir / f"{STAGE}_images.csv", rows)
    picture = grid(grid_rows, ["LR (nearest)", REFERENCE, *models, "HR"])
    write_image(plots_dir / f"{STAGE}_grid.png", picture)
    report = write_report(REPORT_FILE, results, samples, rows, plots_dir=base.paths.plots,
                          metrics_dir=base.paths.metrics)
    if tracker is not None:
        tracker.log_image(picture, f"{STAGE}_grid.png")
        tracker.log_artifact(metrics_dir / f"{STAGE}_images.csv")
        tracker.log_artifact(report)
        tracker.log_table(samples_table(samples, rows), f"{STAGE}_images.json")
        if tracker.enabled and tracker.run_id:
            # scores and the champion alias on the registered versions of the evaluated files
            first = datasets[0][0]
            registry.record_evaluation(tracker.uri, first, results[first],
                                       {model_name(m): model_file(m, base) for m in cfg.models},
                                       evaluation_run=tracker.run_id)
    return results


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, EvaluateConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage: measure the generators against resampling baselines on held-out images.

Two kinds of data sets, each under the ``degradations`` asked for (pipelines/datasets/evaluation.py):
- the crappify stage's splits (``splits``): ``crappy`` is each HR image with its crappified LR
  file (reported under the split's name, ``test``), ``clean`` the HR bicubic-downscaled
  (``test/clean``);
- folders of HR images only (``hr_dirs``, e.g. Set5): ``crappy`` LR made here by the crappify
  section's seeded degradation, ``folder_draws`` of them per photo (``Set5/crappy``), ``clean``
  by the SR benchmark protocol, MATLAB-style bicubic downscaling (``Set5/clean``). Clean inputs
  are unlike the crappified ones the generators learn from, so they show whether a generator
  damages a photo that was only downscaled.

Every method (baselines, then models) restores the same LR image and is scored with
``metrics.score`` against the HR, ``base.scale`` border pixels cropped, and with the regional
scores of pipelines/scoring/regions.py: Y-PSNR inside the watermark's mask (crappy inputs) and
the chroma error near edges. Outputs: means per data set and method with the Y-PSNR gain of each
model over OpenCV bicubic, whole-image and inside the mask (metrics/evaluate.json, for
``dvc metrics``), the table ``dvc metrics show`` prints (metrics/evaluate/<dataset>/<method>.json),
one row per image and method (metrics/evaluate_images.csv), each model's gain per image
(plots/evaluate_gains.csv) and a labelled grid of a few restorations (plots/evaluate_grid.png).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from torch import nn

from pipelines.core.config import BaseConfig, ConfigError, bounded, section
from pipelines.core.files import write_csv, write_json
from pipelines.core.runtime import autocast_dtype, pick_device
from pipelines.core.tasks import FIDELITY, REFERENCE, REGISTERED_MODEL
from pipelines.datasets.evaluation import Kind, dataset_name, folder_images, split_images
from pipelines.datasets.pairs import check_kinds
from pipelines.imaging.degradations import CrappifyConfig
from pipelines.imaging.images import write_image
from pipelines.imaging.resize import upscale
from pipelines.imaging.tensors import centre_crop
from pipelines.imaging.visualize import grid
from pipelines.inference.restore import load_generator, restore
from pipelines.reporting import dvc_views
from pipelines.reporting.page import REPORT_NAME, Samples, samples_table, write_report
from pipelines.running import registry
from pipelines.running.stage import stage_main
from pipelines.scoring.metrics import score
from pipelines.scoring.regions import regional_scores

log = logging.getLogger(__name__)
STAGE = "evaluate"

# gray: the input's luminance alone, bicubic-upscaled (a colorizer's baseline)
Baseline = Literal["nearest", "bilinear", "bicubic", "lanczos", "matlab_bicubic", "gray"]
GAIN_KEY = "gain_db"
MASK_GAIN_KEY = "mask_gain_db"  # the same, of mask_psnr_y
COUNT_KEY = "images"
ROW_KEYS = ("dataset", "image", "method")
DECIMALS = 4  # JSON means: 1e-4 dB / SSIM units is below any difference worth reading


@dataclass(frozen=True)
class EvaluateConfig:
    base: BaseConfig
    crappify: CrappifyConfig = section("crappify")  # the degradation of crappy folder inputs
    splits: tuple[str, ...] = ("test",)
    baselines: tuple[Baseline, ...] = ("bicubic", "bilinear")
    # model files; a bare name stands for <paths.models>/<name>.pt; reported under the file stem
    models: tuple[str, ...] = ("generator", "gan_generator")
    # folders of HR images; their LR is made here, reported as <folder name>/<degradation>
    hr_dirs: tuple[str, ...] = ()
    # crappy: the crappify section's degradation (a split's own LR files); clean: bicubic x1/scale
    degradations: tuple[Kind, ...] = ("crappy", "clean")
    # crappy LR images of each photo of an hr_dirs folder, each its own seeded draw
    folder_draws: int = bounded(8, lo=1)
    tile: int = bounded(256, lo=16)  # LR px per tile when restoring
    overlap: int = bounded(32, lo=0)  # LR px shared by neighbouring tiles
    # each model's tiles averaged over their 8 flips and turns, reported as <model>_ensemble
    self_ensemble: bool = False
    max_images: int = bounded(0, lo=0)  # per split or folder (photos, not draws); 0 = all
    grid_images: int = bounded(3, lo=1)  # rows of the comparison grid (first data set)
    grid_crop: int = bounded(256, lo=0)  # centre crop of each grid cell, HR px; 0 = whole image

    @property
    def reference(self) -> str:
        """The baseline every gain is measured against (pipelines/core/tasks.py)."""
        return REFERENCE[self.base.task]

    @property
    def methods_baselines(self) -> tuple[str, ...]:
        """The baselines evaluated: those asked for, and the reference first if it is not."""
        if self.reference in self.baselines:
            return tuple(self.baselines)
        return (self.reference, *self.baselines)

    def check(self) -> None:
        if 2 * self.overlap > self.tile:
            raise ConfigError(f"overlap: {self.overlap} is more than half the tile ({self.tile})")
        methods = list(self.methods_baselines) + [
            model_name(m, self.self_ensemble) for m in self.models
        ]
        clash = _first_duplicate(methods + [GAIN_KEY, MASK_GAIN_KEY, COUNT_KEY])
        if clash:
            raise ConfigError(f"models: {clash!r} names two methods (or a reserved key)")
        clash = _first_duplicate(list(self.splits) + [Path(d).name for d in self.hr_dirs])
        if clash:
            raise ConfigError(f"hr_dirs: {clash!r} names two data sets")
        if not self.splits and not self.hr_dirs:
            raise ConfigError("splits: no data set to evaluate (give splits or hr_dirs)")
        check_kinds("degradations", self.degradations)


def _first_duplicate(names: list[str]) -> str | None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


# evaluate.self_ensemble scores the averaged restoration, not the model's own single pass: its
# results carry their own name, which the registry and the model card do not take for the model
ENSEMBLE_SUFFIX = "_ensemble"


def model_name(entry: str, self_ensemble: bool = False) -> str:
    return Path(entry).stem + (ENSEMBLE_SUFFIX if self_ensemble else "")


def model_file(entry: str, base: BaseConfig) -> Path:
    return Path(entry) if entry.endswith(".pt") else Path(base.paths.models) / f"{entry}.pt"


def summarise(
    rows: list[dict], baselines: list[str], models: list[str], task: str = "restore"
) -> dict:
    """Means per method over the rows of one data set, and each model's gain over the task's
    reference in the task's PSNR (Y-PSNR over bicubic; a colorizer's RGB PSNR over gray)."""
    out: dict = {COUNT_KEY: len({r["image"] for r in rows})}
    for method in [*baselines, *models]:
        mine = [r for r in rows if r["method"] == method]
        keys = dict.fromkeys(k for r in mine for k in r if k not in ROW_KEYS)
        # A metric a small image lacks (ms_ssim under 21 px) is averaged over the others.
        out[method] = {
            k: round(float(np.mean([r[k] for r in mine if k in r])), DECIMALS) for k in keys
        }
    if models:
        reference = REFERENCE[task]
        out[GAIN_KEY] = _gains(rows, models, FIDELITY[task], reference)
        if any("mask_psnr_y" in r for r in rows):
            out[MASK_GAIN_KEY] = _gains(rows, models, "mask_psnr_y", reference)
    return out


def _gains(rows: list[dict], models: list[str], key: str, reference: str) -> dict[str, float]:
    """Each model's mean ``key`` minus ``reference``'s, over the images that have it."""
    # Mean of per-image gains = difference of the means; rounded after subtracting.
    ref = np.mean([r[key] for r in rows if r["method"] == reference and key in r])
    return {
        m: round(
            float(np.mean([r[key] for r in rows if r["method"] == m and key in r]) - ref), DECIMALS
        )
        for m in models
    }


def write_rows(path: Path, rows: list[dict]) -> None:
    keys = [*ROW_KEYS, *sorted({k for r in rows for k in r} - set(ROW_KEYS))]
    write_csv(path, rows, keys, float_format=".6f")


def data_sets(cfg: EvaluateConfig) -> list[tuple[str, Iterator]]:
    """(name, images) of every split and folder under every degradation asked for."""
    base = cfg.base
    sets = [
        (
            dataset_name(s, kind, split=True),
            split_images(base, cfg.crappify, s, kind, cfg.max_images),
        )
        for s in cfg.splits
        for kind in cfg.degradations
    ]
    return sets + [
        (
            dataset_name(Path(d).name, kind, split=False),
            folder_images(Path(d), base, cfg.crappify, kind, cfg.max_images, cfg.folder_draws),
        )
        for d in cfg.hr_dirs
        for kind in cfg.degradations
    ]


def image_row(
    dataset: str, image, method: str, sr: np.ndarray, scale: int, task: str = "restore"
) -> dict:
    """One image restored by one method: every whole-image and regional score."""
    return {
        "dataset": dataset,
        "image": image.name,
        "method": method,
        **score(sr, image.hr, border=scale, task=task),
        **regional_scores(sr, image.hr, border=scale, radius=scale, watermark=image.watermark),
    }


def restored(
    cfg: EvaluateConfig, models: dict[str, nn.Module], lr: np.ndarray, device, dtype
) -> dict[str, np.ndarray]:
    """Each model's restoration of ``lr``, as ``cfg`` asks for it."""
    return {
        name: restore(model, lr, cfg.tile, cfg.overlap, device, dtype, cfg.self_ensemble)
        for name, model in models.items()
    }


def run(cfg: EvaluateConfig, tracker=None, builder: Callable[..., nn.Module] | None = None) -> dict:
    """Evaluate; ``builder`` rebuilds networks from model files (default: build_generator)."""
    base, task, reference, baselines = cfg.base, cfg.base.task, cfg.reference, cfg.methods_baselines
    device = pick_device(base.device)
    dtype = autocast_dtype(device, base.precision)
    models = {
        model_name(m, cfg.self_ensemble): load_generator(model_file(m, base), device, builder, task)
        for m in cfg.models
    }
    datasets = data_sets(cfg)

    results: dict = {}
    rows: list[dict] = []
    grid_rows: list[list[np.ndarray]] = []
    samples = Samples(base.scale)  # the report's image regions, taken as they are restored
    for i, (dataset, pairs) in enumerate(datasets):
        mine: list[dict] = []
        for image in pairs:
            lr, hr = image.lr, image.hr
            outputs = {b: upscale(lr, base.scale, b) for b in baselines}
            outputs.update(restored(cfg, models, lr, device, dtype))
            mine += [
                image_row(dataset, image, method, sr, base.scale, task)
                for method, sr in outputs.items()
            ]
            if i == 0 and len(grid_rows) < cfg.grid_images:
                # a colorizer's input is its gray reference: no column of its own
                first = [] if task == "colorize" else [upscale(lr, base.scale, "nearest")]
                cells = [*first, outputs[reference], *(outputs[m] for m in models), hr]
                grid_rows.append([centre_crop(c, cfg.grid_crop) for c in cells])
            samples.add(dataset, image.name, lr, outputs, hr)
        results[dataset] = summarise(mine, list(baselines), list(models), task)
        log.info(
            "%s (%d images), %s: %s",
            dataset,
            results[dataset][COUNT_KEY],
            FIDELITY[task],
            {m: results[dataset][m][FIDELITY[task]] for m in [*baselines, *models]},
        )
        rows += mine

    metrics_dir, plots_dir = Path(base.paths.metrics), Path(base.paths.plots)
    write_json(metrics_dir / f"{STAGE}.json", results)
    write_rows(metrics_dir / f"{STAGE}_images.csv", rows)
    dvc_views.write_method_tables(
        metrics_dir / STAGE, results, [*baselines, *models], reference, task
    )
    dvc_views.write_image_gains(
        plots_dir / f"{STAGE}_gains.csv", rows, list(models), reference, FIDELITY[task]
    )
    first = [] if task == "colorize" else ["LR (nearest)"]
    picture = grid(grid_rows, [*first, reference, *models, "HR"])
    write_image(plots_dir / f"{STAGE}_grid.png", picture)
    page = write_report(
        Path(base.paths.reports) / REPORT_NAME,
        results,
        samples,
        rows,
        plots_dir=base.paths.plots,
        metrics_dir=base.paths.metrics,
    )
    if tracker is not None:
        tracker.log_image(picture, f"{STAGE}_grid.png")
        tracker.log_artifact(metrics_dir / f"{STAGE}_images.csv")
        tracker.log_artifact(page)
        tracker.log_table(samples_table(samples, rows), f"{STAGE}_images.json")
        # scores and the champion alias on the registered versions of the evaluated files;
        # self-ensemble scores are not the files' own single pass, so they are left out
        if tracker.enabled and tracker.run_id and not cfg.self_ensemble:
            first = datasets[0][0]
            registry.record_evaluation(
                tracker.uri,
                first,
                results[first],
                {model_name(m): model_file(m, base) for m in cfg.models},
                evaluation_run=tracker.run_id,
                name=REGISTERED_MODEL[task],
                trade=registry.trade_of(base.paths.metrics),
            )
    return results


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, EvaluateConfig, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

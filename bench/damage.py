"""Where a restorer's gain comes from: each part of the crappy degradation on its own.

``python -m bench damage [--model PATH ...] [--params FILE] [--hr-dir DIR ...] [--self-ensemble]
[--draws N]``

A crappy input has lost detail to the downscale, had text drawn on it and been JPEG-compressed.
The gain over bicubic on crappy photos mixes what a model does about each. Here every HR photo
of the folders (default Set5) is degraded by one part at a time, with the params' crappify
section and the same seeded draws as ``evaluate``'s ``<folder>/crappy``, ``evaluate.folder_draws``
of them per photo unless ``--draws`` says otherwise (so the "crappy" row is that data set's LR,
bit for bit):

- downscale: the crappify resample alone;
- text: downscale and the watermark, JPEG quality 100 (no JPEG at all is not a crappify option;
  at 100 its error is small beside the others');
- JPEG: downscale and JPEG at the params' quality range, no text;
- JPEG q: the same at one quality, for each of ``--quality`` (default 10, 30, 50, 70);
- crappy: everything;
- crappy, text exact: the crappy row's restorations with every pixel of the watermark's mask
  (its strokes grown by one LR pixel, as ``evaluate``'s ``mask_psnr_y``) set to the truth. A
  model's gain there is what it does about the rest of the damage; the table's note gives
  each method's Y-PSNR in that row over bicubic on the crappy inputs, the most that a perfect
  text remover on top of it could gain on them.

Blur and noise, when the params switch them on, are in every row but the downscale one.

The table gives bicubic's Y-PSNR and each model's gain over it (dB), ``base.scale`` border
pixels cropped, as ``evaluate`` scores. A model that deblocks gains more on JPEG inputs than on
downscaled ones, since bicubic keeps every JPEG error and the truth has none. With
``--self-ensemble`` each model also has a ``<model>_ensemble`` column: its restorations averaged
over the input's 8 flips and quarter turns (``restore``'s ``self_ensemble``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

import pipelines  # noqa: F401  (its import settings come before any computation)
from bench.common import ROOT, Report
from bench.quality import DEFAULT_HR_DIRS
from pipelines.core.config import ConfigError, load
from pipelines.datasets.evaluation import crappy_pair, draw_key
from pipelines.datasets.pairs import aligned_lr
from pipelines.evaluate import ENSEMBLE_SUFFIX, EvaluateConfig
from pipelines.imaging.degradations import CrappifyConfig, Degradation, downscale
from pipelines.imaging.images import list_images, read_rgb, to_grayscale
from pipelines.imaging.resize import upscale
from pipelines.inference.restore import load_generator, network_task, restore
from pipelines.scoring.metrics import psnr_y

TEXT_EXACT = "crappy, text exact"
NAME = "damage"
TITLE = "Gain over bicubic per part of the degradation (Y-PSNR dB)"
DEFAULT_MODELS = ("models/generator.pt", "models/gan_generator.pt")
DEFAULT_QUALITIES = (10, 30, 50, 70)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("damage (also takes --params and --hr-dir)")
    g.add_argument(
        "--model",
        dest="damage_models",
        action="append",
        default=None,
        type=Path,
        metavar="PATH",
        help="damage: a generator file (repeatable; default models/generator.pt and "
        "models/gan_generator.pt, those that exist)",
    )
    g.add_argument(
        "--quality",
        dest="damage_qualities",
        action="append",
        default=None,
        type=int,
        metavar="Q",
        help="damage: a JPEG quality of its own row (repeatable; default 10, 30, 50, 70)",
    )
    g.add_argument(
        "--self-ensemble",
        dest="damage_self_ensemble",
        action="store_true",
        help="damage: also each model averaged over its input's 8 flips and turns, as "
        "<model>_ensemble",
    )
    g.add_argument(
        "--draws",
        dest="damage_draws",
        type=int,
        default=None,
        metavar="N",
        help="damage: degradations of each photo per row (default the params' "
        "evaluate.folder_draws)",
    )


def variants(spec: Degradation, qualities: list[int]) -> dict[str, Degradation | None]:
    """Row name -> the degradation of that row; None: the downscale alone."""
    rows: dict[str, Degradation | None] = {
        "downscale": None,
        "text": dataclasses.replace(spec, jpeg_quality=(100, 100)),
        "JPEG": dataclasses.replace(spec, watermark="none"),
    }
    for q in qualities:
        rows[f"JPEG {q}"] = dataclasses.replace(spec, watermark="none", jpeg_quality=(q, q))
    rows["crappy"] = spec
    return rows


def draws_anything(spec: Degradation | None) -> bool:
    """Whether a row's degradation draws anything: quality, text, blur or noise."""
    if spec is None:
        return False
    lo, hi = spec.jpeg_quality
    return lo != hi or spec.watermark != "none" or spec.blur_prob > 0 or spec.noise_prob > 0


def degraded(hr: np.ndarray, spec: Degradation | None, base_spec: Degradation, key: str, seed: int):
    """(LR, the HR region it covers, the watermark's mask over that region or None) of ``hr``
    under one row's degradation."""
    if spec is None:
        img = to_grayscale(hr) if base_spec.grayscale else hr
        lr, region = aligned_lr(
            downscale(img, base_spec.scale, base_spec.resample), hr, base_spec.scale
        )
        return lr, region, None
    return crappy_pair(hr, spec, seed, key, base_spec.scale)[:3]


def run(args: argparse.Namespace) -> Report:
    params = args.params
    cfg = load(CrappifyConfig, "crappify", params)
    if cfg.base.task != "restore":
        raise SystemExit(f"damage: {params} is a {cfg.base.task} config; this measures restorers")
    if args.damage_draws is None:
        try:
            draws = load(EvaluateConfig, "evaluate", params).folder_draws
        except ConfigError as exc:
            raise SystemExit(f"damage: {params}: {exc} (or give --draws N)") from exc
    elif args.damage_draws < 1:
        raise SystemExit(f"damage: --draws {args.damage_draws} is below 1")
    else:
        draws = args.damage_draws
    paths = args.damage_models or [ROOT / m for m in DEFAULT_MODELS if (ROOT / m).is_file()]
    if not paths:
        raise SystemExit("damage: no model files (train first, or give --model PATH)")
    # columns by file stem; by folder and stem when two files share a stem
    stems = [Path(p).stem for p in paths]
    models = {}
    for path, stem in zip(paths, stems):
        model = load_generator(path)
        if network_task(model) != "restore":
            raise SystemExit(f"damage: {path} is not a restorer")
        if model.scale != cfg.base.scale:
            raise SystemExit(
                f"damage: {path} upscales x{model.scale}; base.scale in {params} is "
                f"{cfg.base.scale}"
            )
        models[stem if stems.count(stem) == 1 else f"{Path(path).parent.parent.name}/{stem}"] = (
            model
        )
    # column -> (model, self-ensembled)
    methods = {name: (model, False) for name, model in models.items()}
    if args.damage_self_ensemble:
        methods.update({name + ENSEMBLE_SUFFIX: (model, True) for name, model in models.items()})
    folders = [Path(d) for d in (args.hr_dirs or DEFAULT_HR_DIRS)]
    qualities = args.damage_qualities or list(DEFAULT_QUALITIES)
    report = Report(
        NAME,
        TITLE,
        {
            "params": str(params),
            "models": [str(p) for p in paths],
            "hr_dirs": [str(d) for d in folders],
            "qualities": qualities,
            "self_ensemble": bool(args.damage_self_ensemble),
            "draws": draws,
        },
    )
    scale, seed = cfg.base.scale, cfg.base.seed
    for folder in folders:
        files = list_images(folder)
        if not files:
            raise SystemExit(f"damage: {folder}: no images")
        # each photo decoded once, degraded once per row
        photos = {f.relative_to(folder).as_posix(): read_rgb(f) for f in files}
        results: dict[str, dict[str, float]] = {}
        for row, spec in variants(cfg, qualities).items():
            columns = ["bicubic", *methods]
            scores: dict[str, list[float]] = {c: [] for c in columns}
            exact: dict[str, list[float]] = {c: [] for c in columns}
            # a row that draws nothing has one image per photo
            n = draws if draws_anything(spec) else 1
            for key, photo, draw in ((k, p, d) for k, p in photos.items() for d in range(n)):
                lr, hr, mask = degraded(photo, spec, cfg, draw_key(key, draw), seed)
                outputs = {"bicubic": upscale(lr, scale)}
                for name, (model, ensemble) in methods.items():
                    with torch.no_grad():
                        outputs[name] = restore(model, lr, self_ensemble=ensemble)
                for name, sr in outputs.items():
                    scores[name].append(psnr_y(sr, hr, border=scale))
                    if row == "crappy":
                        text_exact = sr if mask is None else np.where(mask[..., None], hr, sr)
                        exact[name].append(psnr_y(text_exact, hr, border=scale))
            results[row] = {k: float(np.mean(v)) for k, v in scores.items()}
            if row == "crappy":
                results[TEXT_EXACT] = {k: float(np.mean(v)) for k, v in exact.items()}
        report.data[folder.name] = results
        crappy_bicubic = results["crappy"]["bicubic"]
        report.table(
            f"{folder.name} ({len(files)} photos, {draws} draws of each degradation that draws "
            "anything): bicubic Y-PSNR and each model's gain over it",
            ["degradation", "bicubic", *methods],
            [
                [row, f"{r['bicubic']:.2f}", *(f"{r[m] - r['bicubic']:+.2f}" for m in methods)]
                for row, r in results.items()
            ],
            note="with the text exact, over bicubic on the crappy inputs: "
            + ", ".join(f"{m} {v - crappy_bicubic:+.2f}" for m, v in results[TEXT_EXACT].items()),
        )
    return report

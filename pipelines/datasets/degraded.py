"""The (LR, HR) training set that generator pretraining and the GAN phase share."""

from __future__ import annotations

from pathlib import Path

from pipelines.core.config import BaseConfig
from pipelines.datasets.pairs import NO_ZOOM, TrainPairs, lr_path_for, real_examples, split_files
from pipelines.imaging.degradations import CrappifyConfig, make_degrader


def train_dataset(
    base: BaseConfig,
    data_mode: str,
    crappify: CrappifyConfig,
    crop: int,
    lighting: float,
    clean_prob: float,
    clean_resample: tuple[str, ...] = ("area",),
    watermark_window: int = 0,
    watermark_focus: float = 0.0,
    zoom: tuple[float, float] = NO_ZOOM,
    text_weight: float = 0.0,
    adversarial: bool = False,
) -> TrainPairs:
    """The (LR, HR) training crops of generator pretraining and the GAN phase: a fresh
    degradation per crop, or (``fixed``, the recipe) crops of the crappify stage's files.
    ``text_weight`` > 0 (fresh only): each sample carries the loss's pixel weights too.
    ``adversarial`` (the GAN phase): the HR crops are the critic's real examples too."""
    hr_root = Path(base.paths.hr)
    hr_files = split_files(hr_root, "train")
    if adversarial:
        hr_files = real_examples(hr_files, base.task)
    if data_mode == "fresh":
        return TrainPairs(
            hr_files,
            crop,
            base.scale,
            base.seed,
            degrade=make_degrader(crappify, with_mask=text_weight > 0),
            lighting=lighting,
            clean_prob=clean_prob,
            clean_resample=clean_resample,
            watermark_window=watermark_window,
            watermark_focus=watermark_focus,
            zoom=zoom,
            text_weight=text_weight,
        )
    lr_files = [lr_path_for(f, hr_root, Path(base.paths.lr)) for f in hr_files]
    return TrainPairs(
        hr_files, crop, base.scale, base.seed, lr_files=lr_files, lighting=lighting, zoom=zoom
    )

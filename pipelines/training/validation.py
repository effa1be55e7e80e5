"""Scoring a model on the validation split while it trains, and its sample grids."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from pipelines.core.runtime import autocast
from pipelines.imaging.tensors import to_image
from pipelines.imaging.visualize import grid
from pipelines.networks import colour
from pipelines.scoring.metrics import fidelity, score


class Bicubic(torch.nn.Module):
    """Plain bicubic upsampling as a model: the baseline every validation is compared with;
    a colorizer's (``gray``) is its input's luminance, upsampled."""

    def __init__(self, scale: int, gray: bool = False):
        super().__init__()
        self.scale = scale
        self.gray = gray

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gray:
            x = colour.gray(x)
        if self.scale == 1:
            return x
        return torch.nn.functional.interpolate(
            x, scale_factor=self.scale, mode="bicubic", align_corners=False
        )


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    pairs,
    device: torch.device,
    dtype: torch.dtype | None,
    border: int,
    full: bool = False,
    task: str = "restore",
) -> dict[str, float]:
    """Mean scores of ``model`` over ``pairs`` (an EvalPairs), one image at a time: the
    ``task``'s fidelity scores (``scoring.metrics.fidelity``), or with ``full`` every metric of
    ``scoring.metrics.score`` (slower; the GAN phase picks its checkpoint by them)."""
    was_training = model.training
    model.eval()
    rows = []
    for i in range(len(pairs)):
        lr, hr = pairs[i]
        with autocast(device, dtype):
            sr = model(lr.unsqueeze(0).to(device))
        sr_img, hr_img = to_image(sr[0]), to_image(hr)
        rows.append((score if full else fidelity)(sr_img, hr_img, border, task))
    model.train(was_training)
    return {k: float(sum(r[k] for r in rows) / len(rows)) for k in rows[0]}


@torch.no_grad()
def sample_grid(model: torch.nn.Module, pairs, device: torch.device, count: int = 3) -> np.ndarray:
    """A labelled grid (input, output, target) for the first ``count`` validation pairs."""
    was_training = model.training
    model.eval()
    rows = []
    for i in range(min(count, len(pairs))):
        lr, hr = pairs[i]
        sr = model(lr.unsqueeze(0).to(device))[0]
        hr_img = to_image(hr)
        lr_up = cv2.resize(to_image(lr), hr_img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        rows.append([lr_up, to_image(sr), hr_img])
    model.train(was_training)
    return grid(rows, ["input", "output", "target"])

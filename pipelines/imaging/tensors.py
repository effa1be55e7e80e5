"""Images as arrays and as tensors, and the centred crops every stage takes of them."""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xHxW float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)


def to_image(t: torch.Tensor) -> np.ndarray:
    """3xHxW float in [0, 1] -> HxWx3 uint8 RGB (rounded, clipped)."""
    return t.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def centre_box(height: int, width: int, size: int, multiple: int = 1) -> tuple[int, int, int]:
    """(top, left, side) of the centred square crop of ``size`` px, shrunk to fit the image;
    with ``multiple`` the side and corner are multiples of it (LR/HR crops stay aligned)."""
    side = min(size, height // multiple * multiple, width // multiple * multiple)
    top = (height - side) // 2 // multiple * multiple
    left = (width - side) // 2 // multiple * multiple
    return top, left, side


def centre_crop(img: np.ndarray, size: int, multiple: int = 1) -> np.ndarray:
    """The centred square crop of ``size`` px (the whole image for 0)."""
    if not size:
        return img
    y, x, c = centre_box(img.shape[0], img.shape[1], size, multiple)
    return img[y : y + c, x : x + c]

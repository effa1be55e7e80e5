"""Scores inside regions where restorations typically fail, beside the whole-image ones.

A whole-image PSNR barely moves when a model leaves the outline of a watermark behind or paints
colour fringes along edges: both cover a few percent of the pixels. So two regional scores:

- ``mask_psnr_y``: luma PSNR inside the watermark's own mask (the pixels the text covered at
  LR size, grown by one LR pixel for the JPEG ringing around the strokes, scaled up to HR);
  only for inputs that carry a watermark.
- ``edge_chroma_rmse``: RMS error of the two chroma channels (Cb, Cr of MATLAB's
  ``rgb2ycbcr``, 0..255 scale) near the reference's strong edges (Canny on its lightly blurred
  luma, grown by ``radius`` px). A gray photo has Cb = Cr = 128 everywhere, so a green or
  magenta fringe shows up here as nothing else does. Lower is better.

Both use the same border crop as ``metrics.score``. A region left empty (no strong edge, a
watermark entirely inside the border) gives no value rather than a made-up one.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipelines.scoring.metrics import PSNR_CAP, _check_pair, crop_border, rgb_to_y

# Canny hysteresis on 8-bit luma after a sigma-1 blur: object outlines, not fine texture or
# JPEG noise (without the blur, 100/200 fires on grass and fur).
EDGE_BLUR_SIGMA = 1.0
EDGE_LOW, EDGE_HIGH = 100, 200
MASK_GROW_LR = 1  # LR px added around the text strokes


def rgb_to_cbcr(rgb: np.ndarray) -> np.ndarray:
    """Cb and Cr of BT.601 as MATLAB ``rgb2ycbcr`` computes them, float64 HxWx2 in [16, 240]."""
    x = rgb.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    return np.stack([cb, cr], axis=-1)


def edge_mask(hr: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` px of a strong edge of ``hr`` (bool HxW)."""
    y = np.clip(np.rint(rgb_to_y(hr)), 0, 255).astype(np.uint8)
    y = cv2.GaussianBlur(y, (0, 0), EDGE_BLUR_SIGMA)
    edges = cv2.Canny(y, EDGE_LOW, EDGE_HIGH, L2gradient=True)
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        edges = cv2.dilate(edges, kernel)
    return edges > 0


def watermark_mask_hr(mask_lr: np.ndarray, hr_shape: tuple[int, ...], scale: int) -> np.ndarray:
    """The LR watermark mask as a bool mask over the HR image it belongs to.

    ``mask_lr`` is the coverage that ``watermark_with_mask`` returns, on the LR grid; an LR image
    that is not exactly 1/scale (short-side crappify) is brought to HR // scale first, as the
    LR image itself is.
    """
    h, w = hr_shape[0] // scale, hr_shape[1] // scale
    m = (mask_lr > 0).astype(np.uint8)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    if MASK_GROW_LR:
        m = cv2.dilate(m, np.ones((2 * MASK_GROW_LR + 1,) * 2, np.uint8))
    big = cv2.resize(m, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST) > 0
    out = np.zeros(hr_shape[:2], bool)
    out[: h * scale, : w * scale] = big
    return out


def masked_psnr_y(
    sr: np.ndarray, hr: np.ndarray, mask: np.ndarray, border: int = 0
) -> float | None:
    """Luma PSNR over the pixels of ``mask`` (capped like ``psnr_y``); None if none is left."""
    _check_pair(sr, hr)
    if mask.shape != sr.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the {sr.shape[:2]} image")
    m = crop_border(mask, border)
    if not m.any():
        return None
    d = crop_border(rgb_to_y(sr), border)[m] - crop_border(rgb_to_y(hr), border)[m]
    mse = float(np.mean(d**2))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


def edge_chroma_rmse(
    sr: np.ndarray, hr: np.ndarray, border: int = 0, radius: int = 4
) -> float | None:
    """RMS Cb/Cr error within ``radius`` px of the reference's strong edges; None without any."""
    _check_pair(sr, hr)
    m = crop_border(edge_mask(hr, radius), border)
    if not m.any():
        return None
    d = crop_border(rgb_to_cbcr(sr), border)[m] - crop_border(rgb_to_cbcr(hr), border)[m]
    return float(np.sqrt(np.mean(d**2)))


def regional_scores(
    sr: np.ndarray,
    hr: np.ndarray,
    border: int = 0,
    radius: int = 4,
    watermark: np.ndarray | None = None,
) -> dict[str, float]:
    """``edge_chroma_rmse`` and, given the watermark's HR mask, ``mask_psnr_y`` (when defined)."""
    out: dict[str, float] = {}
    if watermark is not None:
        value = masked_psnr_y(sr, hr, watermark, border)
        if value is not None:
            out["mask_psnr_y"] = value
    value = edge_chroma_rmse(sr, hr, border, radius)
    if value is not None:
        out["edge_chroma_rmse"] = value
    return out

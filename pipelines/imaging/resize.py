"""Resampling by name: OpenCV's methods and MATLAB's bicubic ``imresize`` (the SR benchmarks')."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from pipelines.imaging.images import to_grayscale

Resample = Literal["area", "bilinear", "bicubic", "lanczos", "nearest"]

# OpenCV methods by name; ``upscale`` also knows "matlab_bicubic" (``imresize_matlab``).
# OpenCV's bilinear/bicubic/lanczos sample a fixed neighbourhood and, unlike PIL, apply no
# anti-aliasing prefilter when shrinking; only "area" averages every HR pixel.
# NEAREST_EXACT samples the centre of each block (PIL's behaviour); INTER_NEAREST would
# take its top-left pixel and shift a shrunk image by half a block.
RESAMPLERS = {
    "area": cv2.INTER_AREA,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "nearest": cv2.INTER_NEAREST_EXACT,
}


def resize(rgb: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """OpenCV resampling to ``size`` = (width, height)."""
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampling {method!r} (known: {', '.join(RESAMPLERS)})")
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb.copy()
    return cv2.resize(rgb, tuple(size), interpolation=RESAMPLERS[method])


def upscale(lr: np.ndarray, scale: int, method: str = "bicubic") -> np.ndarray:
    """Resample ``lr`` up by ``scale`` with an OpenCV method or ``matlab_bicubic``; ``gray`` is
    the luminance alone, bicubic-upscaled (a colorizer's baseline)."""
    if method == "gray":
        lr, method = to_grayscale(lr), "bicubic"
    size = (lr.shape[1] * scale, lr.shape[0] * scale)
    if method == "matlab_bicubic":
        return imresize_matlab(lr, size)
    return resize(lr, size, method)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """OpenCV bicubic (Keys a = -0.75, a little sharper than MATLAB's a = -0.5): the baseline
    every generator's gain is measured against."""
    return upscale(lr, scale, "bicubic")


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, the one MATLAB's ``imresize`` uses."""
    ax = np.abs(x)
    return np.where(
        ax <= 1,
        1.5 * ax**3 - 2.5 * ax**2 + 1,
        np.where(ax <= 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0),
    )


def _matlab_weights(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel, the input indices and weights of MATLAB's bicubic ``imresize`` along
    one axis; shrinking widens the kernel by the factor (antialiasing)."""
    scale = out_len / in_len
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based, as MATLAB
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None, :]
    dist = u[:, None] - idx
    w = scale * _keys_cubic(dist * scale) if scale < 1 else _keys_cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    # Outside the image, MATLAB mirrors it (symmetric padding, the edge pixel repeated).
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    return mirror[np.mod(idx - 1, 2 * in_len).astype(np.int64)], w


def imresize_matlab(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MATLAB ``imresize(img, [h w], 'bicubic')`` of an RGB uint8 image; ``size`` = (width, height).

    The SR benchmarks (Set5, Set14, ...) make their LR inputs this way; OpenCV's bicubic does
    not antialias when shrinking, so its LR images are sharper and aliased. As MATLAB, the axis
    with the smaller factor goes first (rows on a tie) and each pass is rounded to uint8.
    """
    h, w = rgb.shape[:2]
    out = rgb
    for _, axis, n in sorted([(size[1] / h, 0, size[1]), (size[0] / w, 1, size[0])]):
        if out.shape[axis] == n:
            continue
        idx, weights = _matlab_weights(out.shape[axis], n)
        moved = np.moveaxis(out, axis, 0).astype(np.float64)
        # one tap at a time: a gather of all taps at once would take ~18x the image in memory
        res = sum(weights[:, p, None, None] * moved[idx[:, p]] for p in range(idx.shape[1]))
        out = np.moveaxis(np.clip(np.rint(res), 0, 255).astype(np.uint8), 0, axis)
    return np.ascontiguousarray(out)


def benchmark_lr(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The SR benchmark protocol: crop HR to a multiple of ``scale`` (bottom/right), then make
    its LR by MATLAB-style bicubic downscaling. Returns (lr, cropped hr)."""
    h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
    hr = hr[:h, :w]
    return imresize_matlab(hr, (w // scale, h // scale)), hr

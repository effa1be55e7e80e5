"""Full-reference image quality: the super-resolution benchmark protocol plus weight-free metrics.

PSNR and SSIM follow the protocol of the SR literature (and of BasicSR / the MATLAB scripts):
the luma channel of ITU-R BT.601 as MATLAB ``rgb2ycbcr`` computes it, kept as floats in
[16, 235], after cropping ``border`` pixels (usually the scale factor) from every side, because
the outermost pixels depend on how each method pads. MS-SSIM, GMSD and HaarPSI come from piq and
need no learned weights. ST-LPIPS (pipelines/scoring/stlpips.py), a learned perceptual distance,
uses the trained networks that the stlpips-pytorch wheel ships, so it works offline. The
ImageNet VGG feature distance is reported only when real ImageNet VGG weights are on disk. Either
is left out without its weights: a distance between features of random weights measures nothing.

Every function takes RGB uint8 HxWx3 arrays of the same shape.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import piq
import torch

from pipelines.imaging.images import pixels_sha256
from pipelines.imaging.tensors import to_tensor
from pipelines.scoring import stlpips

log = logging.getLogger(__name__)

# Identical images have an infinite PSNR; JSON and DVC cannot show inf, so the value is capped.
# 100 dB is an MSE of 2.6e-6 grey levels squared, far above any real restoration.
PSNR_CAP = 100.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
HAARPSI_MIN_SIZE = 16  # piq's 3 Haar scales use a 16 px kernel
STLPIPS_NET = "vgg"  # of the two trained trunks the wheel ships, the larger (AlexNet: cheaper)

# Which way is better, for the metrics that selection and reports compare (the last two are
# evaluate's regional scores, pipelines/scoring/regions.py).
HIGHER_IS_BETTER = {
    "psnr_y": True,
    "ssim_y": True,
    "psnr": True,
    "ssim": True,
    "colorfulness_error": False,
    "ms_ssim": True,
    "gmsd": False,
    "haarpsi": True,
    "vgg_distance": False,
    "stlpips": False,
    "mask_psnr_y": True,
    "edge_chroma_rmse": False,
}


def beats(metric: str, score: float, other: float) -> bool:
    """Whether ``score`` is better than ``other`` by ``metric``: strictly, in its direction."""
    return score > other if HIGHER_IS_BETTER[metric] else score < other


# The metrics only a colorizer's scores have (score(task="colorize")).
COLOUR_METRICS = ("psnr", "ssim", "colorfulness_error")
# The metrics the GAN phase may pick its checkpoint by (train_gan.select_metric).
SELECTABLE = Literal[
    "haarpsi", "gmsd", "ms_ssim", "ssim_y", "psnr_y", "stlpips", "psnr", "colorfulness_error"
]


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB uint8 image as float64 in [16, 235] (MATLAB ``rgb2ycbcr``, unrounded)."""
    x = rgb.astype(np.float64)
    return 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0


def crop_border(img: np.ndarray, border: int) -> np.ndarray:
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border == 0:
        return img
    if img.shape[0] <= 2 * border or img.shape[1] <= 2 * border:
        raise ValueError(
            f"a {img.shape[1]}x{img.shape[0]} image has nothing left after a "
            f"{border} px border crop"
        )
    return img[border:-border, border:-border]


def _check_pair(sr: np.ndarray, hr: np.ndarray) -> None:
    if sr.shape != hr.shape:
        raise ValueError(f"restored {sr.shape} and reference {hr.shape} differ in shape")
    if sr.ndim != 3 or sr.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB images, got shape {sr.shape}")
    if sr.dtype != np.uint8 or hr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {sr.dtype} and {hr.dtype}")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(255.0**2 / mse))


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """Luma PSNR in dB (peak 255), capped at ``PSNR_CAP`` for identical images."""
    _check_pair(sr, hr)
    return _psnr(crop_border(rgb_to_y(sr), border), crop_border(rgb_to_y(hr), border))


def psnr_rgb(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """PSNR over the three RGB channels in dB (peak 255): what a colorizer is measured in,
    since its luma is the input's."""
    _check_pair(sr, hr)
    a, b = (crop_border(x, border).astype(np.float64) for x in (sr, hr))
    return _psnr(a, b)


def colorfulness(img: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness M (2003) of an RGB uint8 image: 0 for gray, about
    15-30 for "slightly colourful", above 100 for "extremely colourful" (0..255 units)."""
    x = img.astype(np.float64)
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


@functools.lru_cache(maxsize=1)
def _gaussian_window() -> np.ndarray:
    k = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA, ktype=cv2.CV_64F)
    return k @ k.T


def _ssim_gray(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of Wang et al. (2004): Gaussian-weighted local statistics, mean over the valid region."""
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {a.shape[1]}x{a.shape[0]}"
        )
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    w = _gaussian_window()

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, cv2.CV_64F, w, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    # Only windows lying fully inside the image count, so padding never enters the score.
    r = SSIM_WINDOW // 2
    return float(ssim_map[r:-r, r:-r].mean())


def ssim_y(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    _check_pair(sr, hr)
    return _ssim_gray(crop_border(rgb_to_y(sr), border), crop_border(rgb_to_y(hr), border))


def ssim_rgb(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    """The mean of the SSIM of the R, G and B channels."""
    _check_pair(sr, hr)
    a, b = (crop_border(x, border).astype(np.float64) for x in (sr, hr))
    return float(np.mean([_ssim_gray(a[..., c], b[..., c]) for c in range(3)]))


def fidelity(sr: np.ndarray, hr: np.ndarray, border: int, task: str = "restore") -> dict:
    """The quick scores of a validation pass: Y-PSNR and Y-SSIM, and for a colorizer RGB PSNR
    (pipelines/core/tasks.py: what each task's gains are measured in)."""
    out = {"psnr_y": psnr_y(sr, hr, border), "ssim_y": ssim_y(sr, hr, border)}
    if task == "colorize":
        out["psnr"] = psnr_rgb(sr, hr, border)
    return out


def ms_ssim_levels(height: int, width: int, kernel: int = SSIM_WINDOW) -> int:
    """How many MS-SSIM scales fit: the smallest scale must still hold one full window."""
    levels = len(MS_SSIM_WEIGHTS)
    while levels > 1 and (kernel - 1) * 2 ** (levels - 1) + 1 > min(height, width):
        levels -= 1
    return levels


@functools.lru_cache(maxsize=32)
def _log_reduced_levels(height: int, width: int, levels: int) -> None:
    log.info(
        "MS-SSIM on %dx%d px uses %d of %d scales (all %d need %d px); its values are not "
        "comparable with full-size images",
        width,
        height,
        levels,
        len(MS_SSIM_WEIGHTS),
        len(MS_SSIM_WEIGHTS),
        (SSIM_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1,
    )


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """MS-SSIM on RGB (mean over channels) of NCHW [0, 1] tensors.

    Images under 161 px use the first scales only (their weights renormalised, as piq does);
    below two scales (21 px) MS-SSIM is plain SSIM, so None is returned instead.
    """
    h, w = x.shape[-2:]
    levels = ms_ssim_levels(h, w)
    if levels < 2:
        return None
    weights = None  # piq's own (the paper's) weights for all five scales
    if levels < len(MS_SSIM_WEIGHTS):
        _log_reduced_levels(h, w, levels)
        weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=x.dtype)
    return float(
        piq.multi_scale_ssim(x, y, data_range=1.0, scale_weights=weights, k1=SSIM_K1, k2=SSIM_K2)
    )


# LPIPS taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) as indices into vgg16_bn().features
VGG_TAPS = (5, 12, 22, 32, 42)
VGG_MIN_SIZE = 16  # four max-pools before the last tap
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VggDistance(torch.nn.Module):
    """LPIPS without its learned channel weights (Zhang et al. 2018, the "lin=False" baseline):
    per tap, unit-normalise features along channels, sum squared differences over channels,
    average over space; sum over taps. 0 for identical images, lower is closer."""

    def __init__(self, features: torch.nn.Sequential, taps: tuple[int, ...] = VGG_TAPS):
        super().__init__()
        self.features = features[: max(taps) + 1].eval().requires_grad_(False)
        self.taps = set(taps)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        x = (x - self.mean) / self.std
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum(
            ((a - b) ** 2).sum(dim=1).mean(dim=(1, 2)) for a, b in zip(self._taps(x), self._taps(y))
        )


def vgg_weights_file() -> Path:
    """Where torchvision's ImageNet vgg16_bn weights live in the torch hub cache."""
    from pipelines.networks.pretrained import imagenet_file

    return imagenet_file("vgg16_bn")[1]


@functools.lru_cache(maxsize=1)
def _vgg_distance_model() -> VggDistance | None:
    path = vgg_weights_file()
    if not path.is_file():
        log.info(
            "no ImageNet VGG weights at %s: vgg_distance (ImageNet VGG features) is not reported",
            path,
        )
        return None
    from torchvision.models.vgg import cfgs, make_layers

    from pipelines.networks.pretrained import read_state_dict

    with torch.random.fork_rng(devices=[]):  # as stlpips.load: no draw from the global RNG
        features = make_layers(cfgs["D"], batch_norm=True)
    state = {
        k[len("features.") :]: v
        for k, v in read_state_dict(path).items()
        if k.startswith("features.")
    }
    features.load_state_dict(state)
    return VggDistance(features)


def perceptual_available() -> bool:
    """True when real ImageNet VGG weights are on disk, so ``score`` reports ``vgg_distance``."""
    return _vgg_distance_model() is not None


def stlpips_available() -> bool:
    """True when the ST-LPIPS weights are installed, so ``score`` reports ``stlpips``."""
    return stlpips.cached(STLPIPS_NET) is not None


def score(
    sr: np.ndarray, hr: np.ndarray, border: int = 0, task: str = "restore"
) -> dict[str, float]:
    """All full-reference metrics of one restored image against its reference.

    ``border`` pixels are cropped from every side first (the scale factor, by convention).
    Keys: psnr_y, ssim_y (higher better), ms_ssim (higher; absent under 21 px), gmsd (lower),
    haarpsi (higher; absent under 16 px), stlpips (lower; absent under 18 px or without the
    stlpips-pytorch weights), vgg_distance (lower; only with ImageNet VGG weights).
    MS-SSIM and HaarPSI see colour (RGB, YIQ); GMSD, like PSNR and SSIM, only luma. A
    colorizer's (``task`` colorize) also get psnr and ssim over RGB, its colorfulness and the
    truth's, and colorfulness_error, the distance between the two (lower better).
    """
    _check_pair(sr, hr)
    out = fidelity(sr, hr, border, task)
    restored, truth = crop_border(sr, border), crop_border(hr, border)
    if task == "colorize":
        out["ssim"] = ssim_rgb(sr, hr, border)
        out["colorfulness"] = colorfulness(restored)
        out["truth_colorfulness"] = colorfulness(truth)
        out["colorfulness_error"] = abs(out["colorfulness"] - out["truth_colorfulness"])
    x = to_tensor(restored)[None]
    y = to_tensor(truth)[None]
    with torch.inference_mode():
        value = ms_ssim(x, y)
        if value is not None:
            out["ms_ssim"] = value
        out["gmsd"] = float(piq.gmsd(x, y, data_range=1.0))
        if min(x.shape[-2:]) >= HAARPSI_MIN_SIZE:
            out["haarpsi"] = float(piq.haarpsi(x, y, data_range=1.0))
        st = stlpips.cached(STLPIPS_NET)
        if st is not None and min(x.shape[-2:]) >= st.min_size:
            out["stlpips"] = float(st.distance_to(x, y, pixels_sha256(truth))[0])
        distance = _vgg_distance_model()
        if distance is not None and min(x.shape[-2:]) >= VGG_MIN_SIZE:
            out["vgg_distance"] = float(distance(x, y))
    return out

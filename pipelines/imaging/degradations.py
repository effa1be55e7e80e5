"""Degradations that turn a clean high-res (HR) image into a "crappy" low-res (LR) one.

A flat library of pure functions on HxWx3 RGB uint8 arrays (OpenCV underneath), plus
``crappify()``, the composition that both the crappify stage (once per HR file) and the
training data loader (fresh draws for every HR crop) call. Every random choice comes from the
``np.random.Generator`` passed in, and ``rng_for(seed, key)`` makes that generator from the
seed and a name (the image's relative path, or ``"{epoch}/{index}"``) alone, so the result
depends on neither the number of worker processes nor the order they run in.

The order inside ``crappify()`` follows the fastai recipe and real capture pipelines:
grayscale first (a colour cast must not survive into a colorization input), then downscale
(the camera/resizer), then blur and sensor-like noise at LR resolution (noise drawn at HR and
then averaged away by the downscale would be far weaker than its sigma says), then the
watermark, then JPEG last, so the text is compressed with the picture as in the original and
the model sees the ringing around letters it has to remove.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import cv2
import numpy as np

from pipelines.core.config import BaseConfig, ConfigError, bounded
from pipelines.core.runtime import hash_seed
from pipelines.imaging.images import encode_jpeg, to_grayscale
from pipelines.imaging.resize import RESAMPLERS, Resample

FONT = cv2.FONT_HERSHEY_SIMPLEX
COLORS = ("white", "random")


class Frame(NamedTuple):
    """Where an image lies in the whole image it was cut from (px): a training crop is
    watermarked as its part of the whole image would be."""

    x: int
    y: int
    width: int
    height: int


def _check_rgb(img: np.ndarray) -> None:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")


def downscale(img: np.ndarray, scale: int, method: Resample = "area") -> np.ndarray:
    """Shrink by an integer ``scale`` to exactly (W // scale, H // scale).

    The HR region matching the result is the top-left (W // scale * scale, H // scale * scale)
    pixels: the remainder rows and columns are cropped before resizing, so every LR pixel
    covers exactly ``scale`` x ``scale`` HR pixels instead of a slightly stretched area.
    """
    _check_rgb(img)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = img.shape[:2]
    lw, lh = w // scale, h // scale
    if lw == 0 or lh == 0:
        raise ValueError(f"a {w}x{h} image is smaller than the scale {scale}")
    cropped = img[: lh * scale, : lw * scale]
    if scale == 1:
        return cropped.copy()
    return cv2.resize(cropped, (lw, lh), interpolation=RESAMPLERS[method])


def resize_short_side(img: np.ndarray, side: int, method: Resample = "area") -> np.ndarray:
    """Resize so the shorter side is ``side`` px, aspect kept (the original recipe: 96 px).

    The long side is truncated, as fastai's ``resize_to`` does, so the HR/LR size ratio is
    not an integer in general.
    """
    _check_rgb(img)
    if side < 1:
        raise ValueError(f"side must be >= 1, got {side}")
    h, w = img.shape[:2]
    ratio = side / min(w, h)
    size = (max(1, int(w * ratio)), max(1, int(h * ratio)))
    if size == (w, h):
        return img.copy()
    return cv2.resize(img, size, interpolation=RESAMPLERS[method])


def jpeg(img: np.ndarray, quality: int) -> tuple[np.ndarray, bytes]:
    """Encode as baseline JPEG with libjpeg's default 4:2:0 chroma subsampling and decode back.

    Returns (the decoded RGB image, the encoded bytes): the decoded array is exactly what a
    reader of the written file gets through OpenCV, so training on it matches the stage output.
    """
    data = encode_jpeg(img, quality)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), data


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; the kernel size follows from ``sigma`` (OpenCV picks about 6 sigma)."""
    _check_rgb(img)
    if sigma <= 0:
        return img.copy()
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add independent per-channel Gaussian noise, ``sigma`` in 0..255 units, then clip."""
    _check_rgb(img)
    if sigma <= 0:
        return img.copy()
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)


def _fit_text(
    text: str, height_px: float, max_w: int, max_h: int
) -> tuple[float, int, int, int, int, int]:
    """Font scale, thickness, padding and box size for ``text`` about ``height_px`` tall,
    shrunk until the padded box fits in max_w x max_h."""
    thickness = max(1, round(height_px / 12))
    scale = cv2.getFontScaleFromHeight(FONT, max(1, round(height_px)), thickness)
    for _ in range(4):
        (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
        # anti-aliased strokes reach about one thickness beyond the nominal box
        pad = thickness + 1
        bw, bh = tw + 2 * pad, th + base + 2 * pad
        if bw <= max_w and bh <= max_h:
            break
        shrink = min((max_w - 2 * pad) / max(tw, 1), (max_h - 2 * pad) / max(th + base, 1))
        scale *= max(shrink, 0.05) * 0.98
    return scale, thickness, pad, th, min(bw, max_w), min(bh, max_h)


def watermark(
    img: np.ndarray,
    text: str,
    rng: np.random.Generator,
    *,
    height: tuple[float, float] = (0.08, 0.16),
    opacity: tuple[float, float] = (1.0, 1.0),
    color: Literal["white", "random"] = "white",
    frame: Frame | None = None,
) -> tuple[np.ndarray, dict]:
    """``watermark_with_mask`` without the mask: (the new image, the record)."""
    out, record, _ = watermark_with_mask(
        img, text, rng, height=height, opacity=opacity, color=color, frame=frame
    )
    return out, record


def watermark_with_mask(
    img: np.ndarray,
    text: str,
    rng: np.random.Generator,
    *,
    height: tuple[float, float] = (0.08, 0.16),
    opacity: tuple[float, float] = (1.0, 1.0),
    color: Literal["white", "random"] = "white",
    frame: Frame | None = None,
) -> tuple[np.ndarray, dict, np.ndarray]:
    """Alpha-blend ``text`` in an OpenCV Hershey font at a random place, size, colour, opacity.

    As in the original, the text box's top-left corner is uniform in the image's top-left
    quadrant; unlike it, the box is kept inside the image (shrinking the text on tiny images),
    so the record says exactly which pixels may have changed: the box (x, y, width, height).
    ``height`` is the text height as a fraction of the image's shorter side (fastai's default
    bitmap font on a 96 px image is about 0.11).
    ``frame`` places ``img`` inside a larger whole image: the box is sized and placed on the
    whole image and only its part inside ``img`` is drawn, so training crops see watermarks as
    often, as large and as cut as their regions of whole images do (text sized to each crop
    would cover most of every one). The record keeps the whole image's box.
    Returns (the new image, the record, the mask): the mask is an HxW uint8 image of the
    text's anti-aliased coverage (0-255, before opacity), 0 wherever nothing was drawn, so an
    evaluation can score a restoration inside the text. An empty ``text`` draws nothing.
    """
    _check_rgb(img)
    h, w = img.shape[:2]
    # drawn even when unused, so the stream position after this call never depends on the text
    frac = rng.uniform(height[0], height[1])
    alpha = float(rng.uniform(opacity[0], opacity[1]))
    rgb = rng.integers(0, 256, size=3) if color == "random" else np.array([255, 255, 255])
    fx, fy = rng.random(2)
    record = {
        "text": text,
        "x": 0,
        "y": 0,
        "box_w": 0,
        "box_h": 0,
        "font_scale": 0.0,
        "thickness": 0,
        "color": [int(c) for c in rgb],
        "opacity": round(alpha, 4),
    }
    full = np.zeros((h, w), np.uint8)
    if not text:
        return img.copy(), record, full
    fx0, fy0, fw, fh = frame or Frame(0, 0, w, h)
    scale, thickness, pad, th, bw, bh = _fit_text(text, frac * min(fw, fh), fw, fh)
    # the corner is uniform over the top-left quadrant, clamped so the box stays inside
    x = min(int(fx * (fw // 2 + 1)), fw - bw)
    y = min(int(fy * (fh // 2 + 1)), fh - bh)
    mask = np.zeros((bh, bw), np.uint8)
    cv2.putText(mask, text, (pad, pad + th), FONT, scale, 255, thickness, cv2.LINE_AA)
    record.update(
        x=int(x),
        y=int(y),
        box_w=int(bw),
        box_h=int(bh),
        font_scale=round(float(scale), 4),
        thickness=int(thickness),
    )
    # the part of the box inside img, in img's pixels
    bx, by = x - fx0, y - fy0
    x0, y0, x1, y1 = max(bx, 0), max(by, 0), min(bx + bw, w), min(by + bh, h)
    out = img.copy()
    if x0 >= x1 or y0 >= y1:
        return out, record, full
    mask = mask[y0 - by : y1 - by, x0 - bx : x1 - bx]
    region = out[y0:y1, x0:x1].astype(np.float32)
    a = mask.astype(np.float32)[..., None] * np.float32(alpha / 255.0)
    region += a * (rgb.astype(np.float32) - region)
    out[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    full[y0:y1, x0:x1] = mask
    return out, record, full


@dataclass(frozen=True, kw_only=True)
class Degradation:
    """What ``crappify()`` does to an HR image; the defaults are the fastai recipe at x4.

    The crappify stage's config is this class (plus workers and ``base``), so the training code
    can pass the loaded stage config as the spec and draw the very same degradations.
    """

    # LR = HR / scale ("scale"), or the recipe's fixed shorter side ("short_side")
    scale: int = bounded(4, lo=1, hi=8)
    size_mode: Literal["scale", "short_side"] = "scale"
    short_side: int = bounded(96, lo=8)
    # "area" is OpenCV's only anti-aliased shrink, closest to PIL's bilinear of the recipe
    resample: Resample = "area"
    # uniform integer in [lo, hi], both included
    jpeg_quality: tuple[int, int] = bounded((10, 70), lo=1, hi=100)
    # "quality": the JPEG quality number as text (the recipe); "fixed": watermark_text; "none"
    watermark: Literal["quality", "fixed", "none"] = "quality"
    watermark_text: str = ""
    watermark_height: tuple[float, float] = bounded((0.08, 0.16), lo=0.0, hi=1.0, lo_open=True)
    watermark_opacity: tuple[float, float] = bounded((1.0, 1.0), lo=0.0, hi=1.0)
    watermark_color: Literal["white", "random"] = "white"
    blur_prob: float = bounded(0.0, lo=0.0, hi=1.0)
    blur_sigma: tuple[float, float] = bounded((0.5, 1.5), lo=0.0, hi=10.0, lo_open=True)
    noise_prob: float = bounded(0.0, lo=0.0, hi=1.0)
    noise_sigma: tuple[float, float] = bounded((2.0, 10.0), lo=0.0, hi=100.0, lo_open=True)
    grayscale: bool = False

    def check(self) -> None:
        for key in (
            "jpeg_quality",
            "watermark_height",
            "watermark_opacity",
            "blur_sigma",
            "noise_sigma",
        ):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ConfigError(f"{key}: {[lo, hi]!r} has lo > hi")
        if self.watermark == "fixed":
            if not self.watermark_text:
                raise ConfigError("watermark_text: '' must be set when watermark is 'fixed'")
            # Hershey fonts only draw printable ASCII; anything else would come out as '?'
            if not all(32 <= ord(c) < 127 for c in self.watermark_text):
                raise ConfigError(f"watermark_text: {self.watermark_text!r} is not printable ASCII")


@dataclass(frozen=True, kw_only=True)
class CrappifyConfig(Degradation):
    """The ``crappify`` params section: the degradation (see ``Degradation``) and how to run it.

    Being a ``Degradation`` itself, a loaded config is the spec that ``crappify()`` takes.
    """

    # the section has no scale key: it is base.scale, shared with the training stages
    scale: int = field(default=4, init=False)
    workers: int = bounded(0, lo=0)  # processes; 0 = every core available
    examples: int = bounded(6, lo=0, hi=64)  # HR/LR pairs in the image logged to MLflow
    base: BaseConfig = field(default_factory=BaseConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", self.base.scale)
        # a colorizer learns from gray inputs, whatever the key says
        if self.base.task == "colorize":
            object.__setattr__(self, "grayscale", True)


def rng_for(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on (seed, key), not on the process or call order."""
    return np.random.default_rng(hash_seed(seed, key))


def crappify(
    hr: np.ndarray, spec: Degradation, rng: np.random.Generator, frame: Frame | None = None
) -> tuple[np.ndarray, bytes, dict]:
    """Degrade one HR image: (LR as decoded RGB uint8, its JPEG bytes, the record of draws).
    ``frame``: the LR crop's place in the whole LR image (see ``watermark_with_mask``)."""
    lr, data, record, _ = crappify_with_mask(hr, spec, rng, frame)
    return lr, data, record


def crappify_with_mask(
    hr: np.ndarray, spec: Degradation, rng: np.random.Generator, frame: Frame | None = None
) -> tuple[np.ndarray, bytes, dict, np.ndarray]:
    """``crappify`` plus the watermark's mask at LR size (see ``watermark_with_mask``).

    The LR array is the decoded JPEG, bit for bit what a reader of the written bytes gets.
    Every random number is drawn in a fixed order whatever options are on, so switching blur
    on, say, does not change the quality or watermark drawn for the same (seed, key).
    """
    lo, hi = spec.jpeg_quality
    quality = int(rng.integers(lo, hi, endpoint=True))
    blur_on = rng.random() < spec.blur_prob
    blur_sigma = float(rng.uniform(*spec.blur_sigma))
    noise_on = rng.random() < spec.noise_prob
    noise_sigma = float(rng.uniform(*spec.noise_sigma))
    noise_rng, mark_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=2))

    img = to_grayscale(hr) if spec.grayscale else hr
    if spec.size_mode == "scale":
        img = downscale(img, spec.scale, spec.resample)
    else:
        img = resize_short_side(img, spec.short_side, spec.resample)
    if blur_on:
        img = gaussian_blur(img, blur_sigma)
    if noise_on:
        img = gaussian_noise(img, noise_sigma, noise_rng)
    text = {"quality": str(quality), "fixed": spec.watermark_text, "none": ""}[spec.watermark]
    img, mark, mask = watermark_with_mask(
        img,
        text,
        mark_rng,
        height=spec.watermark_height,
        opacity=spec.watermark_opacity,
        color=spec.watermark_color,
        frame=frame,
    )
    lr, data = jpeg(img, quality)
    record = {
        "quality": quality,
        **mark,
        "blur_sigma": round(blur_sigma, 4) if blur_on else 0.0,
        "noise_sigma": round(noise_sigma, 4) if noise_on else 0.0,
        "grayscale": spec.grayscale,
        "lr_width": int(lr.shape[1]),
        "lr_height": int(lr.shape[0]),
    }
    return lr, data, record, mask


def make_degrader(spec: Degradation, with_mask: bool = False) -> Callable:
    """``crappify`` bound to ``spec``: a data loader's degrade(hr, rng, frame), returning the LR
    image, or with ``with_mask`` (LR image, the watermark's LR mask).

    A ``functools.partial`` of a module function, so it pickles into DataLoader workers.
    """
    return functools.partial(_lr_and_mask if with_mask else _lr_only, spec)


def _lr_only(
    spec: Degradation, hr: np.ndarray, rng: np.random.Generator, frame: Frame | None = None
) -> np.ndarray:
    return crappify(hr, spec, rng, frame)[0]


def _lr_and_mask(
    spec: Degradation, hr: np.ndarray, rng: np.random.Generator, frame: Frame | None = None
) -> tuple[np.ndarray, np.ndarray]:
    lr, _, _, mask = crappify_with_mask(hr, spec, rng, frame)
    return lr, mask

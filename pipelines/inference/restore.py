"""Restore images of any size with a generator, and the resampling baselines it must beat.

Large images go through the network in overlapping LR tiles. Each tile's HR output is weighted
by a window that is zero in a margin next to every edge shared with a neighbouring tile (where
the network saw padding instead of the true neighbourhood), then ramps linearly to one; the
weighted sum is divided by the summed weights. With a network whose receptive radius fits in
that margin (a quarter of the overlap, in LR px) the tiled result equals a single pass; with a
larger one the ramps hide the seams.

The network is either a PyTorch module or any callable on one numpy tile (RGB uint8 LR in,
float32 RGB HR in [0, 1] out), such as an ONNX Runtime session: the tiling and blending are
numpy, so an ONNX model runs without torch in the loop.

With ``self_ensemble`` each tile goes through the network eight times, once per flip and
quarter turn of the square's symmetry group, and the outputs, turned back, are averaged (the
"+" results of EDSR and RCAN). A network is not exactly equivariant to those symmetries, so
the average removes part of its error, at eight times the cost; the average itself is
equivariant to them.

The tiles are processed one row of tiles at a time into a float32 band as wide as the HR image
and one tile high; rows no later tile reaches are normalised into the uint8 result at once. A
window is the product of a row ramp and a column ramp, so the summed weights are the outer
product of two 1-D sums and need no HR-sized map. Memory is one tile on the device plus the
uint8 result and one band on the host: a 4000x3000 photo at x4 needs about 0.6 GB for its
16000x12000 result and 0.2 GB of band, where a float32 accumulator would take 2.3 GB.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from pipelines.core.runtime import autocast
from pipelines.core.tasks import model_task, require_task
from pipelines.imaging.tensors import to_image, to_tensor
from pipelines.networks import colour
from pipelines.training import checkpoint

# one LR tile (RGB uint8, HxWx3) -> its HR output (RGB float32 in [0, 1], (sH)x(sW)x3)
TileRunner = Callable[[np.ndarray], np.ndarray]
Network = nn.Module | TileRunner


def load_generator(
    path: Path | str,
    device: torch.device | str = "cpu",
    builder: Callable[..., nn.Module] | None = None,
    task: str | None = None,
) -> nn.Module:
    """The generator saved at ``path`` (checkpoint format, kind "generator"), in eval mode.

    ``builder`` rebuilds the network from the saved ``arch`` keywords; by default
    ``pipelines.networks.build_generator``. Given a ``task``, a model of the other one is
    refused (``TaskMismatch``, naming both).
    """
    data = checkpoint.load(path, kind="generator")
    if task is not None:
        require_task(data["arch"], path, task)
    if builder is None:
        from pipelines.networks import build_generator as builder
    model = builder(**data["arch"])
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as exc:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not fit the saved architecture {data['arch']}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return model.to(device).eval()


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest ``tile`` px tiles covering ``length`` px with neighbours
    sharing at least ``overlap`` px, evenly spread so the first and last sit flush with the ends."""
    if length <= tile:
        return [0]
    n = -(-(length - overlap) // (tile - overlap))
    return [round(k * (length - tile) / (n - 1)) for k in range(n)]


def edge_ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D blending weights of a tile: zero over the first quarter of ``overlap`` from a shared
    edge, then a linear rise to one by three quarters, one elsewhere.

    Between two neighbours sharing at least ``overlap`` px, any pixel in one tile's zero margin
    is past the other's ramp, so every pixel keeps a positive total weight.
    """
    w = np.ones(length, dtype=np.float32)
    if overlap <= 0:
        return w
    margin = overlap // 4
    rise = max(1, overlap - 2 * margin)
    d = np.arange(length, dtype=np.float32)
    ramp = np.clip((d - margin + 1) / (rise + 1), 0.0, 1.0)
    if ramp_start:
        w = np.minimum(w, ramp)
    if ramp_end:
        w = np.minimum(w, ramp[::-1])
    return w


def _check_restore_args(lr: np.ndarray, tile: int, overlap: int) -> None:
    if lr.ndim != 3 or lr.shape[2] != 3 or lr.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {lr.dtype} {lr.shape}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1 px, got {tile}")
    # Up to half a tile, evenly spread tiles keep every pixel inside some tile's non-zero window.
    if not 0 <= 2 * overlap <= tile:
        raise ValueError(f"overlap must be in [0, tile / 2], got {overlap} with tile {tile}")


def _run(
    model: nn.Module, lr_tile: np.ndarray, device: torch.device, dtype: torch.dtype | None
) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(lr_tile)).permute(2, 0, 1)[None]
    x = x.to(device=device, dtype=torch.float32).div_(255.0)
    with torch.inference_mode(), autocast(device, dtype):
        y = model(x)[0].float().clamp_(0.0, 1.0)
    return y.permute(1, 2, 0).cpu().numpy()


def _scale_of(out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> int:
    scale, rem = divmod(out_shape[0], in_shape[0])
    if rem or scale < 1 or out_shape[1] != in_shape[1] * scale:
        raise ValueError(
            f"the generator maps {in_shape[1]}x{in_shape[0]} px to "
            f"{out_shape[1]}x{out_shape[0]} px, not an integer upscaling"
        )
    return scale


def to_uint8(rgb01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb01 * 255.0), 0, 255).astype(np.uint8)


def tile_runner(
    model: Network, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> TileRunner:
    """``model`` as a function of one numpy tile: a module runs on ``device`` under autocast
    ``dtype``; anything else is taken to be a tile runner already."""
    if isinstance(model, nn.Module):
        return partial(_run, model, device=torch.device(device), dtype=dtype)
    return model


def _turned(img: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the square's 8 symmetries (k < 4: k quarter turns; k >= 4: those of the
    mirror image) applied to an HxWxC image."""
    return np.rot90(img[:, ::-1] if k >= 4 else img, k % 4)


def _turned_back(img: np.ndarray, k: int) -> np.ndarray:
    """The inverse of ``_turned(., k)``."""
    back = np.rot90(img, -(k % 4))
    return back[:, ::-1] if k >= 4 else back


def self_ensemble_runner(run: TileRunner) -> TileRunner:
    """``run`` averaged over the 8 flips and quarter turns of its tile (module docstring)."""

    def ensemble(lr_tile: np.ndarray) -> np.ndarray:
        total = None
        for k in range(8):
            turned = np.ascontiguousarray(_turned(lr_tile, k))
            out = run(turned)
            _scale_of(out.shape, turned.shape)  # a clear error before the shapes disagree
            out = _turned_back(out, k)
            total = out.astype(np.float32) if total is None else total + out
        return total / 8.0

    return ensemble


def restore(
    model: Network,
    lr: np.ndarray,
    tile: int = 256,
    overlap: int = 32,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    self_ensemble: bool = False,
) -> np.ndarray:
    """Restore the RGB uint8 image ``lr`` with ``model``; returns its RGB uint8 HR output.

    ``model``: a PyTorch module, or a ``TileRunner`` (``device`` and ``dtype`` then unused).
    ``tile`` and ``overlap`` are in LR px; an image within one tile is one tile. The scale
    is read off the network's output. ``dtype`` is an autocast dtype (None = fp32).
    ``self_ensemble``: every tile averaged over its 8 flips and turns, 8 passes per tile
    (module docstring).
    """
    _check_restore_args(lr, tile, overlap)
    run = tile_runner(model, device, dtype)
    if self_ensemble:
        run = self_ensemble_runner(run)
    h, w = lr.shape[:2]
    if h <= tile and w <= tile:
        out = run(lr)
        _scale_of(out.shape, lr.shape)
        return to_uint8(out)

    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    hr = band = None
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            out = run(lr[y0 : y0 + th, x0 : x0 + tw])
            if hr is None:
                scale = _scale_of(out.shape, (th, tw))
                row_w = [
                    edge_ramp(th * scale, overlap * scale, k > 0, k < len(ys) - 1)
                    for k in range(len(ys))
                ]
                col_w = [
                    edge_ramp(tw * scale, overlap * scale, k > 0, k < len(xs) - 1)
                    for k in range(len(xs))
                ]
                row_sum = _summed(row_w, ys, th, h, scale)
                col_sum = _summed(col_w, xs, tw, w, scale)
                hr = np.empty((h * scale, w * scale, 3), dtype=np.uint8)
                band = np.zeros((th * scale, w * scale, 3), dtype=np.float32)
            elif out.shape[:2] != (th * scale, tw * scale):
                raise ValueError(f"the generator's output size changed between tiles: {out.shape}")
            window = row_w[i][:, None] * col_w[j][None, :]
            band[:, x0 * scale : (x0 + tw) * scale] += out * window[..., None]
        top = y0 * scale
        # Later tile rows start at or below the next one's top: the rows above it are final.
        bottom = ys[i + 1] * scale if i + 1 < len(ys) else h * scale
        done = band[: bottom - top]
        np.divide(done, (row_sum[top:bottom, None] * col_sum[None, :])[..., None], out=done)
        _to_uint8_into(done, hr[top:bottom])
        # The unfinished rows move to the top of the band, which becomes the next row's band.
        rest = band.shape[0] - (bottom - top)
        band[:rest] = band[bottom - top :]
        band[rest:] = 0.0
    return hr


def _summed(
    ramps: list[np.ndarray], starts: list[int], size: int, length: int, scale: int
) -> np.ndarray:
    """Sum of the 1-D tile ramps along one HR axis; positive everywhere, or tiling is broken."""
    total = np.zeros(length * scale, dtype=np.float32)
    for ramp, s in zip(ramps, starts):
        total[s * scale : (s + size) * scale] += ramp
    if not (total > 0).all():
        raise RuntimeError("tile windows left pixels without weight")
    return total


def _to_uint8_into(rgb01: np.ndarray, out: np.ndarray) -> None:
    """``to_uint8`` in place: ``rgb01`` is scratch, so a band needs no temporary copies."""
    np.multiply(rgb01, 255.0, out=rgb01)
    np.rint(rgb01, out=rgb01)
    np.clip(rgb01, 0.0, 255.0, out=rgb01)
    out[...] = rgb01


def network_task(model: Network) -> str:
    """The task of a loaded network: a module's ``arch``, an ONNX runner's metadata."""
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict) and "task" in meta:
        return str(meta["task"])
    return model_task(getattr(model, "arch", {}) or {})


def colorize_at(
    model: Network,
    rgb: np.ndarray,
    render_size: int,
    tile: int = 256,
    overlap: int = 32,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    self_ensemble: bool = False,
) -> np.ndarray:
    """Colorize ``rgb`` with a scale-1 colorizer run at ``render_size`` px (longest side): the
    chroma computed there is enlarged and put on the full-resolution luminance (DeOldify's
    ``render_factor``). Colour varies slowly, so a large photo costs a small one's time.
    ``self_ensemble`` as ``restore``'s, at the render size."""
    h, w = rgb.shape[:2]
    ratio = render_size / max(h, w)
    if ratio >= 1:
        return restore(model, rgb, tile, overlap, device, dtype, self_ensemble)
    small = cv2.resize(
        rgb, (max(1, round(w * ratio)), max(1, round(h * ratio))), interpolation=cv2.INTER_AREA
    )
    out = restore(model, small, tile, overlap, device, dtype, self_ensemble)
    if out.shape != small.shape:
        raise ValueError(f"render_size needs a scale-1 colorizer; this one outputs {out.shape}")
    t_out = to_tensor(out)[None]
    chroma = t_out - colour.luma(t_out)
    chroma = torch.nn.functional.interpolate(chroma, size=(h, w), mode="bilinear")
    y = colour.luma(to_tensor(rgb)[None])
    return to_image(colour.with_luminance(y + chroma, y)[0])

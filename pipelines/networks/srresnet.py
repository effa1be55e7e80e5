"""A residual generator working at the input resolution (EDSR / SRResNet style).

The SRGAN and EDSR networks: a head convolution, ``blocks`` residual blocks (conv, ReLU, conv,
plus the skip; no normalisation layers, which cost detail and speed at small batches), a conv
and a long skip over the whole body, then the upsampler (``UPSAMPLERS``): ``log2(scale)`` times
(conv to 4x channels, PixelShuffle 2, ReLU) and a conv to RGB ("staged"), or one conv to
3 * scale**2 channels and a single PixelShuffle ("direct"). The body runs at the input size, so
at x4 it costs 1/16 of a network of the same width run at the output size.

The contract is the U-Net generator's: RGB in [0, 1] at the input size in, RGB in [0, 1] at
``scale`` times that size out, any input of at least 1 px. The output is a residual added to the
bicubic upscale of the input, so the untrained network (last conv zero) returns bicubic. It is
clamped to [0, 1] with a straight-through gradient: the value never leaves the range, and a
pixel that overshoots still gets the gradient that pulls it back (a plain clamp would stop it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.tasks import check_task
from pipelines.networks.colour import check_chroma, colorized, gray, restored
from pipelines.networks.unet import upsample

SCALES = (1, 2, 4, 8)
KIND = "srresnet"
# staged: (conv to 4x channels, PixelShuffle 2, ReLU) per factor 2, then a conv to RGB at the
# output size (SRResNet, EDSR); direct: one conv at the input size to 3 * scale**2 channels
# and a single PixelShuffle (ESPCN, Real-ESRGAN's compact net). At x4 the staged convs cost
# about 20 body convs, most of them at twice the input size; direct costs one.
UPSAMPLERS = ("staged", "direct")
# the body's cell: 1 = every input pixel; 2 or 4 = cells of that many px a side, unshuffled into
# channels (Real-ESRGAN's x2 and x1 models), with the direct upsampler shuffling scale * cell
UNSHUFFLES = (1, 2, 4)


class ResidualBlock(nn.Module):
    """conv, ReLU, conv, plus the input (EDSR's block, without its residual scaling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class SRResNetGenerator(nn.Module):
    """See the module docstring. Arguments as ``build_srresnet``."""

    def __init__(
        self,
        scale: int = 4,
        channels: int = 64,
        blocks: int = 16,
        kind: str = KIND,
        task: str = "restore",
        colour_stride: int = 1,
        chroma: str = "network",
        upsampler: str = "staged",
        unshuffle: int = 1,
    ):
        super().__init__()
        check_task(task)
        check_chroma(chroma, task)
        if colour_stride < 1 or (colour_stride > 1 and (task != "colorize" or scale != 1)):
            raise ValueError(
                f"colour_stride: {colour_stride} (above 1 only for a colorizer at scale 1)"
            )
        if kind != KIND:
            raise ValueError(f"kind: {kind!r} is not {KIND!r}")
        if scale not in SCALES:
            raise ValueError(f"scale: {scale!r} is not one of {', '.join(map(str, SCALES))}")
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler: {upsampler!r} is not one of {', '.join(UPSAMPLERS)}")
        if unshuffle not in UNSHUFFLES or (
            unshuffle > 1 and (upsampler != "direct" or task != "restore")
        ):
            raise ValueError(
                f"unshuffle: {unshuffle} (1, or {', '.join(map(str, UNSHUFFLES[1:]))} for a "
                "restorer with the direct upsampler)"
            )
        if channels < 4:
            raise ValueError(f"channels: {channels} is below 4")
        if blocks < 0:
            raise ValueError(f"blocks: {blocks} is negative")
        self.scale = scale
        self.task = task
        self.arch = {"kind": KIND, "scale": scale, "channels": channels, "blocks": blocks}
        self.colour_stride = colour_stride
        if task != "restore":  # restoring model files keep the arch they always had
            self.arch.update(task=task, colour_stride=colour_stride)
        self.chroma = chroma
        if chroma != "network":
            self.arch["chroma"] = chroma
        if upsampler != "staged":  # files of staged models keep the arch they always had
            self.arch["upsampler"] = upsampler
        self.unshuffle = unshuffle
        if unshuffle > 1:
            self.arch["unshuffle"] = unshuffle
        self.head = nn.Conv2d(3 * unshuffle * unshuffle, channels, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))
        self.body_end = nn.Conv2d(channels, channels, 3, padding=1)
        up: list[nn.Module] = []
        if upsampler == "staged":
            for _ in range(int(math.log2(scale))):
                up += [
                    nn.Conv2d(channels, 4 * channels, 3, padding=1),
                    nn.PixelShuffle(2),
                    nn.ReLU(),
                ]
        self.up = nn.Sequential(*up)
        # output pixels per to_rgb pixel: the direct upsampler's shuffle spreads them
        factor = 1 if upsampler == "staged" else scale * unshuffle
        self.to_rgb = nn.Conv2d(channels, 3 * factor * factor, 3, padding=1)
        self.shuffle = nn.PixelShuffle(factor) if factor > 1 else nn.Identity()
        nn.init.zeros_(self.to_rgb.weight)
        nn.init.zeros_(self.to_rgb.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "colorize":
            x = gray(x)
            if self.colour_stride > 1:
                return self._colour_at_stride(x)
        base = upsample(x, self.scale)
        y = base + self._residual(x)
        if self.task == "colorize":
            y = colorized(y, x, self.scale)
        else:
            y = restored(y, x, base, self.chroma)
        # straight-through clamp: the value is clamped, the gradient is the identity's
        return y + (y.clamp(0.0, 1.0) - y).detach()

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        """The output-size residual over the bicubic upscale of ``x``."""
        # with unshuffle, the body runs on u x u cells of the input, their pixels as channels
        # (lossless): 1/u**2 of the positions, a receptive field u times wider. A partial last
        # cell is filled by repeating the edge, and its extra output cut off.
        u, (h, w) = self.unshuffle, x.shape[-2:]
        if u > 1:
            x = F.pad(x, (0, -w % u, 0, -h % u), mode="replicate")
        r = self.shuffle(self.to_rgb(self.up(self._features(x))))
        return r if u == 1 else r[..., : h * self.scale, : w * self.scale]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Head, residual body and long skip at the size of ``x`` (of its cells, unshuffled)."""
        # centred inputs: the convs see values around zero without a normalisation layer
        x = x - 0.5
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        h = self.head(x)
        return h + self.body_end(self.body(h))

    def _colour_at_stride(self, x: torch.Tensor) -> torch.Tensor:
        """Colour varies slowly: the body runs at 1/colour_stride of the size (a receptive field
        that many times wider for the same cost), and the chroma it predicts is enlarged
        (bilinear) onto the input's own luminance."""
        h = self._features(F.avg_pool2d(x, self.colour_stride, ceil_mode=True))
        offsets = F.interpolate(self.to_rgb(h), size=x.shape[-2:], mode="bilinear")
        return colorized(x + offsets, x, 1)


def build_srresnet(
    scale: int = 4,
    channels: int = 64,
    blocks: int = 16,
    kind: str = KIND,
    task: str = "restore",
    colour_stride: int = 1,
    chroma: str = "network",
    upsampler: str = "staged",
    unshuffle: int = 1,
) -> SRResNetGenerator:
    """The residual generator at the input resolution.

    scale: output size / input size, 1, 2, 4 or 8.
    channels: width of every layer below the output conv (64: EDSR-baseline, ~1.5M parameters
    at 16 blocks and x4).
    blocks: residual blocks in the body.
    task: restore, or colorize: the network sees the input's luminance and predicts colour
    (pipelines/networks/colour.py).
    colour_stride: a colorizer at scale 1 predicts its chroma at 1/colour_stride of the size.
    chroma: a restorer's output chroma, "network" or "input" (``colour.restored``).
    upsampler: "staged" or "direct" (``UPSAMPLERS``).
    unshuffle: the body's cell, 1, 2 or 4 px a side (``UNSHUFFLES``; above 1 for a restorer
    with the direct upsampler).

    ``model.arch`` holds these arguments, ``kind="srresnet"`` included, for
    ``build_generator(**arch)``.
    """
    return SRResNetGenerator(
        scale, channels, blocks, kind, task, colour_stride, chroma, upsampler, unshuffle
    )

"""Luminance and chroma of NCHW RGB tensors in [0, 1], for the generators' outputs.

A colorizer sees only the luminance of its input, and its output keeps that luminance exactly
(at scale 1) and takes only the chroma from the network, as DeOldify does: a colorized photo
never loses or invents detail. The luma is BT.601's weighted sum, whose weights add up to 1, so
adding the same value to R, G and B moves the luma by that value and leaves the chroma alone.
"""

from __future__ import annotations

import torch

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# the widest channel spread of a gray photo after a JPEG round trip, with room: an input within
# it at every pixel is black and white
GRAY_SPREAD = 2.0 / 255


def luma(x: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W luminance of an N x 3 x H x W RGB batch."""
    w = x.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def gray(x: torch.Tensor) -> torch.Tensor:
    """The luminance as a 3-channel gray image: what a colorizer's network sees."""
    return luma(x).expand(-1, 3, -1, -1)


def with_luminance(rgb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The chroma of ``rgb`` on the luminance ``y`` (N x 1 x H x W, in [0, 1]).

    Where luminance plus chroma would leave [0, 1], the chroma is shortened (towards gray) until
    every channel fits, instead of clipping a channel: clipping would change the luminance.
    """
    chroma = rgb - luma(rgb)  # per-channel offsets from gray; their luma is 0
    # how much of each offset fits above (below) the luminance before a channel leaves [0, 1]
    tiny = 1e-6
    room = torch.where(
        chroma > tiny,
        (1.0 - y) / chroma.clamp_min(tiny),
        torch.where(chroma < -tiny, y / (-chroma).clamp_min(tiny), torch.ones_like(chroma)),
    )
    fit = room.amin(dim=1, keepdim=True).clamp(0.0, 1.0)
    return y + fit * chroma


def with_chroma(rgb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The luminance ``y`` (N x 1 x H x W) under the chroma of ``rgb`` (in [0, 1]), kept exactly.

    Where a channel would leave [0, 1], the luminance is moved to the nearest value at which
    every channel fits, instead of shortening the chroma: the colour stays ``rgb``'s. Such a
    value always exists, ``rgb``'s own luminance being one.
    """
    chroma = rgb - luma(rgb)
    lo = (-chroma).amax(dim=1, keepdim=True)
    hi = (1.0 - chroma).amin(dim=1, keepdim=True)
    return torch.minimum(torch.maximum(y, lo), hi) + chroma


def colorized(out: torch.Tensor, seen: torch.Tensor, scale: int) -> torch.Tensor:
    """A colorizer's output: at scale 1 the chroma of ``out`` on the luminance of its input
    ``seen``, exactly; upscaling, its luminance is the network's own (the input's has too few
    pixels), with the chroma fitted into [0, 1] the same way."""
    y = luma(seen) if scale == 1 else luma(out).clamp(0.0, 1.0)
    return with_luminance(out, y)


# where a restorer's output chroma comes from: its network, or the input upsampled bicubically
CHROMA = ("network", "input")


def check_chroma(chroma: str, task: str) -> None:
    if chroma not in CHROMA:
        raise ValueError(f"chroma: {chroma!r} is not one of {', '.join(CHROMA)}")
    if chroma != "network" and task != "restore":
        raise ValueError(f"chroma: {chroma!r} is a restorer's; a {task} model predicts its chroma")


def restored(
    out: torch.Tensor, seen: torch.Tensor, base: torch.Tensor, chroma: str = "network"
) -> torch.Tensor:
    """A restorer's output from the network's ``out`` for the input ``seen``, ``base`` being
    ``seen`` upsampled bicubically.

    ``chroma="input"``: the luminance of ``out`` with the chroma of ``base`` clamped to [0, 1],
    bicubic's own colour, exactly (``with_chroma``). The network then restores only the
    luminance; the colour stays the input's, which cannot fringe (measured: a network's own
    chroma was no closer to the truth than bicubic's, and further near edges).
    ``"network"``: ``out`` as it is, but for an input that is gray its own luminance in all
    three channels, so a black-and-white photo comes back without colour fringes (its
    luminance, and so its Y-PSNR, is unchanged). Decided per image."""
    if chroma == "input":
        return with_chroma(base.clamp(0.0, 1.0), luma(out))
    spread = (seen.amax(dim=1) - seen.amin(dim=1)).flatten(1).amax(dim=1)
    is_gray = (spread <= GRAY_SPREAD).view(-1, 1, 1, 1)
    return torch.where(is_gray, gray(out), out)

"""ST-LPIPS: the shift-tolerant learned perceptual distance of Ghildyal & Liu (ECCV 2022).

LPIPS (Zhang et al. 2018) compares unit-normalised deep features of two images through linear
per-channel weights fitted to human judgements (BAPPS). The shift-tolerant variant rebuilds the
trunk so that a one-pixel shift barely moves the score: every max-pool has stride 1 and is
followed by a stride-2 binomial blur ([1, 2, 1] squared) with reflection padding of 2 px, and in
AlexNet the first convolution runs at stride 1 with the blur after it. A restorer's output is
often a fraction of a pixel off its reference; a distance that punishes that as much as a
blurred texture would rank methods by alignment, not quality.

The ``stlpips-pytorch`` wheel ships both trained networks (trunk and linear heads, complete
state dicts) but imports IPython and torchsummary at import time without using them. So the
package is never imported: the networks are written out here, module for module as in its
``invariant_networks.py`` (so that the file's keys load with ``strict=True``), and the weight
file is found through the package's location alone. Without that file there is no score: a
distance through random weights measures nothing.

Inputs are RGB in [0, 1] (mapped to [-1, 1], then LPIPS v0.1's per-channel scaling); the score
is the sum over the five taps of the spatially averaged weighted squared feature difference.
0 for identical images, lower is closer.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

Net = Literal["vgg", "alex"]
PACKAGE = "stlpips_pytorch"
WEIGHTS = "weights/vST0.0/{net}_shift_tolerant.pth"
CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
# The smallest side each trunk takes: below it a reflection pad would exceed its input.
MIN_SIZE = {"vgg": 18, "alex": 21}
EPS = 1e-10  # LPIPS's guard in the channel normalisation


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 subsampling: reflect-pad 2 px, then a depthwise 3x3 binomial."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = a[:, None] * a[None, :]
        # a buffer, as in the original: the weight file holds it too
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1]
        )


def _vgg_layers() -> list[nn.Module]:
    """VGG16 (configuration D) with every 2x2 max-pool at stride 1 followed by a blur-pool."""
    layers: list[nn.Module] = []
    channels = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=1), BlurDownsample(channels)]
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU()]
            channels = v
    return layers


def _alex_layers() -> list[nn.Module]:
    """AlexNet's features with the first convolution at stride 1 and blur-pools after it and
    after each max-pool (then at stride 1)."""
    return [
        nn.Conv2d(3, 64, kernel_size=11, stride=1, padding=2),
        BlurDownsample(64),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=1),
        BlurDownsample(64),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=1),
        BlurDownsample(192),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
    ]


# Layer indices where each of the five taps ends (relu1_2 ... relu5_3 for VGG, relu1 ... relu5
# for AlexNet); a slice keeps the original's indices as its module names.
SLICE_ENDS = {"vgg": (4, 10, 18, 26, 34), "alex": (3, 7, 11, 13, 15)}


class Trunk(nn.Module):
    def __init__(self, net: Net):
        super().__init__()
        layers = {"vgg": _vgg_layers, "alex": _alex_layers}[net]()
        start = 0
        for i, end in enumerate(SLICE_ENDS[net], 1):
            self.add_module(
                f"slice{i}",
                nn.Sequential(OrderedDict((str(j), layers[j]) for j in range(start, end))),
            )
            start = end

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i in range(1, 6):
            x = getattr(self, f"slice{i}")(x)
            taps.append(x)
        return taps


class ScalingLayer(nn.Module):
    """LPIPS v0.1's input normalisation (its buffers are in the weight file)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class LinearHead(nn.Module):
    """A 1x1 convolution to one channel: the learned weight of each feature channel.
    Index 0 held the dropout used in training, so the weight keeps the key ``model.1``."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class STLPIPS(nn.Module):
    """ST-LPIPS distance between two NCHW RGB batches in [0, 1]; returns one value per image."""

    def __init__(self, net: Net = "vgg"):
        super().__init__()
        if net not in CHANNELS:
            raise ValueError(f"ST-LPIPS net must be one of {sorted(CHANNELS)}, got {net!r}")
        self.kind = net
        self.scaling_layer = ScalingLayer()
        self.net = Trunk(net)
        for i, c in enumerate(CHANNELS[net]):
            self.add_module(f"lin{i}", LinearHead(c))
        self._reference: tuple[str, list[torch.Tensor]] | None = None  # see distance_to
        self.eval().requires_grad_(False)

    @property
    def min_size(self) -> int:
        return MIN_SIZE[self.kind]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _same_shape(x, y)
        n = x.shape[0]
        # one pass over both images: the trunk is the whole cost
        taps = self.features(torch.cat([x, y]))
        return self.compare([f[:n] for f in taps], [f[n:] for f in taps])

    def distance_to(self, x: torch.Tensor, y: torch.Tensor, key: str) -> torch.Tensor:
        """``forward(x, y)`` for a reference scored against many images in turn (evaluation
        scores every method of a photo against its truth): the features of ``y`` are kept
        under ``key``, a string that identifies it, until another reference comes."""
        _same_shape(x, y)
        if self._reference is None or self._reference[0] != key:
            self._reference = (key, self.features(y))
        return self.compare(self.features(x), self._reference[1])

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five taps of a batch, each unit-normalised along its channels."""
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"ST-LPIPS ({self.kind}) needs at least {self.min_size} px a side, "
                f"got {x.shape[-1]}x{x.shape[-2]}"
            )
        # channels-last: the same values, about 1.3x faster through oneDNN on a CPU
        x = self.scaling_layer(x * 2 - 1).contiguous(memory_format=torch.channels_last)
        return [f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS) for f in self.net(x)]

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """The distance per image between two batches' ``features``."""
        total = fx[0].new_zeros(fx[0].shape[0])
        for i, (a, b) in enumerate(zip(fx, fy, strict=True)):
            total = total + getattr(self, f"lin{i}")((a - b) ** 2).mean(dim=(1, 2, 3))
        return total


def _same_shape(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"ST-LPIPS inputs differ in shape: {tuple(x.shape)} and {tuple(y.shape)}")


def weights_file(net: Net = "vgg") -> Path | None:
    """The weight file inside the installed ``stlpips-pytorch`` wheel, found without importing
    the package; None when the package is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / WEIGHTS.format(net=net)


def load(net: Net = "vgg", path: Path | str | None = None) -> STLPIPS:
    """The ST-LPIPS network with its trained weights (every key, strict); raises
    FileNotFoundError when the weight file is missing."""
    path = Path(path) if path is not None else weights_file(net)
    if path is None or not path.is_file():
        where = path if path is not None else f"the {PACKAGE} package (not installed)"
        raise FileNotFoundError(
            f"ST-LPIPS {net} weights not found in {where}: pip install stlpips-pytorch"
        )
    # The random initialisation that the weights replace must not draw from the global RNG: a
    # training stage that scores its first candidate after a resume would otherwise draw its
    # dropout masks from another stream than an uninterrupted run.
    with torch.random.fork_rng(devices=[]):
        model = STLPIPS(net)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(memory_format=torch.channels_last).eval()


@functools.lru_cache(maxsize=2)
def cached(net: Net = "vgg") -> STLPIPS | None:
    """The network for ``score``, loaded once per process; None (said once) without weights."""
    try:
        return load(net)
    except FileNotFoundError as exc:
        log.warning("%s; the ST-LPIPS score is not reported", exc)
        return None

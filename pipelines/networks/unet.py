"""The generator: a U-Net on a torchvision ResNet encoder (fastai's DynamicUnet) that takes the
low-resolution image and returns the high-resolution one.

The recipe upsampled the input to the output size first and ran the whole U-Net there (16x the
pixels at x4). Here the U-Net works at the input resolution S and ``log2(scale)`` pixel-shuffle
blocks bring its features to the output size, where a residual on top of bicubic upsampling is
predicted:

    out = sigmoid(logit(clamp(bicubic(x), eps, 1 - eps)) + r)

so an untrained network (last conv zero) returns bicubic upsampling, the output stays in (0, 1)
without a hard clamp that would stop gradients, and r only has to model what bicubic misses.

Sizes: inputs of at least 16 px of any shape work. They are reflection-padded to a multiple of 32
(the encoder's stride), so every skip aligns exactly with the decoder (fastai instead interpolates
decoder features onto misaligned skips), and the padding is cropped off at the input resolution
before the high-resolution blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipelines.core.tasks import check_task
from pipelines.networks.colour import check_chroma, colorized, gray, restored
from pipelines.networks.layers import NORMS, Norm, PixelShuffleICNR, ResBlock, conv_layer
from pipelines.networks.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_pretrained
from pipelines.training.checkpoint import unwrap

ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
SCALES = (1, 2, 4, 8)
# logit(eps) = -6.9: outputs saturate within 1e-3 of 0 and 1, below half an 8-bit level
EPS = 1e-3
MIN_SIZE = 16


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without pooling and classifier; same module names as torchvision,
    so its state dict is the ResNet's minus ``fc``."""

    def __init__(self, name: str = "resnet34", pretrained: str = "none"):
        super().__init__()
        if name not in ENCODERS:
            raise ValueError(f"encoder: {name!r} is not one of {', '.join(ENCODERS)}")
        resnet = getattr(torchvision.models, name)(weights=None)
        del resnet.fc, resnet.avgpool
        load_pretrained(resnet, name, pretrained, ignore=("fc.",))
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def channels(self) -> list[int]:
        """Channels of the features ``forward`` returns: stem, layer1..layer4."""

        def last_bn(m: nn.Module) -> int:
            return [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)][-1].num_features

        return [self.bn1.num_features] + [last_bn(getattr(self, f"layer{i}")) for i in range(1, 5)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features where the resolution changes (fastai's hooks): S/2, S/4, S/8, S/16, S/32."""
        stem = self.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [stem, f1, f2, f3, self.layer4(f3)]


class UnetBlock(nn.Module):
    """Upsample the decoder features x2, merge the skip (BN), two conv layers (fastai UnetBlock)."""

    def __init__(
        self,
        up_in: int,
        skip_in: int,
        final_div: bool = True,
        blur: bool = False,
        self_attention: bool = False,
        norm: Norm = "weight",
    ):
        super().__init__()
        self.shuf = PixelShuffleICNR(up_in, up_in // 2, blur=blur, norm=norm)
        self.bn = nn.BatchNorm2d(skip_in)
        ni = up_in // 2 + skip_in
        self.out_channels = ni if final_div else ni // 2
        self.conv1 = conv_layer(ni, self.out_channels, norm=norm)
        self.conv2 = conv_layer(
            self.out_channels, self.out_channels, norm=norm, self_attention=self_attention
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # the skip keeps its graph: the original's detached hooks cut this gradient path
        x = F.relu(torch.cat([self.shuf(x), self.bn(skip)], dim=1))
        return self.conv2(self.conv1(x))


class UNetGenerator(nn.Module):
    """See the module docstring. Arguments as ``build_generator``."""

    def __init__(
        self,
        encoder: str = "resnet34",
        scale: int = 4,
        pretrained: str = "none",
        blur: bool = True,
        blur_final: bool = True,
        self_attention: bool = True,
        norm: Norm = "weight",
        hr_channels: int = 32,
        lr_cross: bool = True,
        task: str = "restore",
        chroma: str = "network",
    ):
        super().__init__()
        check_task(task)
        check_chroma(chroma, task)
        if scale not in SCALES:
            raise ValueError(f"scale: {scale!r} is not one of {', '.join(map(str, SCALES))}")
        if norm not in NORMS:
            raise ValueError(f"norm: {norm!r} is not one of {', '.join(NORMS)}")
        if hr_channels < 8:
            raise ValueError(f"hr_channels: {hr_channels} is below 8")
        self.scale = scale
        self.arch = dict(
            encoder=encoder,
            scale=scale,
            pretrained="none",
            blur=blur,
            blur_final=blur_final,
            self_attention=self_attention,
            norm=norm,
            hr_channels=hr_channels,
            lr_cross=lr_cross,
        )
        self.task = task
        if task != "restore":  # restoring model files keep the arch they always had
            self.arch["task"] = task
        self.chroma = chroma
        if chroma != "network":
            self.arch["chroma"] = chroma
        self.encoder = ResNetEncoder(encoder, pretrained)
        skips = self.encoder.channels()
        ni = skips[-1]
        self.middle = nn.Sequential(
            nn.BatchNorm2d(ni),
            nn.ReLU(),
            conv_layer(ni, ni * 2, norm=norm),
            conv_layer(ni * 2, ni, norm=norm),
        )
        # decoder S/32 -> S/2 on the skips S/16, S/8, S/4, S/2; attention on the third-from-last
        self.blocks = nn.ModuleList()
        for i, skip in enumerate(reversed(skips[:-1])):
            final = i == len(skips) - 2
            block = UnetBlock(
                ni,
                skip,
                final_div=not final,
                blur=blur,
                norm=norm,
                self_attention=self_attention and i == len(skips) - 4,
            )
            self.blocks.append(block)
            ni = block.out_channels
        # S/2 -> S, then x2 per octave of ``scale``; only the last one produces the output size
        n_up = 1 + int(math.log2(scale))
        self.up = nn.ModuleList()
        for i in range(n_up):
            nf = ni if i == 0 else max(ni // 2, hr_channels)
            last = i == n_up - 1
            # the input fills 3 of the head's channels: a width such as 32 rather than 35 runs
            # the head's convs, the costliest layers, 2-3x faster on CPU (oneDNN blocking)
            self.up.append(
                PixelShuffleICNR(
                    ni, nf - 3 if last else nf, blur=blur and (blur_final or not last), norm=norm
                )
            )
            ni = nf
            if i == 0:
                # fastai's U-Net had its last skip at half the input size and saw the input again
                # only at the end; at x2..x8 that end is the output size, so the input resolution
                # got no features of its own. lr_cross merges the input there (cheap at S).
                self.lr_cross = (
                    conv_layer(nf + 3, nf, norm=norm) if lr_cross and scale > 1 else None
                )
        # the input cross-connection at the output size, as fastai's last_cross
        self.head = ResBlock(ni, norm=norm)
        self.to_residual = nn.Conv2d(ni, 3, 1)
        nn.init.zeros_(self.to_residual.weight)
        nn.init.zeros_(self.to_residual.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < MIN_SIZE:
            raise ValueError(f"generator input {h}x{w} is smaller than {MIN_SIZE} px")
        if self.task == "colorize":
            x = gray(x)
        ph, pw = -h % 32, -w % 32
        padded = (
            F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")
            if ph or pw
            else x
        )
        *skips, y = self.encoder(padded)
        y = self.middle(y)
        for block, skip in zip(self.blocks, reversed(skips)):
            y = block(y, skip)
        y = self.up[0](y)
        y = y[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        if self.lr_cross is not None:
            y = self.lr_cross(torch.cat([y, (x - self.encoder.mean) / self.encoder.std], dim=1))
        for up in self.up[1:]:
            y = up(y)
        base = upsample(x, self.scale)
        norm_base = (base - self.encoder.mean) / self.encoder.std
        r = self.to_residual(self.head(torch.cat([y, norm_base], dim=1)))
        out = torch.sigmoid(torch.logit(base.clamp(EPS, 1 - EPS)) + r)
        if self.task == "colorize":
            return colorized(out, x, self.scale)
        return restored(out, x, base, self.chroma)


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling, the generator's starting point."""
    if scale == 1:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def freeze_encoder(model: nn.Module, frozen: bool = True) -> None:
    """Freeze (or with ``frozen=False`` unfreeze) the encoder; everything else stays trainable.

    The encoder's BatchNorm layers stay trainable (fastai's train_bn): they adapt the pretrained
    statistics to the new inputs at little cost. Freezing only makes sense with pretrained weights.
    """
    model = unwrap(model)
    for p in model.parameters():
        p.requires_grad_(True)
    if frozen:
        for m in model.encoder.modules():
            if not isinstance(m, nn.BatchNorm2d):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)


def param_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """[stem..layer2], [layer3..layer4], [decoder and head]: for discriminative learning rates."""
    model = unwrap(model)
    enc = model.encoder
    early = [p for m in (enc.conv1, enc.bn1, enc.layer1, enc.layer2) for p in m.parameters()]
    late = [p for m in (enc.layer3, enc.layer4) for p in m.parameters()]
    seen = {id(p) for p in early + late}
    return [early, late, [p for p in model.parameters() if id(p) not in seen]]


def build_generator(
    encoder: str = "resnet34",
    scale: int = 4,
    pretrained: str = "none",
    blur: bool = True,
    blur_final: bool = True,
    self_attention: bool = True,
    norm: Norm = "weight",
    hr_channels: int = 32,
    lr_cross: bool = True,
    task: str = "restore",
    chroma: str = "network",
) -> UNetGenerator:
    """The U-Net generator.

    encoder: torchvision ResNet name (resnet18/34/50/101/152).
    scale: output size / input size, 1 (same-size restoration), 2, 4 or 8.
    pretrained: encoder weights, "imagenet" | "none" | path (see pipelines.networks.pretrained).
    blur: blur after every pixel shuffle; blur_final: also after the one producing the output.
    self_attention: SAGAN attention in the third-from-last U-Net block (S/8).
    norm: "weight" | "spectral" | "none" on the decoder's convs (weight norm: the recipe's choice).
    hr_channels: fewest channels of the blocks above the input resolution, where compute goes.
    lr_cross: merge the input image into the features at the input resolution (scale > 1).
    task: restore, or colorize: the network sees the input's luminance and predicts colour
    (pipelines/networks/colour.py).
    chroma: a restorer's output chroma, "network" or "input" (``colour.restored``).

    ``model.arch`` holds these arguments (with pretrained="none": the weights come from the
    checkpoint) for ``build_generator(**arch)``.
    """
    return UNetGenerator(
        encoder,
        scale,
        pretrained,
        blur,
        blur_final,
        self_attention,
        norm,
        hr_channels,
        lr_cross,
        task,
        chroma,
    )

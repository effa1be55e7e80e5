"""Content losses (pixel, perceptual) and the adversarial losses of the critic and the generator.

Images are (N, 3, H, W) in [0, 1]. Content losses are modules with a ``weight`` (BasicSR style);
the adversarial losses are plain functions, weighted by the caller: ``critic_loss`` runs the
critic on real and generated images, ``generator_adv_loss`` takes the critic's patch logits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg

from pipelines.core.config import ConfigError
from pipelines.networks.colour import gray
from pipelines.networks.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_pretrained
from pipelines.scoring import stlpips

log = logging.getLogger(__name__)

Content = Literal["mse", "l1", "charbonnier", "feature"]
PIXEL_LOSSES = ("mse", "l1", "charbonnier")
# Charbonnier's epsilon, in [0, 1] image units (LapSRN, EDVR, BasicSR: 1e-3)
CHARBONNIER_EPS = 1e-3
Adversarial = Literal["bce", "wgan-gp"]
ADVERSARIAL = ("bce", "wgan-gp")
# ReLU outputs just before max-pools 3, 4 and 5 of VGG16-BN's ``features`` (256, 512, 512 ch)
VGG_TAPS = (22, 32, 42)
GRAM_FACTOR = 5e3
# WGAN-GP's lambda
GP_WEIGHT = 10.0


class PixelLoss(nn.Module):
    """``weight`` * mean MSE, L1 or Charbonnier (sqrt(d^2 + eps^2), a differentiable L1)
    between the images; with ``pixel_weights`` (N, 1, H, W), the mean of each pixel's term
    times its weight (``TrainPairs.text_weight``)."""

    def __init__(self, kind: Literal["mse", "l1", "charbonnier"] = "l1", weight: float = 1.0):
        super().__init__()
        if kind not in PIXEL_LOSSES:
            raise ValueError(f"pixel loss: {kind!r} is not 'mse', 'l1' or 'charbonnier'")
        self.kind, self.weight = kind, weight

    def forward(
        self, output: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        output, target = output.float(), target.float()
        if self.kind == "charbonnier":
            per_pixel = torch.sqrt((output - target) ** 2 + CHARBONNIER_EPS**2)
        else:
            fn = F.mse_loss if self.kind == "mse" else F.l1_loss
            if pixel_weights is None:
                return self.weight * fn(output, target)
            per_pixel = fn(output, target, reduction="none")
        if pixel_weights is not None:
            per_pixel = per_pixel * pixel_weights.float()
        return self.weight * per_pixel.mean()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """f f^T / (c h w) per image: (N, C, H, W) -> (N, C, C), in float32."""
    n, c, h, w = features.shape
    f = features.float().reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class FeatureLoss(nn.Module):
    """The perceptual loss of the recipe (lesson7-superres):

        L = L1(x, y) + sum_i w_i L1(phi_i(x), phi_i(y))
                     + sum_i w_i^2 * 5e3 * L1(Gram(phi_i(x)), Gram(phi_i(y)))   (if ``gram``)

    phi_i: frozen VGG16-BN features at ``VGG_TAPS``. As in the recipe, every term, the pixel
    one included, sees ImageNet-normalised images, so its layer weights keep their balance.
    Without ImageNet weights the VGG stays random: the loss still runs, after a warning.
    """

    def __init__(
        self,
        layer_weights: Sequence[float] = (5.0, 15.0, 2.0),
        gram: bool = True,
        weight: float = 1.0,
        pretrained: str = "imagenet",
    ):
        super().__init__()
        if len(layer_weights) != len(VGG_TAPS):
            raise ValueError(
                f"feature loss: {len(VGG_TAPS)} layer weights needed, got {list(layer_weights)}"
            )
        self.layer_weights, self.gram, self.weight = tuple(layer_weights), gram, weight
        # VGG16-BN's ``features`` alone: building the 120M-parameter classifier only to drop it
        # costs seconds and half a gigabyte
        holder = nn.Module()
        holder.features = vgg.make_layers(vgg.cfgs["D"], batch_norm=True)
        load_pretrained(holder, "vgg16_bn", pretrained, ignore=("classifier.",))
        self.vgg = holder.features[: VGG_TAPS[-1] + 1].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FeatureLoss:
        # the VGG is a fixed measuring instrument: its BatchNorm must never use batch statistics
        super().train(mode)
        self.vgg.eval()
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in VGG_TAPS:
                out.append(x)
        return out

    def forward(
        self, output: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        if pixel_weights is not None:
            raise ValueError("feature loss: pixel weights only weigh a pixel loss")
        x = (output.float() - self.mean) / self.std
        y = (target.float() - self.mean) / self.std
        loss = F.l1_loss(x, y)
        with torch.no_grad():
            target_features = self.features(y)
        for w, fx, fy in zip(self.layer_weights, self.features(x), target_features):
            loss = loss + w * F.l1_loss(fx.float(), fy.float())
            if self.gram:
                loss = loss + w**2 * GRAM_FACTOR * F.l1_loss(gram_matrix(fx), gram_matrix(fy))
        return self.weight * loss


class WithPerceptual(nn.Module):
    """A content loss plus ``weight`` times the ST-LPIPS distance (pipelines/scoring/stlpips.py):
    the lesson's feature loss with the BAPPS-trained networks that work offline. A pixel loss
    alone averages plausible colours to sepia and textures to blur."""

    def __init__(self, content: nn.Module, weight: float, net: stlpips.Net = "alex"):
        super().__init__()
        self.content = content
        self.weight = weight
        self.distance = stlpips.load(net)  # FileNotFoundError names the missing weights

    def train(self, mode: bool = True) -> WithPerceptual:
        super().train(mode)
        self.distance.eval()  # a fixed metric, never in training mode
        return self

    def forward(
        self, output: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        content = self.content(output, target, pixel_weights)
        return content + self.weight * self.distance(output, target).mean()


class OnLuminance(nn.Module):
    """A content loss between the luminances of the images (each spread over three channels).

    For a restorer that keeps the input's chroma (``model.chroma: input``): its output's chroma
    is fixed, and over RGB the loss would pull the luminance it does control by the chroma's
    errors. L1's optimum for a luminance offset y with chroma errors e_c is y = -median(e_c),
    not the truth; on the luminance alone it is the truth."""

    def __init__(self, content: nn.Module):
        super().__init__()
        self.content = content

    def forward(
        self, output: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.content(gray(output), gray(target), pixel_weights)


def build_content_loss(
    name: Content,
    weight: float = 1.0,
    layer_weights: Sequence[float] = (5.0, 15.0, 2.0),
    gram: bool = True,
    pretrained: str = "imagenet",
    perceptual: float = 0.0,
    perceptual_net: stlpips.Net = "alex",
    luminance: bool = False,
) -> nn.Module:
    """The content loss ``name``; ``layer_weights``, ``gram`` and ``pretrained`` (the VGG's
    weights spec, see pipelines.networks.pretrained) only concern "feature". ``perceptual`` > 0
    adds that weight of the ST-LPIPS distance through ``perceptual_net``. ``luminance``: the
    whole loss compares the images' luminances (``OnLuminance``)."""
    if luminance:
        return OnLuminance(
            build_content_loss(
                name, weight, layer_weights, gram, pretrained, perceptual, perceptual_net
            )
        )
    if perceptual > 0:
        return WithPerceptual(
            build_content_loss(name, weight, layer_weights, gram, pretrained),
            perceptual,
            perceptual_net,
        )
    if name in PIXEL_LOSSES:
        return PixelLoss(name, weight)
    if name == "feature":
        return FeatureLoss(layer_weights, gram, weight, pretrained)
    raise ValueError(f"content loss: {name!r} is not one of 'mse', 'l1', 'charbonnier', 'feature'")


def check_text_weight(weight: float, loss: str, data: str) -> None:
    """Text weights come from the watermark's mask, which only a fresh degradation knows, and
    weigh a pixel loss's terms (``TrainPairs.text_weight``)."""
    if weight and data != "fresh":
        raise ConfigError(f"text_weight: {weight} needs data: fresh (the mask of each crop)")
    if weight and loss not in PIXEL_LOSSES:
        raise ConfigError(
            f"text_weight: {weight} weighs a pixel loss ({', '.join(PIXEL_LOSSES)}), not {loss!r}"
        )


def critic_logit_loss(
    kind: Adversarial, real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> torch.Tensor:
    """The critic's loss on its patch logits (N, P) for real and generated images.

    bce: 1/2 [BCE(D(real), 1) + BCE(D(fake), 0)], the image label given to every patch.
    wgan-gp: D(fake).mean() - D(real).mean(), without the penalty (see ``critic_loss``).
    """
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "bce":
        return 0.5 * (
            F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        )
    if kind == "wgan-gp":
        return fake_logits.mean() - real_logits.mean()
    raise ValueError(f"adversarial loss: {kind!r} is not one of {', '.join(ADVERSARIAL)}")


def critic_loss(
    kind: Adversarial,
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One critic step's loss on real and generated images (``fake`` is detached here).

    wgan-gp adds ``GP_WEIGHT`` times the gradient penalty; ``generator`` seeds its random points.
    """
    fake = fake.detach()
    loss = critic_logit_loss(kind, critic(real), critic(fake))
    if kind == "wgan-gp":
        loss = loss + GP_WEIGHT * gradient_penalty(critic, real, fake, generator)
    return loss


def generator_adv_loss(kind: Adversarial, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial loss: BCE(D(fake), 1), or -D(fake).mean() for wgan-gp."""
    fake_logits = fake_logits.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind == "wgan-gp":
        return -fake_logits.mean()
    raise ValueError(f"adversarial loss: {kind!r} is not one of {', '.join(ADVERSARIAL)}")


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean over images of (||grad_x D(x_hat)|| - 1)^2 at
    random points x_hat between real and generated images; D(x) is the mean of its patch
    logits, the score the wgan-gp losses use. Keeps the graph, so the penalty trains the critic."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=generator)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    # in float32 outside autocast: the double backward is sensitive to bf16 rounding
    with torch.autocast(real.device.type, enabled=False):
        score = critic(x_hat.float()).float().flatten(1).mean(dim=1)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

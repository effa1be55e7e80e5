"""The generators (U-Net on a ResNet encoder, residual network at the input resolution) and the
patch critic."""

from pipelines.networks.critic import PatchCritic, build_critic
from pipelines.networks.generators import KINDS, build_generator, freeze_encoder, param_groups
from pipelines.networks.srresnet import SRResNetGenerator
from pipelines.networks.unet import UNetGenerator, upsample

__all__ = [
    "KINDS",
    "PatchCritic",
    "SRResNetGenerator",
    "UNetGenerator",
    "build_critic",
    "build_generator",
    "freeze_encoder",
    "param_groups",
    "upsample",
]

"""The generator (U-Net on a ResNet encoder) and the patch critic."""
from pipelines.networks.critic import PatchCritic, build_critic
from pipelines.networks.unet import (UNetGenerator, build_generator, freeze_encoder, param_groups,
                                     upsample)

__all__ = ["PatchCritic", "UNetGenerator", "build_critic", "build_generator", "freeze_encoder",
           "param_groups", "upsample"]

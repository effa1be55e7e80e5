"""The generator architectures by name: a model file's ``arch`` dict rebuilds its network.

``arch["kind"]`` names the architecture: "unet" (the default, and what model files written
before the key existed hold) or "srresnet". The rest of the dict is that builder's keywords.
"""

from __future__ import annotations

from torch import nn

from pipelines.networks import srresnet, unet
from pipelines.training.checkpoint import unwrap

KINDS = ("unet", "srresnet")


def build_generator(kind: str = "unet", **kwargs) -> nn.Module:
    """The generator ``kind`` built from its keywords (see ``unet.build_generator`` and
    ``srresnet.build_srresnet``)."""
    if kind == "unet":
        return unet.build_generator(**kwargs)
    if kind == "srresnet":
        return srresnet.build_srresnet(**kwargs)
    raise ValueError(f"generator kind: {kind!r} is not one of {', '.join(KINDS)}")


def has_encoder(model: nn.Module) -> bool:
    return isinstance(unwrap(model), unet.UNetGenerator)


def freeze_encoder(model: nn.Module, frozen: bool = True) -> None:
    """The U-Net's encoder frozen (or unfrozen); a network without an encoder cannot freeze."""
    if has_encoder(model):
        unet.freeze_encoder(model, frozen)
    elif frozen:
        raise ValueError(f"{type(unwrap(model)).__name__} has no encoder to freeze")


def param_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Three groups for discriminative learning rates: the U-Net's [stem..layer2],
    [layer3..layer4], [decoder and head]; a network without an encoder has all its parameters
    in the last group (the first two are empty), so lr_ratios[2] sets its rate."""
    if has_encoder(model):
        return unet.param_groups(model)
    return [[], [], list(unwrap(model).parameters())]

"""Pretrained weights for the generator's encoder and the perceptual loss's VGG, in one place.

A ``pretrained`` spec is one of:

- ``"none"``: keep the random initialisation;
- ``"imagenet"``: torchvision's ImageNet weights, read from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/<file name of the weights URL>``). When the file is missing it
  is downloaded only if ``DECRAPPIFY_ALLOW_DOWNLOAD=1``: by default nothing is fetched, because
  training machines are often offline and a download that hangs on a dead network wastes minutes
  of a run; instead ONE warning per network says where the file was expected and training goes
  on from random initialisation. Put the file there (or set the variable once) to use it;
- any other string: the path to a ``.pth`` state dict, or to a checkpoint holding one under
  ``"model"`` or ``"state_dict"``.

Files are read with ``weights_only=True`` (a pickled object that would run code is refused) and
loaded strictly: missing or unexpected keys and shape mismatches are errors that list them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from pipelines.core.errors import StageError

log = logging.getLogger(__name__)

ALLOW_DOWNLOAD_ENV = "DECRAPPIFY_ALLOW_DOWNLOAD"
# the statistics the ImageNet weights were trained with: networks normalise their inputs by them
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The weights the recipe used (IMAGENET1K_V1, as fastai v1 and the hub file names of that time).
IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "resnet152": "ResNet152_Weights",
    "vgg16_bn": "VGG16_BN_Weights",
}

_warned: set[str] = set()


class PretrainedError(StageError):
    """A pretrained weights spec names a file that is missing, unsafe or does not fit."""


def imagenet_file(network: str) -> tuple[str, Path]:
    """The download URL of ``network``'s ImageNet weights and where the hub cache keeps them."""
    if network not in IMAGENET_WEIGHTS:
        known = ", ".join(sorted(IMAGENET_WEIGHTS))
        raise PretrainedError(f"no ImageNet weights known for {network!r} (known: {known})")
    url = getattr(torchvision.models, IMAGENET_WEIGHTS[network]).IMAGENET1K_V1.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict file, or of the ``model``/``state_dict`` entry of a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: pretrained weights file not found")
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PretrainedError(f"{path}: refused or unreadable weights file ({first})") from None
    if isinstance(data, dict):
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise PretrainedError(f"{path}: holds no state dict")
    bad = sorted(str(k) for k, v in data.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise PretrainedError(f"{path}: not a state dict, non-tensor entries: {_listing(bad)}")
    return data


def state_dict_for(network: str, spec: str) -> dict[str, torch.Tensor] | None:
    """The weights ``spec`` asks for, or None when the network keeps its random initialisation."""
    if spec == "none":
        return None
    if spec != "imagenet":
        return read_state_dict(spec)
    url, path = imagenet_file(network)
    if path.is_file():
        return read_state_dict(path)
    if os.environ.get(ALLOW_DOWNLOAD_ENV) == "1":
        log.info("downloading ImageNet weights for %s from %s", network, url)
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", check_hash=True, weights_only=True
        )
    if network not in _warned:
        _warned.add(network)
        log.warning(
            "ImageNet weights for %s not found at %s; training from random initialisation "
            "(put the file there, or set %s=1 to download it)",
            network,
            path,
            ALLOW_DOWNLOAD_ENV,
        )
    return None


def load_pretrained(
    module: nn.Module, network: str, spec: str, ignore: tuple[str, ...] = ()
) -> bool:
    """Load ``spec``'s weights into ``module`` strictly; True when weights were loaded.

    ``ignore`` lists key prefixes of the source that the module deliberately lacks (the
    classifier of a network used as a feature extractor).
    """
    state = state_dict_for(network, spec)
    if state is None:
        return False
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = [
            f"{name}: {_listing(keys)}"
            for name, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if keys
        ]
        raise PretrainedError(
            f"pretrained weights {spec!r} do not fit {network}: " + "; ".join(parts)
        )
    module.load_state_dict(state)
    return True


def _listing(keys: list[str], limit: int = 8) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more

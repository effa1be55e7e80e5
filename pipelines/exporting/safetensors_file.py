"""The generator as ``<name>.safetensors``: its plain state dict (weight-norm
parametrizations folded into plain weights) and the metadata that rebuilds it.

Safetensors holds tensors and a string header only: loading it runs no code, unlike a pickle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.exporting import metadata
from pipelines.exporting.metadata import ExportError
from pipelines.training.checkpoint import fold_parametrizations, plain_copy

SUFFIX = ".safetensors"


def to_bytes(model: nn.Module, meta: dict[str, str]) -> bytes:
    """The weights of ``model`` (a generator with ``arch``), parametrizations folded, and
    ``meta``, serialised."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in plain_copy(model).state_dict().items()}
    return canonical(save(state, metadata=meta))


def canonical(data: bytes) -> bytes:
    """``data`` with its JSON header written with sorted keys: safetensors writes the metadata
    in hash order, which differs from process to process, and the same model must give the
    same bytes (DVC hashes the export). Tensor offsets count from the end of the header, so
    they hold as they are."""
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":"))
    header += " " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
    return len(header).to_bytes(8, "little") + header.encode() + data[8 + size :]


def read(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, parsed metadata) of an exported file; ExportError if it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: safetensors file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: not a readable safetensors file ({text})") from None
    return state, metadata.parse(raw_meta, str(path))


def load_generator(
    path: Path | str,
    device: torch.device | str = "cpu",
    builder: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """The generator of an exported safetensors file, in eval mode on ``device``.

    ``builder`` rebuilds the network from the ``arch`` metadata (default
    ``pipelines.networks.build_generator``); its parametrizations are folded so the plain
    weights load.
    """
    state, meta = read(path)
    if builder is None:
        from pipelines.networks import build_generator as builder
    try:
        model = fold_parametrizations(builder(**meta["arch"]))
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{path}: metadata 'arch' does not build a generator: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(
            f"{path}: weights do not fit the architecture {meta['arch']}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return model.to(device).eval()

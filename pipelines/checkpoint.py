"""One checkpoint format for every network: a dict of tensors and plain values.

Loading uses ``weights_only=True``, so a file carrying a pickled object that would run code
is refused. Model files (the stages' cached outputs) hold ``kind``, ``arch`` (the keyword
arguments that rebuild the network) and ``model``; training checkpoints add the optimizer,
scaler and RNG states, the step and the config that produced them.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from pipelines.errors import StageError
from pipelines.files import write_bytes

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class CheckpointError(StageError):
    """A checkpoint is missing, unreadable, unsafe or of another kind."""


def save(path: Path | str, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (a kill mid-write leaves the previous file intact)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **payload}, buf)
    write_bytes(path, buf.getvalue())


def load(path: Path | str, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused or unreadable checkpoint ({first})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a checkpoint of format {FORMAT_VERSION}")
    if kind is not None and data.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {data.get('kind')!r}, expected a {kind!r}")
    return data


def model_payload(kind: str, arch: dict, model: torch.nn.Module) -> dict[str, Any]:
    return {"kind": kind, "arch": arch, "model": unwrap(model).state_dict()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DistributedDataParallel or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy in eval mode with weight/spectral-norm parametrizations folded into plain
    weights: same outputs, and picklable (parametrized modules are not).

    Rebuilt from ``model.arch`` rather than deep-copied: a deep copy shares the class that
    parametrize generates per module, and removing a parametrization from the copy would
    remove it from the original too.
    """
    from torch.nn.utils import parametrize

    source = unwrap(model)
    model = type(source)(**source.arch)
    model.load_state_dict(source.state_dict())
    model.eval()
    for module in [m for m in model.modules() if parametrize.is_parametrized(m)]:
        for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model

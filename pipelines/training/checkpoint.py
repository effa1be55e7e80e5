"""One checkpoint format for every network: a dict of tensors and plain values.

Loading uses ``weights_only=True``, so a file carrying a pickled object that would run code
is refused. Model files (the stages' cached outputs) hold ``kind``, ``arch`` (the keyword
arguments that rebuild the network) and ``model``; training checkpoints add the optimizer,
scaler and RNG states, the step and the config that produced them.
"""

from __future__ import annotations

import glob
import io
import logging
from pathlib import Path
from typing import Any

import torch

from pipelines.core.errors import DivergenceError, StageError
from pipelines.core.files import write_bytes

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class CheckpointError(StageError):
    """A checkpoint is missing, unreadable, unsafe or of another kind."""


def save(path: Path | str, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (a kill mid-write leaves the previous file intact).

    A payload holding a NaN or infinite float tensor (weights or optimizer state of a run
    that diverged) is refused with ``DivergenceError``: no NaN model or checkpoint is ever
    written, and the previous file stays the last good one.
    """
    path = Path(path)
    bad = non_finite(payload)
    if bad is not None:
        raise DivergenceError(
            f"{path}: not written: {bad} holds NaN or infinite values (training "
            f"diverged); the previous {path.name}, if any, is unchanged"
        )
    buf = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **payload}, buf)
    # A write killed before its rename left a temporary as large as the file: one writer saves
    # a given checkpoint at a time, so any such leftover is stale.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    write_bytes(path, buf.getvalue())


def non_finite(value: Any, key: str = "") -> str | None:
    """The key of the first floating-point tensor in ``value`` holding NaN or inf, else None."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key or "tensor"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = non_finite(v, f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


def load(
    path: Path | str, kind: str | None = None, map_location: str | torch.device = "cpu"
) -> dict:
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
    if not any(parametrize.is_parametrized(m) for m in source.modules()):
        fold_parametrizations(model)  # a plain source (already folded) has the plain keys
    model.load_state_dict(source.state_dict())
    model.eval()
    return fold_parametrizations(model)


def fold_parametrizations(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every weight/spectral-norm parametrization of ``model`` by the plain weight it
    computes now (in place); returns ``model``. Its state dict then has the plain keys."""
    from torch.nn.utils import parametrize

    for module in [m for m in model.modules() if parametrize.is_parametrized(m)]:
        for name in list(module.parametrizations):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model

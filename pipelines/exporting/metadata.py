"""What makes an exported model self-describing: one flat dict of strings.

Safetensors headers and ONNX ``metadata_props`` both hold string -> string maps, so both
carry the same keys. Nested values (the architecture, the params) are JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.code_deps import code_commit
from pipelines.core.errors import StageError
from pipelines.core.tasks import TASKS, model_task

FORMAT_KEY = "decrappify.format"
FORMAT = "1"
# the params sections that shape a generator: its degradations, its two trainings
SHAPING_SECTIONS = ("crappify", "pretrain_generator", "train_gan")
REQUIRED = (FORMAT_KEY, "task", "scale", "arch")


class ExportError(StageError):
    """A model cannot be exported, or an exported file is not one of ours."""


def git_commit(root: Path) -> str:
    """The commit of the code that made the model (``code_deps.code_commit``), or "unknown"."""
    return code_commit(root) or "unknown"


def data_hash(root: Path, data_path: str = "data/hr") -> str:
    """The md5 ``dvc.lock`` records for ``data_path`` (the training images), or "unknown"."""
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "unknown"
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == data_path and out.get("md5"):
                return str(out["md5"])
    return "unknown"


def shaping_params(params: Mapping[str, Any], scale: int) -> dict:
    """The params that shaped the generator: ``base.scale`` and the sections above, without
    the keys that only say how a run executes (workers, log_every, ...)."""
    from pipelines.core.fingerprint import HOW_IT_RUNS

    def results_only(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: results_only(v) for k, v in value.items() if k not in HOW_IT_RUNS}
        return value

    return {
        "base": {"scale": scale},
        **{s: results_only(params[s]) for s in SHAPING_SECTIONS if s in params},
    }


def build(
    arch: Mapping[str, Any],
    scale: int,
    *,
    commit: str,
    data_md5: str,
    params: Mapping[str, Any],
    source: str,
    min_size: int,
) -> dict[str, str]:
    return {
        FORMAT_KEY: FORMAT,
        "task": model_task(arch),
        "scale": str(scale),
        "arch": json.dumps(dict(arch), sort_keys=True),
        "git_commit": commit,
        "data_md5": data_md5,
        "params": json.dumps(params, sort_keys=True, default=str),
        "source": source,
        "min_size": str(min_size),
        "input": "float32 NCHW RGB in [0, 1], any height and width"
        + (" (its luminance is what is colorized)" if model_task(arch) == "colorize" else ""),
        "output": f"float32 NCHW RGB in [0, 1], height and width x{scale}",
    }


def parse(meta: Mapping[str, str] | None, where: str) -> dict[str, Any]:
    """Check ``meta`` is ours and decode it: ``scale`` as int, ``arch``/``params`` as dicts."""
    meta = dict(meta or {})
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ExportError(
            f"{where}: not a decrappify export: metadata lacks "
            f"{', '.join(missing)} (expected the keys {', '.join(REQUIRED)})"
        )
    if meta[FORMAT_KEY] != FORMAT or meta["task"] not in TASKS:
        raise ExportError(
            f"{where}: export format {meta[FORMAT_KEY]!r}, task {meta['task']!r}; "
            f"expected format {FORMAT!r}, task one of {', '.join(TASKS)}"
        )
    try:
        out = {
            **meta,
            "scale": int(meta["scale"]),
            "arch": json.loads(meta["arch"]),
            "params": json.loads(meta.get("params") or "{}"),
        }
    except (ValueError, TypeError) as exc:
        raise ExportError(f"{where}: unreadable metadata ({exc})") from None
    if not isinstance(out["arch"], dict):
        raise ExportError(f"{where}: metadata 'arch' is not a mapping of arguments")
    return out

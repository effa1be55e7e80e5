"""What a stage's outputs are computed from: one fingerprint for every resume, and its params.

A stage that resumes work an earlier run left (the training stages' rolling checkpoints,
crappify's persistent data/lr) keeps it only when its fingerprint matches: a hash of the
params that change results, the input files and the digest of the stage's code
(``code_deps.code_digest``). Params that only say how a run executes are ``HOW_IT_RUNS``:
they are left out of the fingerprint, so a run interrupted under one setting resumes under
another (8 GPUs, then 4 or a CPU; another tracking server; another logging cadence), and
out of the params DVC watches (``result_params``), so changing them reruns nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipelines.core.code_deps import code_digest, stage_module
from pipelines.core.files import sha256_file

# Keys, in any params section, that say how a run executes and not what it computes.
HOW_IT_RUNS = frozenset(
    {
        "launcher",
        "nproc",
        "device",  # processes and hardware (batch sizes are global)
        "tracking_uri",
        "experiment",  # where MLflow records the run
        "workers",  # data-loading / crappify processes
        "log_every",
        "sample_every",  # MLflow logging cadence
        "examples",  # images in the MLflow example grid
    }
)


# Where files are (base.paths) is no part of the fingerprint either: inputs count by content,
# and an output's place does not change its bytes. The folders a stage names stay DVC params
# (dvc.yaml's outputs are those paths), but these two: the resume checkpoints (a stage discards
# those made from anything else) and the timing logs hold no output.
WHERE = frozenset({"paths"})
NO_OUTPUT_PATHS = frozenset({"checkpoints", "logs"})


def what_it_computes(config: Any) -> Any:
    """``config`` (a plain dict of a stage config) without ``HOW_IT_RUNS`` and ``WHERE``."""
    if isinstance(config, Mapping):
        return {k: what_it_computes(v) for k, v in config.items() if k not in HOW_IT_RUNS | WHERE}
    if isinstance(config, (list, tuple)):
        return [what_it_computes(v) for v in config]
    return config


def fingerprint(
    config: Mapping[str, Any],
    inputs: Iterable[Path | str] = (),
    *,
    stage: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A hash of ``config`` (but ``HOW_IT_RUNS``), the code ``stage`` runs, ``extra`` (library
    versions) and the contents of the ``inputs`` files (directories: every file)."""
    what = {
        "config": what_it_computes(config),
        "code": code_digest(stage_module(stage)),
        "extra": dict(extra or {}),
    }
    h = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode())
    for item in inputs:
        path = Path(item)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            h.update(sha256_file(f).encode() if f.exists() else b"missing")
    return h.hexdigest()


def result_params(config_cls: type, section: str, paths: Iterable[str] = ()) -> list[str]:
    """The params keys that can change the outputs of the stage whose config is ``config_cls``
    (its ``section``, with ``base`` and the other sections it reads), as dvc.yaml lists them:
    one key per config field, ``HOW_IT_RUNS`` left out, and of ``base.paths`` the ``paths`` the
    stage names (``code_deps.paths_named``) but ``NO_OUTPUT_PATHS``."""
    hints = typing.get_type_hints(config_cls)
    keys: list[str] = []
    for f in dataclasses.fields(config_cls):
        if not f.init or f.name in HOW_IT_RUNS:
            continue
        other = "base" if f.name == "base" else f.metadata.get("section")
        if f.name in WHERE:
            keys += [f"{section}.{f.name}.{p}" for p in sorted(set(paths) - NO_OUTPUT_PATHS)]
        elif other:
            keys += [
                k
                for k in result_params(hints[f.name], other, paths)
                if not k.startswith("base.") or other == "base"
            ]
        else:
            keys.append(f"{section}.{f.name}")
    return keys

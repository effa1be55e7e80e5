"""Export one trained generator: ``<name>.safetensors``, ``<name>.onnx`` (optionally
``<name>.fp16.onnx``) and its model card (``<name>.md``, ``<name>.card.json``).

Everything is built and checked in memory first (the checkpoint loads without unpickling, the
ONNX graph matches PyTorch, the card renders); only then is each file written atomically, so a
failure leaves the output folder as it was. Used by ``decrappify export`` and the export stage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.files import sha256_file, write_bytes, write_text
from pipelines.exporting import card, metadata, onnx_file, safetensors_file
from pipelines.exporting.metadata import ExportError

CARD_SUFFIX, CARD_JSON_SUFFIX = ".md", ".card.json"


@dataclass(frozen=True)
class ExportSettings:
    opset: int = onnx_file.DEFAULT_OPSET
    fp16: bool = False
    # (height, width) LR px of the parity check: odd sizes, so padding and cropping are checked
    check_sizes: tuple[tuple[int, int], ...] = ((29, 61), (50, 35))
    tolerance: float = 1e-3
    # float16 arithmetic cannot meet the fp32 tolerance; half an 8-bit level still can
    fp16_tolerance: float = 2e-3


@dataclass(frozen=True)
class Source:
    net: Any  # the generator, eval mode on the CPU
    name: str  # file stem of the exports
    description: str  # where it came from, for the metadata
    params: Mapping[str, Any] | None = None  # shaping params carried by the source itself


def load_source(spec: str) -> Source:
    """The generator in a checkpoint (``.pt``), an exported ``.safetensors`` file or an MLflow
    model URI (``models:/NAME@ALIAS``, ``runs:/ID/PATH``); ExportError naming it otherwise."""
    from pipelines.training.checkpoint import CheckpointError

    if "://" in spec or spec.startswith(("models:/", "runs:/")):
        path = mlflow_weights(spec)
        return _from_safetensors(path, path.stem, spec)
    path = Path(spec)
    if path.suffix == safetensors_file.SUFFIX:
        return _from_safetensors(path, path.stem, path.name)
    from pipelines.inference.restore import load_generator

    try:
        net = load_generator(path)
    except CheckpointError as exc:
        raise ExportError(f"cannot export: {exc}; nothing written") from None
    return Source(net, path.stem, f"{path.name} sha256:{sha256_file(path)}")


def _from_safetensors(path: Path, name: str, where: str) -> Source:
    net = safetensors_file.load_generator(path)
    _, meta = safetensors_file.read(path)
    return Source(net, name, meta.get("source") or where, meta.get("params"))


def mlflow_weights(uri: str) -> Path:
    """The safetensors weights logged beside an MLflow model (see ``Tracker.log_model``)."""
    import mlflow

    from pipelines.running.tracking import fail_fast, project_tracking_uri

    fail_fast()

    try:
        mlflow.set_tracking_uri(project_tracking_uri())
        local = Path(mlflow.artifacts.download_artifacts(uri))
    except Exception as exc:  # MLflow's own errors, OSError: the same to the user
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{uri}: cannot download the model from MLflow: {text}") from None
    found = sorted(local.rglob(f"*{safetensors_file.SUFFIX}"))
    if not found:
        raise ExportError(
            f"{uri}: the MLflow model holds no {safetensors_file.SUFFIX} weights "
            "(a model logged by an older version: retrain or export its file)"
        )
    return found[0]


def build_metadata(source: Source, root: Path, params: Mapping[str, Any] | None) -> dict[str, str]:
    net = source.net
    scale = int(net.arch["scale"]) if "scale" in net.arch else int(getattr(net, "scale", 1))
    shaping = source.params or metadata.shaping_params(params or {}, scale)
    return metadata.build(
        net.arch,
        scale,
        commit=metadata.git_commit(root),
        data_md5=metadata.data_hash(root),
        params=shaping,
        source=source.description,
        min_size=onnx_file.size_rule(net)[0],
    )


def export_generator(
    source: Source,
    out: Path | str,
    *,
    root: Path,
    params: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    settings: ExportSettings = ExportSettings(),
) -> dict[str, Any]:
    """Write the exports of ``source`` into ``out``; returns the files and parity figures.

    ``params``: the params.yaml the generator was trained with (its shaping sections go in the
    metadata, unless the source carries its own); ``evaluation``: evaluate.json's content.
    """
    from pipelines.training.checkpoint import plain_copy

    out = Path(out)
    net = plain_copy(source.net)
    meta = build_metadata(source, root, params)
    name = source.name
    blobs: dict[str, bytes] = {
        f"{name}{safetensors_file.SUFFIX}": safetensors_file.to_bytes(net, meta)
    }
    data, diff = onnx_file.to_onnx(
        net,
        meta,
        opset=settings.opset,
        check_sizes=settings.check_sizes,
        tolerance=settings.tolerance,
    )
    blobs[f"{name}{onnx_file.SUFFIX}"] = data
    figures = {"onnx_max_abs_diff": diff}
    if settings.fp16:
        data16, diff16 = onnx_file.to_onnx(
            net,
            meta,
            opset=settings.opset,
            fp16=True,
            check_sizes=settings.check_sizes,
            tolerance=settings.fp16_tolerance,
        )
        blobs[f"{name}{onnx_file.FP16_SUFFIX}"] = data16
        figures["fp16_max_abs_diff"] = diff16
    files = {
        "weights (safetensors)": f"{name}{safetensors_file.SUFFIX}",
        "onnx": f"{name}{onnx_file.SUFFIX}",
    }
    if settings.fp16:
        files["onnx fp16"] = f"{name}{onnx_file.FP16_SUFFIX}"
    info = card.build(name, metadata.parse(meta, name), files, evaluation)
    info["parity"] = {"check_sizes": [list(s) for s in settings.check_sizes], **figures}
    texts = {
        f"{name}{CARD_SUFFIX}": card.markdown(info),
        f"{name}{CARD_JSON_SUFFIX}": json.dumps(info, indent=2, sort_keys=True) + "\n",
    }
    for file, blob in blobs.items():
        write_bytes(out / file, blob)
    for file, text in texts.items():
        write_text(out / file, text)
    return {"files": sorted([*blobs, *texts]), **figures}

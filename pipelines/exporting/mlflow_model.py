"""The generator as an MLflow model without pickles: the ONNX flavour, with a signature of
dynamic image dimensions, an input example and the safetensors weights beside the graph.

``mlflow.pyfunc.load_model(uri).predict(x)`` needs only mlflow and onnxruntime: ``x`` float32
N x 3 x H x W RGB in [0, 1], any H and W; it returns ``{"output": N x 3 x sH x sW}``. The
weights file lets ``decrappify export --model models:/...`` rebuild the PyTorch network.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.exporting import onnx_file, safetensors_file

# small, so the example stored with the model stays a few kB of JSON
EXAMPLE_SIZE = (24, 20)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    image = (-1, 3, -1, -1)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), image, onnx_file.INPUT)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), image, onnx_file.OUTPUT)]),
    )


def example(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, *EXAMPLE_SIZE), dtype=np.float32)


def log(
    model,
    name: str,
    registered_model_name: str | None = None,
    input_example: np.ndarray | None = None,
) -> Any:
    """Log ``model`` (a generator with ``arch``) to the active MLflow run; returns the
    ``ModelInfo``. Raises ``ExportError`` when its ONNX graph does not match PyTorch."""
    import mlflow.onnx
    import onnx

    from pipelines.core.config import ConfigError, read_params
    from pipelines.exporting.exports import Source, build_metadata
    from pipelines.running.tracking import repo_root
    from pipelines.training.checkpoint import plain_copy

    net = plain_copy(model)
    root = repo_root()
    try:
        params = read_params(root / "params.yaml")
    except ConfigError:
        params = {}
    meta = build_metadata(Source(net, name, f"MLflow model {name}"), root, params)
    graph, _ = onnx_file.to_onnx(net, meta)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{name}{safetensors_file.SUFFIX}"
        weights.write_bytes(safetensors_file.to_bytes(net, meta))
        return mlflow.onnx.log_model(
            onnx.load_from_string(graph),
            name=name,
            signature=signature(),
            input_example=example() if input_example is None else input_example,
            registered_model_name=registered_model_name,
            save_as_external_data=False,
            # the default requirements: inferring them would load the model in a subprocess
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            extra_files=[str(weights)],
            metadata={k: meta[k] for k in ("task", "scale")},
        )

"""The generator as ``<name>.onnx``, the form chaiNNer and any ONNX runtime take.

One input ``input``: float32 NCHW RGB in [0, 1], dynamic batch, height and width; one output
``output``: the same at ``scale`` times the size. Everything the network needs is inside the
graph: its normalisation, and any padding to the sizes it accepts (``SizeAdapter``).

The graph is traced (``torch.onnx.export(dynamo=False)``): the U-Net reflect-pads itself to a
multiple of 32 with amounts computed from the input's shape, and tracing records those shape
computations, so the graph pads any size exactly as PyTorch does. ``torch.export`` instead
refuses the U-Net's branch on the padding. The trace follows the branches the example input
takes, so the example is a size that needs padding (a zero pad is then still correct).

Parity before write: ``to_onnx`` runs ONNX Runtime against PyTorch on the check sizes and
raises ``ExportError`` beyond the tolerance, so a graph that would restore differently is never
written. ``OnnxRunner`` runs an exported file as a tile runner of ``restore`` (numpy in, numpy
out, no torch), refusing a file that is not one of ours.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.exporting import metadata
from pipelines.exporting.metadata import ExportError

SUFFIX = ".onnx"
FP16_SUFFIX = ".fp16.onnx"
INPUT, OUTPUT = "input", "output"
DEFAULT_OPSET = 17


def size_rule(net) -> tuple[int, int]:
    """(smallest input side, multiple every side must be) of a generator.

    A network states them as ``min_size``/``size_multiple`` attributes; the U-Net needs 16 px
    and pads itself to its stride, so it asks for no multiple.
    """
    from pipelines.networks.unet import MIN_SIZE, UNetGenerator

    default = (MIN_SIZE, 1) if isinstance(net, UNetGenerator) else (1, 1)
    return (
        int(getattr(net, "min_size", default[0])),
        int(getattr(net, "size_multiple", default[1])),
    )


def _nonneg(v):
    # traced shapes are tensors, eager ones ints: clamp records an op, max() would bake a value
    return v.clamp(min=0) if hasattr(v, "clamp") else max(v, 0)


def _adapter_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SizeAdapter(nn.Module):
        """Pads the input (replicating its last row and column) to a size ``net`` accepts and
        crops the padding off the output; inputs the network takes as they are pass unchanged.
        Runs ``net`` in ``dtype`` with float32 outside."""

        def __init__(
            self,
            net: nn.Module,
            scale: int,
            min_size: int,
            multiple: int,
            dtype: torch.dtype = torch.float32,
        ):
            super().__init__()
            self.net, self.scale, self.min_size, self.multiple = net, scale, min_size, multiple
            self.dtype = dtype

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2], x.shape[-1]
            ph, pw = (-h) % self.multiple, (-w) % self.multiple
            # below the smallest size: pad further, by a whole number of multiples
            ph = (
                ph
                + (_nonneg(self.min_size - h - ph) + self.multiple - 1)
                // self.multiple
                * self.multiple
            )
            pw = (
                pw
                + (_nonneg(self.min_size - w - pw) + self.multiple - 1)
                // self.multiple
                * self.multiple
            )
            y = self.net(F.pad(x, (0, pw, 0, ph), mode="replicate").to(self.dtype))
            return y[..., : h * self.scale, : w * self.scale].float()

    return SizeAdapter


def adapt(net, scale: int, dtype=None):
    """``net`` (eval mode, plain weights) wrapped so that it takes any input size."""
    import torch

    min_size, multiple = size_rule(net)
    return _adapter_class()(net, scale, min_size, multiple, dtype or torch.float32).eval()


def _trace_example(min_size: int, multiple: int) -> tuple[int, int]:
    """An input size that takes every padding branch: above the smallest size, not a multiple
    of 32 (the U-Net's stride) nor of the network's multiple."""
    side = 2 * max(min_size, 16) + 13
    while side % 32 == 0 or (multiple > 1 and side % multiple == 0):
        side += 1
    return side, side - 8 if (side - 8) % 32 else side - 9


def to_onnx(
    net,
    meta: dict[str, str],
    *,
    opset: int = DEFAULT_OPSET,
    check_sizes: Sequence[tuple[int, int]] = ((29, 61), (50, 35)),
    tolerance: float = 1e-3,
    fp16: bool = False,
    seed: int = 0,
) -> tuple[bytes, float]:
    """The ONNX graph of the generator ``net`` (plain weights, eval mode) with ``meta`` as
    metadata, and its largest absolute difference from PyTorch on ``check_sizes`` (h, w).

    ``fp16``: weights and arithmetic in float16, input and output still float32.
    Raises ``ExportError`` when the difference exceeds ``tolerance``.
    """
    import onnx
    import torch

    scale = int(meta["scale"])
    net = net.float().eval()
    model = adapt(
        net if not fp16 else _half_copy(net), scale, torch.float16 if fp16 else torch.float32
    )
    h, w = _trace_example(model.min_size, model.multiple)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the tracer warns about every shape it turns into a value; they are the intended ones
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, h, w),),
            buf,
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=opset,
            dynamic_axes={
                INPUT: {0: "batch", 2: "height", 3: "width"},
                OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"},
            },
        )
    proto = onnx.load_from_string(buf.getvalue())
    # the crop hides from the tracer that the output keeps 3 channels; tools read it here
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3
    onnx.helper.set_model_props(proto, {**meta, "precision": "fp16" if fp16 else "fp32"})
    proto.producer_name = "decrappify"
    data = proto.SerializeToString()
    diff = parity(data, net, model, check_sizes, seed)
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"ONNX graph differs from PyTorch by {diff:.3g} (max abs, tolerance "
            f"{tolerance:g}) on sizes {list(check_sizes)}: not written"
        )
    return data, diff


def _half_copy(net):
    import copy

    return copy.deepcopy(net).half()


def parity(data: bytes, net, adapted, sizes: Sequence[tuple[int, int]], seed: int = 0) -> float:
    """Largest absolute difference between ONNX Runtime and PyTorch (``net`` where it takes
    the size, else ``adapted``) on seeded random images of ``sizes``."""
    import torch

    session = _session(data)
    min_size, _ = size_rule(net)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for h, w in sizes:
        x = rng.random((1, 3, h, w), dtype=np.float32)
        reference = net if min(h, w) >= min_size else adapted
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).float().numpy()
        got = session.run([OUTPUT], {INPUT: x})[0]
        if got.shape != expected.shape:
            raise ExportError(
                f"ONNX output {got.shape} for input {x.shape}; PyTorch gives "
                f"{expected.shape}: not written"
            )
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def _session(model: bytes | str | Path, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph optimisations
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


EXPECTED = (
    "one float32 input of shape N x 3 x H x W (RGB in [0, 1], dynamic H and W) and "
    "one 4-D output N x 3 x sH x sW, with decrappify metadata"
)


class OnnxRunner:
    """An exported ONNX file as a ``restore`` tile runner: RGB uint8 HxWx3 tile in, float32
    RGB in [0, 1] at ``scale`` times the size out. Refuses files that are not ours."""

    def __init__(self, path: Path | str, threads: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: ONNX file not found")
        try:
            self.session = _session(self.path, threads)
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{self.path}: not a loadable ONNX model ({text})") from None
        self._check_io()
        self.meta = metadata.parse(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.scale = self.meta["scale"]

    def _check_io(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        problem = None
        if len(inputs) != 1:
            problem = f"{len(inputs)} inputs"
        elif len(inputs[0].shape) != 4:
            problem = f"input of rank {len(inputs[0].shape)} ({inputs[0].shape})"
        elif inputs[0].shape[1] != 3:
            problem = f"input with {inputs[0].shape[1]} channels ({inputs[0].shape})"
        elif inputs[0].type != "tensor(float)":
            problem = f"input of type {inputs[0].type}"
        elif not outputs or len(outputs[0].shape) != 4 or outputs[0].shape[1] != 3:
            problem = f"output {outputs[0].shape if outputs else 'missing'}"
        if problem:
            raise ExportError(
                f"{self.path}: not a decrappify export: it has {problem}; expected {EXPECTED}"
            )
        self.input, self.output = inputs[0].name, outputs[0].name

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(tile.transpose(2, 0, 1)[None], dtype=np.float32)
        np.divide(x, 255.0, out=x)
        y = self.session.run([self.output], {self.input: x})[0][0]
        return np.clip(y, 0.0, 1.0).transpose(1, 2, 0)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "scale": self.scale, "arch": self.meta["arch"]}

"""The precision and memory-layout rules of pipelines/core/runtime.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.core import runtime
from pipelines.core.runtime import autocast_dtype, to_device, training_dtype

CPU = torch.device("cpu")


def cpuinfo(monkeypatch, text: str | None) -> None:
    """/proc/cpuinfo reads as ``text`` (None: it cannot be read)."""
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if str(self) != "/proc/cpuinfo":
            return real(self, *args, **kwargs)
        if text is None:
            raise FileNotFoundError(2, "No such file or directory", "/proc/cpuinfo")
        return text

    monkeypatch.setattr(Path, "read_text", read_text)


@pytest.mark.parametrize(
    "flags, native",
    [
        ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
        ("fpu avx2 amx_bf16 amx_tile", True),
        ("fpu avx2 avx512f avx512bw avx512_vnni", False),
        (None, False),
    ],
)
def test_training_takes_bf16_on_the_cpu_only_with_bf16_instructions(monkeypatch, flags, native):
    cpuinfo(monkeypatch, None if flags is None else f"processor\t: 0\nflags\t\t: {flags}\n")
    assert runtime.cpu_computes_bf16() is native
    assert training_dtype(CPU, "auto") == (torch.bfloat16 if native else None)
    # asked for, each precision is what it says, on any CPU
    assert training_dtype(CPU, "fp32") is None
    assert training_dtype(CPU, "bf16") == torch.bfloat16
    # inference on the CPU stays fp32 unless bf16 is asked for
    assert autocast_dtype(CPU, "auto") is None
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16


def test_to_device_keeps_values_in_the_channels_last_layout():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.rand(2, 3, 5, 7)
    expected = conv(x)
    moved, xs = to_device(conv, CPU), to_device(x, CPU)
    assert xs.is_contiguous(memory_format=torch.channels_last) and torch.equal(xs, x)
    assert moved.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(moved(xs), expected, atol=1e-6)

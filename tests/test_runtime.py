"""The precision and memory-layout rules of pipelines/core/runtime.py."""

from __future__ import annotations

import os
import subprocess
import sys
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


ALIGNMENT_PROBE = """
import pipelines, torch
torch.set_num_threads(1)
torch.manual_seed(0)
w, v = torch.randn(512, 2305), torch.randn(2305)
results = []
for offset in range(16):  # the same values at 16 alignments of the buffer
    wb, vb = torch.empty(w.numel() + offset), torch.empty(v.numel() + offset)
    wb[offset:], vb[offset:] = w.flatten(), v
    results.append(torch.mv(wb[offset:].view_as(w), vb[offset:]))
print(sum(not torch.equal(r, results[0]) for r in results))
"""


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch without MKL")
def test_a_matrix_vector_product_does_not_depend_on_where_its_operands_lie():
    # a fresh process: MKL takes its reproducibility setting at its first call only
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    done = subprocess.run(
        [sys.executable, "-c", ALIGNMENT_PROBE], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"

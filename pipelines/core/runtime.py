"""Device choice, seeding, determinism and mixed precision, decided in one place."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def cpu_cores() -> int:
    """The cores this process may run on: its cpuset or taskset share (not a CPU quota such as
    docker's --cpus), counting each hardware thread."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("base.device: 'cuda' was asked for but no CUDA device is available")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Inference: bf16 on CUDA by default; on the CPU only when asked for, so evaluate's scores
    and restore's outputs there are fp32's (and match the ONNX exports)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def training_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Training: as ``autocast_dtype``, and bf16 by default on a CPU with bf16 instructions too,
    where generator pretraining ran 2.3x faster than in fp32 (README, Results); other CPUs
    lack the instructions, so ``auto`` keeps fp32 there."""
    if precision == "auto" and device.type == "cpu" and cpu_computes_bf16():
        return torch.bfloat16
    return autocast_dtype(device, precision)


def cpu_computes_bf16() -> bool:
    """Whether the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), read from Linux's
    /proc/cpuinfo; False where that cannot be read."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", info) is not None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(x, device: torch.device):
    """A module or an NCHW batch on ``device`` in the channels-last layout, the one oneDNN and
    cuDNN convolve fastest (with bf16 autocast on a 2-core AVX512-BF16 CPU, generator
    pretraining went from 18.2 to 42.5 crops/s: README, Results)."""
    return x.to(device, memory_format=torch.channels_last)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def make_deterministic() -> None:
    """Same params, same outputs: deterministic kernels where torch has them."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def hash_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` that does not depend on the process."""
    import hashlib

    h = hashlib.sha256(repr((seed,) + tuple(keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1

"""What every training stage does first: seed, deterministic kernels, device, ranks, precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.core.config import BaseConfig
from pipelines.core.runtime import make_deterministic, pick_device, seed_everything, training_dtype
from pipelines.training import distributed


@dataclass(frozen=True)
class Session:
    """Where a training stage runs: its device, its place among torchrun ranks, and the
    autocast dtype (None = fp32)."""

    device: torch.device
    ranks: distributed.Ranks
    dtype: torch.dtype | None


def start(base: BaseConfig) -> Session:
    seed_everything(base.seed)
    make_deterministic()
    device = pick_device(base.device)
    ranks = distributed.init(device)
    return Session(device, ranks, training_dtype(device, base.precision))

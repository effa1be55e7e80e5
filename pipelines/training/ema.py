"""An exponential moving average of a model's weights (the "EMA model" of BasicSR, Real-ESRGAN
and most current super-resolution trainers).

After each optimizer step, ``update`` moves every floating-point parameter and buffer of the
average towards the trained model's: ``avg = decay * avg + (1 - decay) * current``. The
average is a smoother, usually better generator than the last iterate, at the cost of one
copy of the weights and one fused multiply-add per step. Early on the decay is capped at
``(1 + n) / (10 + n)`` after ``n`` updates (TensorFlow's ExponentialMovingAverage), so the
average is not dominated by the random initialisation in a short run. A model that starts
trained (the GAN phase's pretrained generator) averages at ``decay`` from the first update
(``warmup=False``): there its starting weights are worth keeping.

Its state (the averaged weights and the update count) goes into the rolling checkpoint, so a
resumed run continues the same average as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipelines.training.checkpoint import unwrap


class ModelEMA:
    """The averaged copy of ``model`` (a network with an ``arch`` dict), in eval mode."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay: {decay} is not in [0, 1)")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        # rebuilt from ``arch`` (not deep-copied, not folded): same parametrizations, so the same
        # state dict keys as the trained model
        source = unwrap(model)
        self.model = type(source)(**source.arch)
        self.model.load_state_dict(source.state_dict())
        device = next(source.parameters()).device
        self.model.to(device).eval().requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        source = unwrap(model).state_dict()
        for name, avg in self.model.state_dict().items():
            value = source[name].detach()
            if avg.is_floating_point():
                avg.mul_(d).add_(value.to(avg.dtype), alpha=1.0 - d)
            else:  # counters such as BatchNorm's num_batches_tracked follow the model
                avg.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])

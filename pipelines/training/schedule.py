"""Learning-rate and momentum schedules as pure functions of the step (resume needs no state)."""

from __future__ import annotations

import math


def _cos(start: float, end: float, frac: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * frac)) / 2


def one_cycle(
    step: int,
    total: int,
    max_lr: float,
    pct_start: float = 0.25,
    div: float = 25.0,
    final_div: float = 1e4,
) -> float:
    """fastai v1's one-cycle: cosine warm-up from max/div, cosine down to max/(div*final_div)."""
    if total <= 1:
        return max_lr
    warm = max(1, int(round(total * pct_start)))
    if step < warm:
        return _cos(max_lr / div, max_lr, step / warm)
    frac = min(1.0, (step - warm) / max(1, total - 1 - warm))
    return _cos(max_lr, max_lr / (div * final_div), frac)


def one_cycle_beta1(
    step: int, total: int, pct_start: float = 0.25, high: float = 0.95, low: float = 0.85
) -> float:
    """Adam's beta1 moves against the learning rate: 0.95 -> 0.85 -> 0.95."""
    if total <= 1:
        return high
    warm = max(1, int(round(total * pct_start)))
    if step < warm:
        return _cos(high, low, step / warm)
    return _cos(low, high, min(1.0, (step - warm) / max(1, total - 1 - warm)))


def warm_up(step: int, warmup: int, lr: float) -> float:
    """``lr`` reached linearly over the first ``warmup`` steps (step 0 is the first): the
    first step takes lr / warmup. 0 = none."""
    if warmup <= 0 or step >= warmup:
        return lr
    return lr * (step + 1) / warmup

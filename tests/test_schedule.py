import math

import pytest

from pipelines.training.schedule import one_cycle, one_cycle_beta1


def test_one_cycle_shape():
    total, peak = 100, 1e-3
    lrs = [one_cycle(s, total, peak, pct_start=0.25) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 25)
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 25
    assert lrs[-1] == pytest.approx(peak / 25 / 1e4)
    assert all(a <= b for a, b in zip(lrs[:25], lrs[1:26]))
    assert all(a >= b for a, b in zip(lrs[25:], lrs[26:]))


def test_beta1_moves_against_lr():
    total = 40
    betas = [one_cycle_beta1(s, total, 0.25) for s in range(total)]
    assert betas[0] == pytest.approx(0.95) and min(betas) == pytest.approx(0.85)
    assert betas[-1] == pytest.approx(0.95)


def test_single_step_is_peak():
    assert one_cycle(0, 1, 0.1) == 0.1 and math.isfinite(one_cycle_beta1(0, 1))

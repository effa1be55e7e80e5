import math

import pytest

from pipelines.training.schedule import one_cycle, one_cycle_beta1, warm_up


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


def test_warm_up_is_linear_and_then_constant():
    lrs = [warm_up(s, 4, 1e-4) for s in range(7)]
    assert lrs[:4] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4])
    assert lrs[4:] == [1e-4] * 3
    assert [warm_up(s, 0, 1e-4) for s in range(3)] == [1e-4] * 3

"""The GAN phase's checkpoint rule over several validation sets (crappy and clean photos)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipelines.core.config import ConfigError, load
from pipelines.train_gan import TrainGanConfig
from pipelines.training.gan import Selection, better, blended, choose, eligible, score_key

from pipeline_repo import tiny_params

BOTH = ("crappy", "clean")
START = {"psnr_y": 30.0, "clean_psnr_y": 32.0, "haarpsi": 0.60, "clean_haarpsi": 0.70}


def test_the_crappy_set_keeps_the_bare_names():
    assert score_key("crappy", "psnr_y") == "psnr_y"
    assert score_key("clean", "psnr_y") == "clean_psnr_y"


def test_a_candidate_must_stay_within_the_drop_on_every_set():
    crappy_ok_clean_not = {**START, "psnr_y": 29.8, "clean_psnr_y": 31.4}
    assert eligible(crappy_ok_clean_not, START, 0.5)  # the crappy set alone lets it through
    assert not eligible(crappy_ok_clean_not, START, 0.5, kinds=BOTH)
    assert eligible({**START, "psnr_y": 29.6, "clean_psnr_y": 31.5}, START, 0.5, kinds=BOTH)


def test_the_select_metric_is_averaged_over_the_sets():
    sharper_on_crappy = {**START, "haarpsi": 0.64, "clean_haarpsi": 0.64}  # mean 0.64 < 0.65
    assert better(sharper_on_crappy, START, "haarpsi")
    assert not better(sharper_on_crappy, START, "haarpsi", kinds=BOTH)
    assert better({**START, "haarpsi": 0.62, "clean_haarpsi": 0.69}, START, "haarpsi", kinds=BOTH)
    # lower is better for a distance
    start = {"stlpips": 0.4, "clean_stlpips": 0.3}
    assert better({"stlpips": 0.3, "clean_stlpips": 0.35}, start, "stlpips", kinds=BOTH)


@pytest.mark.parametrize("kinds", [[], ["crappy", "crappy"], ["crappy", "blurry"]])
def test_bad_validation_sets_name_the_key(kinds):
    params = tiny_params({"train_gan": {"valid_degradations": kinds}})
    with pytest.raises(ConfigError, match="valid_degradations.*crappy, clean"):
        load(TrainGanConfig, "train_gan", params)


def test_a_blend_is_the_lerp_of_the_start_and_the_candidate():
    torch.manual_seed(0)
    model = nn.BatchNorm2d(3)  # float weights and an integer buffer
    model.weight.data.uniform_()
    start = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for alpha in (0.25, 0.5):
        mixed = blended(model, start, alpha).state_dict()
        assert torch.allclose(mixed["weight"], alpha * model.weight.data)
        assert mixed["num_batches_tracked"] == model.num_batches_tracked
    assert model.weight.data.max() > 0  # the model itself is untouched


class Shift(nn.Module):
    """One weight w; the scorer below reads its scores off it."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))


def colour_scores(model: nn.Module, step: int) -> dict:
    """PSNR falls by 1 dB per unit of w; the colourfulness error by 8 (it starts at 10)."""
    w = model.w.item()
    return {"step": step, "psnr": 20.0 - w, "colorfulness_error": 10.0 - 8.0 * w}


RULE = Selection("colorfulness_error", 0.6, "colorize", blends=(0.25, 0.75, 0.5))


def test_a_too_costly_better_candidate_is_replaced_by_its_first_blend_within_the_limit():
    start = colour_scores(Shift(0.0), 0)
    cand = colour_scores(Shift(1.0), 10)  # costs 1 dB: over the limit
    kept, model = choose(
        cand, Shift(1.0), start, start, RULE, Shift(0.0).state_dict(), colour_scores
    )
    # 0.75 costs 0.75 dB; 0.5 costs 0.5, within 0.6
    assert kept == {"step": 10, "psnr": 19.5, "colorfulness_error": 6.0, "blend": 0.5}
    assert model.w.item() == 0.5


def test_blends_are_scored_only_as_far_as_needed():
    scored = []

    def score(model, step):
        scored.append(step)
        return colour_scores(model, step)

    start = colour_scores(Shift(0.0), 0)
    weights = Shift(0.0).state_dict()
    cand = colour_scores(Shift(0.5), 10)
    assert choose(cand, Shift(0.5), start, start, RULE, weights, score)[0] == cand
    best = {**start, "colorfulness_error": 1.0}  # the candidate is not better than this
    assert (
        choose(colour_scores(Shift(1.0), 20), Shift(1.0), start, best, RULE, weights, score) is None
    )
    assert scored == []
    # a candidate whose smallest blend already costs too much is scored once more
    far = colour_scores(Shift(4.0), 30)  # its 0.25 blend costs 1 dB
    assert choose(far, Shift(4.0), start, start, RULE, weights, score) is None
    assert scored == [30]
    # without blends a too costly candidate is simply not kept
    no_blends = Selection("colorfulness_error", 0.6, "colorize")
    assert (
        choose(colour_scores(Shift(1.0), 20), Shift(1.0), start, start, no_blends, weights, score)
        is None
    )


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5])
def test_a_blend_share_outside_0_1_names_the_key(alpha):
    params = tiny_params({"train_gan": {"blends": [0.5, alpha]}})
    with pytest.raises(ConfigError, match=f"blends: {alpha}"):
        load(TrainGanConfig, "train_gan", params)

"""The GAN phase's checkpoint rule over several validation sets (crappy and clean photos)."""

from __future__ import annotations

import pytest

from pipelines.core.config import ConfigError, load
from pipelines.train_gan import TrainGanConfig
from pipelines.training.gan import better, eligible, score_key

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

"""ST-LPIPS: the trained weights load strictly, behave as a distance, and reproduce the
stlpips-pytorch package's own values (run in a subprocess with its unused imports stubbed)."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.imaging.images import read_rgb
from pipelines.imaging.tensors import to_tensor as image_tensor
from pipelines.scoring import metrics, stlpips
from pipelines.scoring.metrics import score

SET5 = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "Set5"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def butterfly():
    return read_rgb(SET5 / "butterfly.png")[64:160, 48:160]  # 96x112, real texture


def noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """A batch of one: 1x3xHxW in [0, 1]."""
    return image_tensor(img)[None]


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_the_shipped_weights_load_every_key_without_importing_the_package(net):
    path = stlpips.weights_file(net)
    assert path is not None and path.is_file(), "stlpips-pytorch is a dependency"
    model = stlpips.load(net)  # strict=True inside: a missing or extra key raises
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(saved)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert "stlpips_pytorch" not in sys.modules


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_identical_images_score_zero_and_more_noise_scores_higher(net, butterfly):
    model = stlpips.load(net)
    x = to_tensor(butterfly)
    with torch.inference_mode():
        assert float(model(x, x)[0]) == 0.0
        scores = [float(model(to_tensor(noisy(butterfly, s)), x)[0]) for s in (3, 10, 30)]
    assert 0 < scores[0] < scores[1] < scores[2], scores


def test_a_batch_scores_each_pair_and_bad_shapes_are_refused(butterfly):
    model = stlpips.load("vgg")
    x = to_tensor(butterfly)
    y = to_tensor(noisy(butterfly, 10))
    with torch.inference_mode():
        both = model(torch.cat([x, y]), torch.cat([y, y]))
        assert both.shape == (2,)
        assert float(both[0]) == pytest.approx(float(model(x, y)[0]), abs=1e-6)
        assert float(both[1]) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        model(x, y[..., :-1])
    with pytest.raises(ValueError, match="at least 18 px"):
        model(x[..., :17, :17], x[..., :17, :17])


def test_a_kept_reference_scores_as_a_fresh_pass_and_another_reference_replaces_it(butterfly):
    model = stlpips.load("vgg")
    truth, other = to_tensor(butterfly), to_tensor(noisy(butterfly, 5, seed=3))
    outputs = [to_tensor(noisy(butterfly, s, seed=s)) for s in (4, 12)]
    with torch.inference_mode():
        fresh = [float(model(x, truth)[0]) for x in outputs]
        kept = [float(model.distance_to(x, truth, "truth")[0]) for x in outputs]
        # the same shape under another key: scored against the new reference, not the kept one
        against_other = float(model.distance_to(outputs[0], other, "other")[0])
        assert against_other == pytest.approx(float(model(outputs[0], other)[0]), abs=1e-6)
    assert kept == pytest.approx(fresh, abs=1e-6)
    assert against_other != pytest.approx(fresh[0], abs=1e-4)


def test_score_tells_references_of_one_shape_apart(butterfly):
    out = noisy(butterfly, 10)
    a, b = score(out, butterfly, 4)["stlpips"], score(out, out, 4)["stlpips"]
    assert a > 0 and b == 0.0
    assert score(out, butterfly, 4)["stlpips"] == a


REFERENCE = r"""
import json, sys, types
import torch
# the package imports these at import time and never calls them here
sys.modules["IPython"] = types.SimpleNamespace(embed=lambda *a, **k: None)
sys.modules["torchsummary"] = types.SimpleNamespace(summary=lambda *a, **k: None)
from stlpips_pytorch import stlpips
pairs = torch.load(sys.argv[1], weights_only=True)
out = {}
for net in ("vgg", "alex"):
    model = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False)
    with torch.no_grad():
        out[net] = [float(model(a, b, normalize=True).flatten()[0]) for a, b in pairs]
print(json.dumps(out))
"""


def test_values_match_the_package_implementation(tmp_path, butterfly):
    head = read_rgb(SET5 / "head.png")[100:164, 90:170]
    shifted = np.roll(butterfly, 1, axis=1)
    cases = [
        (butterfly, noisy(butterfly, 8)),
        (butterfly, shifted),
        (butterfly, butterfly[:, ::-1].copy()),
        (head, noisy(head, 20, seed=1)),
    ]
    pairs = [(to_tensor(a), to_tensor(b)) for a, b in cases]
    torch.save(pairs, tmp_path / "pairs.pt")
    done = subprocess.run(
        [sys.executable, "-c", REFERENCE, str(tmp_path / "pairs.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = json.loads(done.stdout.strip().splitlines()[-1])
    for net in ("vgg", "alex"):
        model = stlpips.load(net)
        with torch.inference_mode():
            ours = [float(model(a, b)[0]) for a, b in pairs]
        assert ours == pytest.approx(expected[net], abs=1e-4), net
        assert min(expected[net]) > 1e-3  # real distances, not a degenerate 0 == 0
        # shift tolerance: a one-pixel shift is closer than faint noise
        assert ours[1] < ours[0], net


def test_score_reports_it_lower_is_better(butterfly):
    assert metrics.HIGHER_IS_BETTER["stlpips"] is False
    assert metrics.stlpips_available()
    s = score(noisy(butterfly, 10), butterfly, 4)
    assert s["stlpips"] > 0 and score(butterfly, butterfly, 4)["stlpips"] == 0.0
    assert "stlpips" not in score(butterfly[:24, :24], butterfly[:24, :24], 4)  # 16 px left


def test_without_weights_it_is_said_once_and_never_computed(
    tmp_path, monkeypatch, caplog, butterfly
):
    monkeypatch.setattr(stlpips, "weights_file", lambda net="vgg": tmp_path / f"{net}.pth")
    stlpips.cached.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="pipelines.scoring.stlpips"):
            assert not metrics.stlpips_available()
            first = score(noisy(butterfly, 10), butterfly, 4)
            second = score(butterfly, butterfly, 4)
        assert "stlpips" not in first and "stlpips" not in second
        assert "psnr_y" in first
        said = [r for r in caplog.records if "ST-LPIPS" in r.getMessage()]
        assert len(said) == 1 and "pip install stlpips-pytorch" in said[0].getMessage()
        with pytest.raises(FileNotFoundError, match="vgg.pth"):
            stlpips.load("vgg")
    finally:
        stlpips.cached.cache_clear()


def test_gan_selection_refuses_stlpips_without_weights(tmp_path, monkeypatch):
    from pipelines.core.config import ConfigError, load
    from pipelines.train_gan import TrainGanConfig

    cfg = load(
        TrainGanConfig, "train_gan", {"crappify": {}, "train_gan": {"select_metric": "stlpips"}}
    )
    assert cfg.select_metric == "stlpips"
    monkeypatch.setattr(stlpips, "weights_file", lambda net="vgg": tmp_path / f"{net}.pth")
    stlpips.cached.cache_clear()
    try:
        with pytest.raises(ConfigError, match="stlpips-pytorch"):
            load(
                TrainGanConfig,
                "train_gan",
                {"crappify": {}, "train_gan": {"select_metric": "stlpips"}},
            )
    finally:
        stlpips.cached.cache_clear()

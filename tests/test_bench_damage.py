"""``python -m bench damage``: each part of the degradation on its own, on real Set5 photos."""

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench import damage
from pipelines.core.config import load
from pipelines.datasets.evaluation import folder_images
from pipelines.imaging.degradations import CrappifyConfig, downscale
from pipelines.imaging.images import read_rgb
from pipelines.imaging.resize import upscale
from pipelines.networks.srresnet import build_srresnet
from pipelines.scoring.metrics import psnr_y, rgb_to_y
from pipelines.training import checkpoint

SET5 = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "Set5"


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "Set5"
    out.mkdir()
    for name in ("bird.png", "woman.png"):
        shutil.copy(SET5 / name, out / name)
    return out


def damage_args(params: Path, **given) -> argparse.Namespace:
    """``bench damage``'s arguments: none given but the params file, unless ``given``."""
    args = {
        "hr_dirs": None,
        "damage_models": None,
        "damage_qualities": None,
        "damage_self_ensemble": False,
        "damage_draws": None,
    }
    return argparse.Namespace(params=params, **{**args, **given})


def crappify_config() -> CrappifyConfig:
    return load(CrappifyConfig, "crappify", {"base": {}, "crappify": {}})


def test_each_row_degrades_by_its_part_alone(folder):
    cfg = crappify_config()
    rows = damage.variants(cfg, [10, 70])
    assert list(rows) == ["downscale", "text", "JPEG", "JPEG 10", "JPEG 70", "crappy"]
    hr = read_rgb(folder / "bird.png")
    lr = {
        row: damage.degraded(hr, spec, cfg, "bird.png", cfg.base.seed)[0]
        for row, spec in rows.items()
    }
    assert np.array_equal(lr["downscale"], downscale(hr, 4, "area"))
    # the crappy row is evaluate's <folder>/crappy input, bit for bit
    evaluated = next(
        image
        for image in folder_images(folder, cfg.base, cfg, "crappy", 0)
        if image.name == "bird.png"
    )
    assert np.array_equal(lr["crappy"], evaluated.lr)
    clean = lr["downscale"].astype(float)

    def error(row):
        return float(np.abs(lr[row] - clean).mean())

    # JPEG rows draw no text, lower qualities lose more; the text row, at quality 100, keeps
    # the luminance outside its white strokes (its 4:2:0 chroma is subsampled still)
    assert error("JPEG 10") > error("JPEG 70") > 0
    text_y = rgb_to_y(lr["text"]) - rgb_to_y(lr["downscale"])
    assert text_y.max() > 100 and np.median(np.abs(text_y)) <= 1
    assert (rgb_to_y(lr["JPEG 10"]) - rgb_to_y(lr["downscale"])).max() < 100
    # the mask of the text-exact row covers every stroke (where the crappy LR is far above the
    # same draw without text), over the HR region the LR covers
    _, region, mask = damage.degraded(hr, rows["crappy"], cfg, "bird.png", cfg.base.seed)
    assert mask.shape == region.shape[:2] and 0 < mask.mean() < 0.5
    strokes = rgb_to_y(lr["crappy"]) - rgb_to_y(lr["JPEG"]) > 100
    assert strokes.any() and mask[np.kron(strokes, np.ones((4, 4), bool))].all()
    assert damage.degraded(hr, None, cfg, "bird.png", cfg.base.seed)[2] is None
    assert damage.degraded(hr, rows["JPEG"], cfg, "bird.png", cfg.base.seed)[2] is None


def test_a_restorer_that_is_bicubic_gains_nothing_in_any_row(folder, tmp_path):
    """An untrained residual generator returns the bicubic upscale: ~0 dB in every row."""
    model = build_srresnet(scale=4, channels=4, blocks=0)
    path = tmp_path / "models/generator.pt"
    checkpoint.save(path, checkpoint.model_payload("generator", model.arch, model))
    # a random residual: no longer bicubic, and not the same under flips and turns
    torch.manual_seed(0)
    torch.nn.init.normal_(model.to_rgb.weight, std=0.05)
    noisy = tmp_path / "models/noisy.pt"
    checkpoint.save(noisy, checkpoint.model_payload("generator", model.arch, model))
    params = tmp_path / "params.yaml"
    # the draws of the params' evaluate section, as evaluate scores the folder
    params.write_text(
        yaml.safe_dump({"base": {"device": "cpu"}, "crappify": {}, "evaluate": {"folder_draws": 2}})
    )
    args = damage_args(
        params,
        hr_dirs=[str(folder)],
        damage_models=[path, noisy],
        damage_qualities=[30],
        damage_self_ensemble=True,
    )
    report = damage.run(args)
    assert report.params["draws"] == 2
    results = report.data["Set5"]
    # every row that draws its damage scores each photo under 2 draws, evaluate's own images
    cfg = crappify_config()
    images = list(folder_images(folder, cfg.base, cfg, "crappy", 0, draws=2))
    assert [i.name for i in images] == ["bird.png", "woman.png", "bird.png#1", "woman.png#1"]
    expected = np.mean([psnr_y(upscale(i.lr, 4), i.hr, border=4) for i in images])
    assert results["crappy"]["bicubic"] == pytest.approx(expected, abs=1e-9)
    assert not damage.draws_anything(None) and damage.draws_anything(cfg)
    assert not damage.draws_anything(damage.variants(cfg, [30])["JPEG 30"])
    assert list(results) == ["downscale", "text", "JPEG", "JPEG 30", "crappy", damage.TEXT_EXACT]
    for row in results.values():
        assert row["generator"] == pytest.approx(row["bicubic"], abs=0.05)
        # bicubic commutes with flips and turns: averaged over them it is still bicubic
        assert row["generator_ensemble"] == pytest.approx(row["generator"], abs=0.01)
        assert abs(row["noisy_ensemble"] - row["noisy"]) > 0.01
    assert (
        results["crappy"]["bicubic"] < results["JPEG"]["bicubic"] < results["downscale"]["bicubic"]
    )
    # exact text pixels take back most of what the text cost bicubic
    assert results["crappy"]["bicubic"] + 0.3 < results[damage.TEXT_EXACT]["bicubic"]
    assert results[damage.TEXT_EXACT]["bicubic"] < results["downscale"]["bicubic"]
    assert "bicubic +" in report.tables[0]["note"]


def test_a_colorizing_config_is_refused(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {"task": "colorize", "scale": 1}, "crappify": {}}))
    args = damage_args(params)
    with pytest.raises(SystemExit, match="colorize"):
        damage.run(args)


def test_a_model_of_another_scale_is_refused(tmp_path):
    model = build_srresnet(scale=2, channels=4, blocks=0)
    path = tmp_path / "x2.pt"
    checkpoint.save(path, checkpoint.model_payload("generator", model.arch, model))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {"scale": 4}, "crappify": {}, "evaluate": {}}))
    args = damage_args(params, damage_models=[path])
    with pytest.raises(SystemExit, match=r"x2\.pt upscales x2; base\.scale .* is 4"):
        damage.run(args)


def test_draws_below_one_are_refused(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {}, "crappify": {}, "evaluate": {}}))
    args = damage_args(params, damage_draws=0)
    with pytest.raises(SystemExit, match="--draws 0 is below 1"):
        damage.run(args)
    args.damage_draws = None
    params.write_text(yaml.safe_dump({"base": {}, "crappify": {}, "evaluate": {"folder_draws": 0}}))
    with pytest.raises(SystemExit, match="folder_draws.*or give --draws"):
        damage.run(args)

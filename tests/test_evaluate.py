"""The evaluate stage end to end on tiny images, with generators saved in the checkpoint format."""

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pipelines import evaluate
from pipelines.core.config import ConfigError, load
from pipelines.evaluate import EvaluateConfig
from pipelines.imaging.images import read_rgb, write_image
from pipelines.imaging.resize import benchmark_lr, upscale
from pipelines.inference.restore import restore
from pipelines.scoring.metrics import psnr_y
from pipelines.training import checkpoint

# the standard SR benchmark images, in the `shared` folder beside the checkout
SET5 = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "Set5"


class Resampler(nn.Module):
    """A 'generator' that is exactly an OpenCV resampling of its input."""

    def __init__(self, method: str, scale: int):
        super().__init__()
        self.flag = {"bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}[method]
        self.scale = scale

    def forward(self, x):
        out = []
        for img in x:
            rgb = (img.permute(1, 2, 0) * 255).round().byte().numpy()
            big = cv2.resize(
                rgb, (rgb.shape[1] * self.scale, rgb.shape[0] * self.scale), interpolation=self.flag
            )
            out.append(torch.from_numpy(big).permute(2, 0, 1).float() / 255)
        return torch.stack(out)


def photo(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(x / 5), y * 255 / h, (x + y) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """data/hr/test + crappified data/lr/test (x4) and two saved resampling generators."""
    monkeypatch.chdir(tmp_path)
    for i, (name, (h, w)) in enumerate({"a.png": (72, 88), "sub/b.png": (83, 101)}.items()):
        hr = photo(h, w, i)
        write_image(tmp_path / "data/hr/test" / name, hr)
        lr = cv2.resize(hr, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
        write_image((tmp_path / "data/lr/test" / name).with_suffix(".jpg"), lr, jpeg_quality=60)
    for method in ("bicubic", "nearest"):
        checkpoint.save(
            tmp_path / f"models/{method}_net.pt",
            checkpoint.model_payload(
                "generator", {"method": method, "scale": 4}, Resampler(method, 4)
            ),
        )
    return tmp_path


def set5(workspace: Path, *names: str) -> Path:
    """A folder of these Set5 photos in the workspace."""
    folder = workspace / "Set5"
    folder.mkdir()
    for name in names:
        shutil.copy(SET5 / name, folder / name)
    return folder


def config(**section):
    section.setdefault("models", ["models/bicubic_net.pt", "models/nearest_net.pt"])
    return load(
        EvaluateConfig, "evaluate", {"base": {"device": "cpu"}, "crappify": {}, "evaluate": section}
    )


def test_a_generator_that_is_bicubic_gains_exactly_nothing(workspace):
    # tile 16 / overlap 8 on 18-25 px LR images: the restorations go through the tiled path
    cfg = config(baselines=["bicubic", "bilinear", "nearest"], tile=16, overlap=8, grid_crop=0)
    results = evaluate.run(cfg, builder=Resampler)

    test = results["test"]
    assert test["images"] == 2
    assert test["gain_db"]["bicubic_net"] == pytest.approx(0.0, abs=1e-6)
    assert test["bicubic_net"] == test["bicubic"]
    assert test["nearest_net"] == test["nearest"]
    assert test["gain_db"]["nearest_net"] == pytest.approx(
        test["nearest"]["psnr_y"] - test["bicubic"]["psnr_y"], abs=2e-4
    )
    assert test["gain_db"]["nearest_net"] < 0
    assert set(test["bicubic"]) >= {"psnr_y", "ssim_y", "ms_ssim", "gmsd", "haarpsi", "stlpips"}
    # these LR files are no output of crappify: no watermark mask is claimed for them
    assert "mask_psnr_y" not in test["bicubic"] and "mask_gain_db" not in test
    # the same split bicubic-downscaled, beside the crappify files
    clean = results["test/clean"]
    assert list(results) == ["test", "test/clean"] and clean["images"] == 2
    assert clean["gain_db"]["bicubic_net"] == pytest.approx(0.0, abs=1e-6)
    assert clean["bicubic"]["psnr_y"] != test["bicubic"]["psnr_y"]

    assert json.loads((workspace / "metrics/evaluate.json").read_text()) == results
    with open(workspace / "metrics/evaluate_images.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 5
    assert {r["image"] for r in rows} == {"a.png", "sub/b.png"}
    assert {r["dataset"] for r in rows} == {"test", "test/clean"}
    picture = read_rgb(workspace / "plots/evaluate_grid.png")
    # columns: LR, bicubic, 2 models, HR, each 101*... wide at least; rows: 2 images of 83+ px
    assert picture.shape[1] > 5 * 88 and picture.shape[0] > 2 * 83


def test_self_ensemble_restores_every_model_image_with_it(workspace, monkeypatch):
    seen = []

    def recording_restore(model, lr, *args):
        seen.append(args[-1])
        return restore(model, lr, *args)

    monkeypatch.setattr(evaluate, "restore", recording_restore)
    cfg = config(self_ensemble=True, degradations=["crappy"], baselines=["bicubic", "nearest"])
    results = evaluate.run(cfg, builder=Resampler)
    assert seen == [True] * 4  # 2 images x 2 models
    # reported under names of their own: the registry and the model card never take these
    # averaged scores for the models' single passes
    test = results["test"]
    assert set(test["gain_db"]) == {"bicubic_net_ensemble", "nearest_net_ensemble"}
    assert "bicubic_net" not in test
    # bicubic and nearest x4 commute with flips and turns: their mean over them is themselves
    assert test["bicubic_net_ensemble"] == test["bicubic"]
    assert test["nearest_net_ensemble"] == test["nearest"]


def test_benchmark_folder_uses_bicubic_downscaled_lr(workspace):
    folder = set5(workspace, "bird.png", "head.png")
    cfg = config(
        splits=[],
        hr_dirs=[str(folder)],
        models=["models/bicubic_net.pt"],
        baselines=["bicubic", "matlab_bicubic"],
        max_images=1,
        grid_images=1,
        degradations=["clean"],
    )
    results = evaluate.run(cfg, builder=Resampler)
    assert list(results) == ["Set5/clean"] and results["Set5/clean"]["images"] == 1
    assert results["Set5/clean"]["gain_db"] == {"bicubic_net": 0.0}
    lr, hr = benchmark_lr(read_rgb(folder / "bird.png"), 4)
    expected = psnr_y(upscale(lr, 4, "matlab_bicubic"), hr, 4)
    assert results["Set5/clean"]["matlab_bicubic"]["psnr_y"] == pytest.approx(expected, abs=1e-4)


def test_benchmark_folder_crappy_and_clean(workspace):
    """Set5 photos under our own seeded crappify and under bicubic downscaling, side by side."""
    folder = set5(workspace, "bird.png", "woman.png")  # 228x344 crops to 4 px multiples
    cfg = config(
        splits=[],
        hr_dirs=[str(folder)],
        models=["models/bicubic_net.pt"],
        grid_images=1,
        folder_draws=1,
    )
    results = evaluate.run(cfg, builder=Resampler)
    assert list(results) == ["Set5/crappy", "Set5/clean"]
    crappy, clean = results["Set5/crappy"], results["Set5/clean"]
    assert crappy["images"] == clean["images"] == 2
    for r in (crappy, clean):
        assert r["gain_db"]["bicubic_net"] == pytest.approx(0.0, abs=1e-6)
        assert "edge_chroma_rmse" in r["bicubic"] and "stlpips" in r["bicubic"]
    # JPEG at quality 10-70 and a watermark cost far more than bicubic downscaling alone
    assert crappy["bicubic"]["psnr_y"] < clean["bicubic"]["psnr_y"] - 1
    assert crappy["bicubic"]["stlpips"] > clean["bicubic"]["stlpips"]
    # the watermark's own mask: scored on crappy inputs only, and worse than the whole image
    assert "mask_psnr_y" in crappy["bicubic"] and "mask_psnr_y" not in clean["bicubic"]
    assert crappy["bicubic"]["mask_psnr_y"] < crappy["bicubic"]["psnr_y"]
    assert crappy["mask_gain_db"]["bicubic_net"] == pytest.approx(0.0, abs=1e-6)
    assert "mask_gain_db" not in clean

    # the crappy LR is crappify's, seeded by base.seed and the file name: the same every run
    from pipelines.imaging.degradations import crappify, rng_for

    base = cfg.base
    lr, _, _ = crappify(
        read_rgb(folder / "woman.png"), cfg.crappify, rng_for(base.seed, "woman.png")
    )
    with open(workspace / "metrics/evaluate_images.csv") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if r["dataset"] == "Set5/crappy"
            and r["image"] == "woman.png"
            and r["method"] == "bicubic"
        ]
    hr = read_rgb(folder / "woman.png")[: lr.shape[0] * 4, : lr.shape[1] * 4]
    assert float(rows[0]["psnr_y"]) == pytest.approx(
        psnr_y(upscale(lr, 4, "bicubic"), hr, 4), abs=1e-5
    )
    assert evaluate.run(cfg, builder=Resampler) == results


def test_folder_photos_are_crappified_by_several_draws(workspace):
    """Each Set5 photo under folder_draws seeded degradations, each scored as an image."""
    folder = set5(workspace, "bird.png")
    cfg = config(
        splits=[],
        hr_dirs=[str(folder)],
        models=["models/bicubic_net.pt"],
        grid_images=1,
        folder_draws=3,
    )
    results = evaluate.run(cfg, builder=Resampler)
    assert results["Set5/crappy"]["images"] == 3 and results["Set5/clean"]["images"] == 1
    with open(workspace / "metrics/evaluate_images.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "bicubic"]
    crappy = {r["image"]: float(r["psnr_y"]) for r in rows if r["dataset"] == "Set5/crappy"}
    # the first draw is the photo's one-draw LR; the others are drawn apart from it
    assert list(crappy) == ["bird.png", "bird.png#1", "bird.png#2"]
    assert len(set(crappy.values())) == 3
    one = evaluate.run(replace(cfg, folder_draws=1), builder=Resampler)["Set5/crappy"]
    assert one["bicubic"]["psnr_y"] == pytest.approx(crappy["bird.png"], abs=1e-4)
    assert results["Set5/crappy"]["bicubic"]["psnr_y"] == pytest.approx(
        np.mean(list(crappy.values())), abs=1e-4
    )
    with pytest.raises(ConfigError, match="folder_draws"):
        config(folder_draws=0)


def test_split_masks_come_from_the_crappify_stage_draw(workspace, caplog):
    """LR files that crappify made get the watermark mask; a file it did not make gets none."""
    from pipelines.imaging.degradations import crappify, rng_for

    cfg = config(models=["models/bicubic_net.pt"], degradations=["crappy"], grid_images=1)
    for rel in ("a.png", "sub/b.png"):
        hr = read_rgb(workspace / "data/hr/test" / rel)
        _, data, _ = crappify(hr, cfg.crappify, rng_for(cfg.base.seed, f"test/{rel}"))
        (workspace / "data/lr/test" / rel).with_suffix(".jpg").write_bytes(data)
    results = evaluate.run(cfg, builder=Resampler)
    assert list(results) == ["test"] and "mask_psnr_y" in results["test"]["bicubic"]
    with open(workspace / "metrics/evaluate_images.csv") as f:
        masked = {r["image"] for r in csv.DictReader(f) if r["mask_psnr_y"]}
    assert masked == {"a.png", "sub/b.png"}

    hr = read_rgb(workspace / "data/hr/test/a.png")
    write_image(workspace / "data/lr/test/a.jpg", cv2.resize(hr, (22, 18)), jpeg_quality=60)
    with caplog.at_level("WARNING"):
        evaluate.run(cfg, builder=Resampler)
    assert "1 LR file(s) differ" in caplog.text
    with open(workspace / "metrics/evaluate_images.csv") as f:
        masked = {r["image"] for r in csv.DictReader(f) if r["mask_psnr_y"]}
    assert masked == {"sub/b.png"}


def test_short_side_lr_is_resized_to_the_hr_grid(workspace, caplog):
    hr = read_rgb(workspace / "data/hr/test/a.png")
    write_image(workspace / "data/lr/test/a.jpg", cv2.resize(hr, (23, 19)), jpeg_quality=90)
    with caplog.at_level("INFO"):
        results = evaluate.run(config(grid_images=1), builder=Resampler)
    assert results["test"]["images"] == 2
    assert "1 LR image(s) not at 1/4" in caplog.text


def test_missing_inputs_are_named(workspace):
    (workspace / "data/lr/test/a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        evaluate.run(config(), builder=Resampler)
    with pytest.raises(checkpoint.CheckpointError, match="nope.pt"):
        evaluate.run(config(models=["models/nope.pt"]), builder=Resampler)


def test_config_is_checked_before_any_work():
    # the reference of every gain is evaluated whether listed or not
    assert config(baselines=["bilinear"]).methods_baselines == ("bicubic", "bilinear")
    with pytest.raises(ConfigError, match="'generator' names two"):
        config(models=["generator", "other/generator.pt"])
    with pytest.raises(ConfigError, match="overlap"):
        config(tile=32, overlap=20)
    with pytest.raises(ConfigError, match="evaluate.baselines"):
        config(baselines=["bicubic", "magic"])
    with pytest.raises(ConfigError, match="degradations"):
        config(degradations=[])
    with pytest.raises(ConfigError, match="degradations"):
        config(degradations=["clean", "clean"])
    with pytest.raises(ConfigError, match="evaluate.degradations"):
        config(degradations=["noisy"])
    assert (
        evaluate.model_file("gan_generator", config().base).as_posix() == "models/gan_generator.pt"
    )


def test_stage_command_with_a_real_untrained_unet(workspace):
    from pipelines.networks import build_generator

    net = build_generator(encoder="resnet18", scale=4, pretrained="none")
    checkpoint.save(
        workspace / "models/generator.pt", checkpoint.model_payload("generator", net.arch, net)
    )
    (workspace / "params.yaml").write_text(
        "base: {device: cpu}\ncrappify: {}\n"
        "evaluate: {models: [generator], max_images: 1, grid_images: 1}\n"
    )
    assert evaluate.main(["--params", "params.yaml", "--no-tracking"]) == 0
    gain = json.loads((workspace / "metrics/evaluate.json").read_text())["test"]["gain_db"]
    # an untrained U-Net outputs its bicubic skip (torch's float bicubic vs OpenCV's)
    assert gain["generator"] == pytest.approx(0.0, abs=0.05)


def test_grid_brings_sizes_to_one_height_under_labels():
    from pipelines.imaging.visualize import grid

    small, big = photo(10, 12, 0), photo(40, 30, 1)
    out = grid([[small, big], [big, small]], ["lr", "hr"])
    header = out.shape[0] - 2 * 40 - 3 * 4
    assert out.dtype == np.uint8 and header >= 16
    assert out.shape[1] == 4 + 48 + 4 + 48 + 4  # the 10x12 image enlarged to 40x48
    assert (out[:header] < 128).any()  # label text drawn
    with pytest.raises(ValueError, match="one per label"):
        grid([[small]], ["a", "b"])


def test_line_plot_writes_a_png(tmp_path):
    from pipelines.imaging.visualize import line_plot

    path = line_plot(
        [0, 100, 200],
        {"psnr_y": [20.0, 21.5, 21.2], "ssim_y": [0.6, 0.7, 0.69]},
        tmp_path / "plots/scores.png",
        "checkpoint scores",
    )
    img = read_rgb(path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    with pytest.raises(ValueError, match="2 values for 3"):
        line_plot([0, 1, 2], {"x": [1, 2]}, tmp_path / "bad.png", "bad")

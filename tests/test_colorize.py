"""Colorization (base.task colorize): the luminance is kept exactly, the task is checked
wherever a model is used, and a gray sample photo colorizes through `dvc repro` and the
restore command; an interrupted colorizer resumes to the same weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from test_stages import copy_inputs, kill_after_checkpoint, run_module, write_params

from pipelines.core.config import ConfigError, load
from pipelines.core.errors import StageError
from pipelines.core.tasks import TaskMismatch
from pipelines.datasets.degraded import train_dataset
from pipelines.datasets.pairs import real_examples, split_files
from pipelines.datasets.photos import sample_folder
from pipelines.imaging.images import is_gray, read_rgb, to_grayscale
from pipelines.inference.restore import colorize_at, load_generator, restore
from pipelines.inference.restore_files import RestoreError, restore_paths
from pipelines.networks import build_generator, colour
from pipelines.pretrain_critic import pairs as critic_pairs
from pipelines.scoring.metrics import colorfulness, rgb_to_y, score
from pipelines.train_gan import TrainGanConfig
from pipelines.training import checkpoint

from pipeline_repo import ORCHESTRATION, dvc_cli, make_pipeline_repo, tiny_params

ROOT = Path(__file__).resolve().parents[1]

TINY_COLORIZE = tiny_params(
    {
        "base": {"task": "colorize", "scale": 1, "crop": 32},
        "crappify": {"jpeg_quality": [60, 95], "watermark": "none"},
        "pretrain_generator": {
            "model": {"kind": "srresnet", "channels": 8, "blocks": 1, "colour_stride": 2},
            "phases": [
                {"steps": 3, "batch_size": 2, "lr": 0.001},
                {"steps": 3, "batch_size": 2, "lr": 0.001, "crop": 48},
            ],
            "perceptual": 0.1,
        },
        "train_gan": {"select_metric": "colorfulness_error", "blends": [0.25, 0.5]},
        "evaluate": {"baselines": ["gray"]},
    }
)


def noisy(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere, so the untrained network's output has colour."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net.eval()


@pytest.mark.parametrize(
    "arch",
    [
        {"kind": "srresnet", "channels": 8, "blocks": 1},
        {"kind": "srresnet", "channels": 8, "blocks": 1, "colour_stride": 4},
        {"kind": "unet", "encoder": "resnet18", "hr_channels": 8},
    ],
)
def test_colorize_keeps_the_input_luminance_exactly(arch):
    net = noisy(build_generator(scale=1, task="colorize", **arch))
    x = torch.rand(2, 3, 45, 70)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert float((colour.luma(y) - colour.luma(x)).abs().max()) < 1e-5
    assert float((y - colour.luma(y)).abs().mean()) > 0.01  # it did predict colour
    assert float(y.min()) >= -1e-6 and float(y.max()) <= 1.0 + 1e-6
    # as a photo: the 8-bit output's luma is the input's within rounding
    photo = read_rgb(sample_folder() / "camera.png")[:120, :150]
    out = restore(net, photo, tile=64, overlap=16)
    assert np.abs(rgb_to_y(out) - rgb_to_y(photo)).max() <= 1.0
    assert not is_gray(out)
    # the mean over flips and turns of outputs of one luminance has that luminance
    out = restore(net, photo, tile=64, overlap=16, self_ensemble=True)
    assert np.abs(rgb_to_y(out) - rgb_to_y(photo)).max() <= 1.0


def test_colorize_sees_only_the_luminance():
    net = noisy(build_generator(kind="srresnet", scale=1, task="colorize", channels=8, blocks=1))
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(net(x), net(colour.gray(x)), atol=1e-5)


def test_colorize_out_of_gamut_chroma_is_shortened_not_clipped():
    y = torch.full((1, 1, 2, 2), 0.9)
    rgb = y + torch.tensor([0.5, -0.2, -0.3]).view(1, 3, 1, 1)  # R would leave [0, 1]
    out = colour.with_luminance(rgb, y)
    assert float(out.max()) <= 1.0 + 1e-6
    assert torch.allclose(colour.luma(out), y, atol=1e-6)
    assert float(out[0, 0, 0, 0]) > float(out[0, 1, 0, 0])  # still reddish


def test_colorize_at_a_render_size_keeps_the_full_size_luminance():
    net = noisy(build_generator(kind="srresnet", scale=1, task="colorize", channels=8, blocks=1))
    photo = read_rgb(sample_folder() / "camera.png")
    out = colorize_at(net, photo, render_size=128)
    assert out.shape == photo.shape
    assert np.abs(rgb_to_y(out) - rgb_to_y(photo)).max() <= 1.0
    assert not is_gray(out)
    averaged = colorize_at(net, photo, render_size=128, self_ensemble=True)
    assert np.abs(rgb_to_y(averaged) - rgb_to_y(photo)).max() <= 1.0
    assert np.abs(averaged.astype(int) - out).max() > 2  # the colour of 8 passes, not of one


def test_colorize_colourfulness_is_zero_for_gray_and_grows_with_saturation():
    photo = read_rgb(sample_folder() / "coffee.png")
    gray = to_grayscale(photo)
    assert colorfulness(gray) == 0.0
    hsv = cv2.cvtColor(photo, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = (hsv[..., 1] * 0.5).astype(np.uint8)
    paler = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    assert 0 < colorfulness(paler) < colorfulness(photo)
    scores = score(gray, photo, border=1, task="colorize")
    assert scores["colorfulness"] == 0.0
    assert scores["colorfulness_error"] == pytest.approx(scores["truth_colorfulness"])
    assert scores["psnr"] < scores["psnr_y"]  # luma alone is right; colour is missing


def test_colorize_at_scale_8_fails_validation_naming_both_keys():
    from pipelines.crappify import CrappifyConfig

    params = tiny_params({"base": {"task": "colorize", "scale": 8, "crop": 64}})
    with pytest.raises(ConfigError) as err:
        load(CrappifyConfig, "crappify", params)
    assert "base.scale" in str(err.value) and "colorize" in str(err.value)


def test_colorize_colour_stride_needs_a_colorizer_at_scale_1():
    from pipelines.pretrain_generator import PretrainGeneratorConfig

    params = tiny_params(
        {"pretrain_generator": {"model": {"kind": "srresnet", "colour_stride": 4}, "phases": []}}
    )
    params["pretrain_generator"]["phases"] = [{"steps": 1}]
    with pytest.raises(ConfigError) as err:
        load(PretrainGeneratorConfig, "pretrain_generator", params)
    assert "model.colour_stride" in str(err.value) and "restore" in str(err.value)


def test_colorize_ignores_the_input_chroma_of_a_restorer():
    from pipelines.pretrain_generator import PretrainGeneratorConfig

    # the restorer's params with the task switched, as `dvc exp run -S base.task=colorize` does
    params = tiny_params(
        {
            "base": {"task": "colorize", "scale": 1},
            "pretrain_generator": {"model": {"kind": "srresnet", "chroma": "input"}},
        }
    )
    params["pretrain_generator"]["phases"] = [{"steps": 1}]
    cfg = load(PretrainGeneratorConfig, "pretrain_generator", params)
    arch = cfg.model.arch(1, "colorize")
    assert arch["task"] == "colorize" and "chroma" not in arch
    assert cfg.model.arch(1)["chroma"] == "input"


def test_colorize_gan_selection_by_colourfulness_needs_a_colorizer():
    from pipelines.train_gan import TrainGanConfig

    params = tiny_params({"train_gan": {"select_metric": "colorfulness_error"}})
    with pytest.raises(ConfigError, match="select_metric.*base.task is restore"):
        load(TrainGanConfig, "train_gan", params)


def save_model(path: Path, task: str) -> Path:
    net = (
        build_generator(kind="srresnet", scale=1, task=task, channels=8, blocks=1, colour_stride=1)
        if task == "colorize"
        else build_generator(kind="srresnet", scale=1, channels=8, blocks=1)
    )
    checkpoint.save(path, checkpoint.model_payload("generator", net.arch, noisy(net)))
    return path


def test_colorize_model_of_the_other_task_fails_naming_both(tmp_path):
    restorer = save_model(tmp_path / "restorer.pt", "restore")
    colorizer = save_model(tmp_path / "colorizer.pt", "colorize")
    with pytest.raises(TaskMismatch) as err:
        load_generator(restorer, task="colorize")
    assert "restore" in str(err.value) and "colorize" in str(err.value)
    assert str(restorer) in str(err.value)
    load_generator(colorizer, task="colorize")
    photo = tmp_path / "gray.png"
    cv2.imwrite(str(photo), cv2.imread(str(sample_folder() / "camera.png"), 0)[:64, :64])
    with pytest.raises(RestoreError) as err:
        restore_paths([str(photo)], tmp_path / "out", str(colorizer), task="restore")
    assert "colorize" in str(err.value) and "restore" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_colorize_a_colour_photo_is_colorized_from_its_luminance_said_once(tmp_path):
    colorizer = save_model(tmp_path / "colorizer.pt", "colorize")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("coffee.png", "chelsea.png"):
        cv2.imwrite(str(inputs / name), cv2.imread(str(sample_folder() / name))[:64, :80])
    cv2.imwrite(
        str(inputs / "camera.png"), cv2.imread(str(sample_folder() / "camera.png"), 0)[:64, :80]
    )
    lines: list[str] = []
    summary = restore_paths([str(inputs)], tmp_path / "out", str(colorizer), report=lines.append)
    assert len(summary.restored) == 3 and not summary.failed
    assert len(lines) == 1 and "colour photo" in lines[0] and "luminance" in lines[0]
    for name in ("coffee", "chelsea"):
        out = read_rgb(tmp_path / "out" / f"{name}_restored.png")
        source = read_rgb(inputs / f"{name}.png")
        assert np.abs(rgb_to_y(out) - rgb_to_y(source)).max() <= 1.0


def test_colorize_critic_and_gan_phase_take_only_colour_photos_as_real(tmp_path):
    train = tmp_path / "hr" / "train"
    train.mkdir(parents=True)
    cv2.imwrite(str(train / "camera.png"), cv2.imread(str(sample_folder() / "camera.png"), 0))
    for name in ("coffee.png", "chelsea.png"):
        cv2.imwrite(str(train / name), cv2.imread(str(sample_folder() / name))[:96, :96])
    files = split_files(tmp_path / "hr", "train")
    assert [f.name for f in real_examples(files, "colorize")] == ["chelsea.png", "coffee.png"]
    assert real_examples(files, "restore") == files
    with pytest.raises(StageError, match=str(train)):
        real_examples([train / "camera.png"], "colorize")

    params = TINY_COLORIZE | {
        "base": TINY_COLORIZE["base"] | {"paths": {"hr": str(tmp_path / "hr")}}
    }
    cfg = load(TrainGanConfig, "train_gan", params)

    def photos(adversarial: bool) -> list[str]:
        data = train_dataset(cfg.base, "fresh", cfg.crappify, 32, 0.0, 0.0, adversarial=adversarial)
        return sorted(f.name for f in data.hr_files)

    # pretraining learns from the gray photo that gray things stay gray; the GAN phase's
    # crops are the critic's real examples
    assert photos(adversarial=False) == ["camera.png", "chelsea.png", "coffee.png"]
    assert photos(adversarial=True) == ["chelsea.png", "coffee.png"]
    reals, fakes = critic_pairs(cfg.base, "train")
    assert [(r.name, f.name) for r, f in zip(reals, fakes)] == [
        ("chelsea.png", "chelsea.png"),
        ("coffee.png", "coffee.png"),
    ]


# -- the whole pipeline, through DVC -----------------------------------------------------------
@pytest.fixture(scope="module")
def colorize_repo(tmp_path_factory) -> Path:
    path = make_pipeline_repo(
        tmp_path_factory.mktemp("colorize") / "ws", TINY_COLORIZE, parts=ORCHESTRATION
    )
    dvc_cli(path, "repro", timeout=3600)
    return path


@pytest.mark.slow
def test_colorize_pipeline_through_dvc_repro_and_the_restore_command(colorize_repo, tmp_path):
    repo = colorize_repo
    # gray photos cannot measure a colorizer: download put them all in the training split
    assert json.loads((repo / "metrics/download.json").read_text())["gray_training_only"] > 0
    for split in ("valid", "test"):
        held_out = list((repo / "data/hr" / split).glob("*.png"))
        assert held_out and not any(is_gray(read_rgb(f)) for f in held_out)
    summary = json.loads((repo / "metrics/evaluate.json").read_text())
    test = summary["test"]
    assert set(test["gain_db"]) == {"generator", "gan_generator"}
    assert "gray" in test and "bicubic" not in test
    for method in ("gray", "generator", "gan_generator"):
        assert {"psnr", "ssim", "colorfulness", "truth_colorfulness"} <= set(test[method])
    assert test["gray"]["colorfulness"] == 0.0
    for model in ("generator", "gan_generator"):
        got = test["gain_db"][model]
        assert got == pytest.approx(test[model]["psnr"] - test["gray"]["psnr"], abs=2e-4)
    table = json.loads((repo / "metrics/evaluate/test/gray.json").read_text())
    assert table["gain_db"] == 0 and "psnr" in table
    assert checkpoint.load(repo / "models/gan_generator.pt")["arch"]["task"] == "colorize"

    # the camera photo is a single-channel PNG of the sample data
    camera = sample_folder() / "camera.png"
    assert cv2.imread(str(camera), cv2.IMREAD_UNCHANGED).ndim == 2
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "restore", str(camera), "--out", str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = read_rgb(tmp_path / "camera_restored.png")
    gray = read_rgb(camera)
    assert out.shape == gray.shape
    assert np.abs(rgb_to_y(out) - rgb_to_y(gray)).max() <= 1.0
    assert "colour photo" not in proc.stderr  # a gray photo is no colour photo


@pytest.mark.slow
def test_colorize_kill_9_then_rerun_equals_uninterrupted(colorize_repo, tmp_path):
    params = yaml.safe_load((colorize_repo / "params.yaml").read_text())
    params["pretrain_generator"]["phases"][1]["steps"] = 12
    runs = {}
    for name in ("straight", "resumed"):
        work = tmp_path / name
        copy_inputs(colorize_repo, work)
        (work / "models/generator.pt").unlink(missing_ok=True)
        write_params(work, params)
        if name == "resumed":
            kill_after_checkpoint("pretrain_generator", work, 2)
        proc = run_module("pretrain_generator", work)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        if name == "resumed":
            assert "resuming from" in out
        runs[name] = checkpoint.load(work / "models/generator.pt")["model"]
    for key in runs["straight"]:
        assert torch.equal(runs["straight"][key], runs["resumed"][key]), key

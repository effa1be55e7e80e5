"""Params faults, through each stage's real entry point (what ``dvc repro`` runs): an unknown
key, a wrong type, an out-of-range value, a missing section, a crop that the scale does not
divide. Each exits with status 2 before any work, naming the key; nothing is written, no
MLflow run is started."""

from __future__ import annotations

import copy
import importlib

import pytest
import yaml

from pipelines.running.stages import STAGES

from fault_kit import fault_params

# (stage, dotted key, bad value, message after "error: params.yaml: ")
WRONG_TYPE = [
    (
        "download",
        "download.max_images",
        "many",
        "download.max_images: expected an integer, got 'many'",
    ),
    ("crappify", "crappify.workers", "two", "crappify.workers: expected an integer, got 'two'"),
    (
        "pretrain_generator",
        "pretrain_generator.eval_every",
        "often",
        "pretrain_generator.eval_every: expected an integer, got 'often'",
    ),
    (
        "pretrain_generator",
        "pretrain_generator.model.encoder",
        "resnet9",
        "pretrain_generator.model.encoder: 'resnet9' is not one of 'resnet18'",
    ),
    (
        "pretrain_critic",
        "pretrain_critic.steps",
        1.5,
        "pretrain_critic.steps: expected an integer, got 1.5",
    ),
    ("train_gan", "train_gan.lr", "fast", "train_gan.lr: expected a number, got 'fast'"),
    ("evaluate", "evaluate.tile", [256], "evaluate.tile: expected an integer, got [256]"),
    ("train_gan", "base.seed", "forty-two", "base.seed: expected an integer, got 'forty-two'"),
    ("export", "export.fp16", "yes", "export.fp16: expected true or false, got 'yes'"),
]
OUT_OF_RANGE = [
    (
        "download",
        "download.valid_fraction",
        0.9,
        "download.valid_fraction: 0.9 is out of range [0.0, 0.5]",
    ),
    (
        "crappify",
        "crappify.jpeg_quality",
        [10, 170],
        "crappify.jpeg_quality: (10, 170) is out of range [1, 100]",
    ),
    (
        "pretrain_generator",
        "pretrain_generator.pct_start",
        2,
        "pretrain_generator.pct_start: 2.0 is out of range [0, 1]",
    ),
    (
        "pretrain_critic",
        "pretrain_critic.batch_size",
        0,
        "pretrain_critic.batch_size: 0 is out of range [1, inf]",
    ),
    (
        "train_gan",
        "train_gan.max_critic_steps",
        0,
        "train_gan.max_critic_steps: 0 is out of range [1, inf]",
    ),
    ("evaluate", "evaluate.overlap", -1, "evaluate.overlap: -1 is out of range [0, inf]"),
    ("pretrain_generator", "base.scale", 16, "base.scale: 16 is out of range [1, 8]"),
    ("export", "export.opset", 9, "export.opset: 9 is out of range [13, 20]"),
]
CROP_NOT_DIVISIBLE = [
    (stage, "base.crop", 30, "base.crop: 30 is not divisible by scale 4") for stage in STAGES
] + [
    (
        "pretrain_generator",
        "pretrain_generator.phases",
        [{"steps": 2, "crop": 50}],
        "pretrain_generator.phases[0].crop: 50 is not divisible by base.scale 4",
    ),
    (
        "pretrain_generator",
        "pretrain_generator.valid_crop",
        50,
        "pretrain_generator.valid_crop: 50 is not divisible by base.scale 4",
    ),
    ("train_gan", "train_gan.crop", 50, "train_gan.crop: 50 is not divisible by base.scale 4"),
    (
        "train_gan",
        "train_gan.valid_crop",
        50,
        "train_gan.valid_crop: 50 is not divisible by base.scale 4",
    ),
]


def run_main(stage: str, params: dict, folder, capsys) -> tuple[int, str]:
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "dvc.yaml").write_text("stages: {}\n")  # the repository root: mlflow.db goes here
    module = importlib.import_module(f"pipelines.{stage}")
    code = module.main(["--params", "params.yaml"])  # tracking on: no run may be started
    return code, capsys.readouterr().err


def set_dotted(params: dict, dotted: str, value) -> dict:
    node = params
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return params


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DECRAPPIFY_ROOT", raising=False)
    return tmp_path


def assert_failed_before_work(code: int, err: str, message: str, folder) -> None:
    assert code == 2, err
    assert f"error: params.yaml: {message}" in err
    assert sorted(p.name for p in folder.iterdir()) == ["dvc.yaml", "params.yaml"]


@pytest.mark.parametrize("stage", STAGES)
def test_unknown_key(stage, workdir, capsys):
    params = fault_params("photos")
    params[stage]["bogus_key"] = 1
    code, err = run_main(stage, params, workdir, capsys)
    assert_failed_before_work(code, err, f"{stage}.bogus_key: unknown key (known: ", workdir)


@pytest.mark.parametrize("stage, key, value, message", WRONG_TYPE + OUT_OF_RANGE)
def test_wrong_type_or_out_of_range(stage, key, value, message, workdir, capsys):
    params = set_dotted(fault_params("photos"), key, value)
    code, err = run_main(stage, params, workdir, capsys)
    assert_failed_before_work(code, err, message, workdir)


@pytest.mark.parametrize("stage", STAGES)
def test_missing_section(stage, workdir, capsys):
    params = fault_params("photos")
    del params[stage]
    code, err = run_main(stage, params, workdir, capsys)
    assert_failed_before_work(code, err, f"{stage}: missing section in params", workdir)


@pytest.mark.parametrize("stage", ["pretrain_generator", "train_gan"])
def test_missing_section_another_stage_needs(stage, workdir, capsys):
    params = fault_params("photos")
    del params["crappify"]  # they draw fresh degradations with the crappify settings
    code, err = run_main(stage, params, workdir, capsys)
    assert_failed_before_work(
        code, err, f"crappify: missing section in params (needed by {stage})", workdir
    )


@pytest.mark.parametrize("stage, key, value, message", CROP_NOT_DIVISIBLE)
def test_crop_the_scale_does_not_divide(stage, key, value, message, workdir, capsys):
    params = fault_params("photos")
    params["base"]["scale"] = 4
    params = set_dotted(copy.deepcopy(params), key, value)
    code, err = run_main(stage, params, workdir, capsys)
    assert_failed_before_work(code, err, message, workdir)


def test_an_override_is_checked_like_the_file(workdir, capsys):
    (workdir / "params.yaml").write_text(yaml.safe_dump(fault_params("photos")))
    (workdir / "dvc.yaml").write_text("stages: {}\n")
    from pipelines import train_gan

    assert train_gan.main(["--params", "params.yaml", "-S", "train_gan.crop=33"]) == 2
    assert "train_gan.crop: 33 is not divisible by base.scale 2" in capsys.readouterr().err

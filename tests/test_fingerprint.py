"""One resume fingerprint: params that change results, inputs and code; not how a run executes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pipelines.core import code_deps
from pipelines.core.config import as_dict, load, read_params
from pipelines.core.fingerprint import HOW_IT_RUNS, fingerprint
from pipelines.datasets import crappified as crappify
from pipelines.pretrain_critic import PretrainCriticConfig
from pipelines.pretrain_generator import PretrainGeneratorConfig
from pipelines.train_gan import TrainGanConfig
from pipelines.training.loop import RollingCheckpoint

ROOT = Path(__file__).resolve().parents[1]
PARAMS = read_params(ROOT / "params.yaml")
RESUMING = {
    "crappify": crappify.CrappifyConfig,
    "pretrain_generator": PretrainGeneratorConfig,
    "pretrain_critic": PretrainCriticConfig,
    "train_gan": TrainGanConfig,
}
# a value other than params.yaml's for every how-it-runs key
OTHER = {
    "launcher": "torchrun",
    "nproc": 4,
    "device": "cuda",
    "workers": 3,
    "tracking_uri": "http://127.0.0.1:5000",
    "experiment": "elsewhere",
    "log_every": 7,
    "sample_every": 0,
    "examples": 1,
}


def key(stage: str, overrides: dict | None = None) -> str:
    cfg = load(RESUMING[stage], stage, PARAMS, overrides)
    return (
        crappify.fingerprint(cfg)["fingerprint"]
        if stage == "crappify"
        else fingerprint(as_dict(cfg), stage=stage)
    )


def how_it_runs_keys(stage: str) -> list[str]:
    sections = ["base", stage] + (
        ["crappify"] if stage in ("pretrain_generator", "train_gan") else []
    )
    return [f"{s}.{k}" for s in sections for k in PARAMS[s] if k in HOW_IT_RUNS]


def test_other_values_cover_the_how_it_runs_list():
    assert set(OTHER) == HOW_IT_RUNS


@pytest.mark.parametrize("stage", RESUMING)
def test_how_it_runs_leaves_the_fingerprint_and_results_change_it(stage):
    same = key(stage)
    changes = how_it_runs_keys(stage)
    assert {"base.launcher", "base.tracking_uri"} <= set(changes)
    for dotted in changes:
        assert key(stage, {dotted: OTHER[dotted.rsplit(".", 1)[1]]}) == same, dotted
    assert key(stage, {"base.paths.checkpoints": "elsewhere"}) == same  # where, not what
    assert key(stage, {"base.seed": 8}) != same
    assert key(stage, {"base.scale": 2, "base.crop": 64}) != same


@pytest.fixture
def code_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the pipelines package that the code digest reads instead of this one."""
    shutil.copytree(
        ROOT / "pipelines",
        tmp_path / "code/pipelines",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    monkeypatch.setattr(code_deps, "ROOT", tmp_path / "code")
    return tmp_path / "code"


def edit(path: Path) -> None:
    with open(path, "a") as f:
        f.write("\n# an edit\n")


def save_at_step_3(folder: Path, fp: str) -> None:
    RollingCheckpoint(folder, fp).save(3, model={"w": torch.zeros(2)})


@pytest.mark.parametrize(
    "module",
    [
        "pipelines/pretrain_generator.py",
        "pipelines/training/schedule.py",
        "pipelines/core/runtime.py",
    ],
)
def test_a_code_change_discards_the_rolling_checkpoint(code_copy, tmp_path, module):
    folder = tmp_path / "checkpoints/pretrain_generator"
    save_at_step_3(folder, key("pretrain_generator"))
    edit(code_copy / module)
    assert RollingCheckpoint(folder, key("pretrain_generator")).restore() is None
    assert not (folder / "last.pt").exists()  # training starts over from step 0


def test_a_how_it_runs_change_resumes_the_rolling_checkpoint(code_copy, tmp_path):
    folder = tmp_path / "checkpoints/train_gan"
    save_at_step_3(folder, key("train_gan"))
    edit(code_copy / "pipelines/running/tracking.py")  # MLflow logging
    moved = {
        "base.launcher": "torchrun",
        "base.nproc": 2,
        "base.device": "cpu",
        "base.tracking_uri": "http://127.0.0.1:5000",
        "base.experiment": "x",
        "train_gan.workers": 2,
        "train_gan.log_every": 1,
        "crappify.workers": 2,
    }
    state = RollingCheckpoint(folder, key("train_gan", moved)).restore()
    assert state is not None and state["step"] == 3


def test_crappify_clears_its_outputs_after_a_change_to_any_module_it_runs(code_copy, tmp_path):
    """Before, crappify hashed three of its modules; a change to files.py kept old JPEGs."""
    lr = tmp_path / "lr"
    sources = {"a.png": tmp_path / "a.png"}
    sources["a.png"].write_bytes(b"hr")
    cfg = load(crappify.CrappifyConfig, "crappify", PARAMS)
    crappify.prepare(lr, crappify.fingerprint(cfg), sources)
    (lr / "a.jpg").write_bytes(b"old")
    other = load(
        crappify.CrappifyConfig, "crappify", PARAMS, {"crappify.workers": 1, "crappify.examples": 0}
    )
    crappify.prepare(lr, crappify.fingerprint(other), sources)
    assert (lr / "a.jpg").exists()  # how it runs: outputs kept (then checked one by one)
    edit(code_copy / "pipelines/core/files.py")
    crappify.prepare(lr, crappify.fingerprint(cfg), sources)
    assert not (lr / "a.jpg").exists()

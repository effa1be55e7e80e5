"""The champion alias in a real (temporary sqlite) MLflow registry, and restoring with it."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from flows.cli import main
from pipelines import evaluate
from pipelines.core.config import load
from pipelines.core.files import sha256_file
from pipelines.evaluate import EvaluateConfig
from pipelines.imaging.images import read_rgb, write_image
from pipelines.inference.restore import load_generator, restore
from pipelines.networks import build_generator
from pipelines.running import registry
from pipelines.running.registry import (
    CHAMPION,
    DIGEST_TAG,
    GAIN_TAG,
    QUALIFIED_TAG,
    REGISTERED_MODEL,
)
from pipelines.running.tracking import Tracker
from pipelines.training import checkpoint


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    # The Tracker sets MLflow's process-wide URI; put the previous one back for later modules.
    with pytest.MonkeyPatch.context() as mp, _use_tracking_uri(uri):
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def tiny_generator(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_generator(encoder="resnet18", scale=2, hr_channels=8)
    # Away from the zero-initialised residual, so that each seed restores differently.
    torch.nn.init.normal_(model.to_residual.weight, std=0.05)
    return model.eval()


def train_gan_like(store: str, folder, seed: int) -> tuple[str, object]:
    """Save a generator file and register its network as train_gan does; (file, version)."""
    model = tiny_generator(seed)
    path = folder / f"gan_generator_{seed}.pt"
    checkpoint.save(path, checkpoint.model_payload("generator", model.arch, model))
    with Tracker("train_gan", store) as tracker:
        tracker.set_tags({DIGEST_TAG: sha256_file(path)})
        info = tracker.log_model(model, "gan_generator", registered_model_name=REGISTERED_MODEL)
    assert tracker.failed_calls == 0
    return path, info.registered_model_version


def scores(gan_gain: float, pretrained_gain: float = 0.2) -> dict:
    """evaluate's summary of one data set, reduced to what the registry reads."""
    return {
        "images": 3,
        "bicubic": {"psnr_y": 25.0},
        "generator": {"psnr_y": 25.0 + pretrained_gain},
        "gan_generator": {"psnr_y": 25.0 + gan_gain, "haarpsi": 0.7},
        "gain_db": {"generator": pretrained_gain, "gan_generator": gan_gain},
    }


def champion(store: str) -> str | None:
    aliases = MlflowClient(tracking_uri=store).get_registered_model(REGISTERED_MODEL).aliases
    return None if CHAMPION not in aliases else str(aliases[CHAMPION])


def test_the_champion_is_the_best_version_that_beats_the_baselines(store, tmp_path, capsys):
    first, v1 = train_gan_like(store, tmp_path, seed=1)
    second, v2 = train_gan_like(store, tmp_path, seed=2)
    pretrained = tmp_path / "generator.pt"  # evaluated alongside, never registered
    checkpoint.save(pretrained, checkpoint.model_payload("generator", {}, tiny_generator(3)))

    def evaluated(path, gain, pretrained_gain=0.2):
        return registry.record_evaluation(
            store,
            "test",
            scores(gain, pretrained_gain),
            {"generator": pretrained, "gan_generator": path},
        )

    # Worse than the pretrained generator: tagged, but no champion.
    assert evaluated(first, 0.1) is None and champion(store) is None
    tags = MlflowClient(tracking_uri=store).get_model_version(REGISTERED_MODEL, v1).tags
    assert tags[GAIN_TAG] == "0.1" and tags[QUALIFIED_TAG] == "false"
    assert tags["decrappify.eval.dataset"] == "test" and tags["decrappify.eval.haarpsi"] == "0.7"
    assert evaluated(first, 0.4) == str(v1) == champion(store)
    assert evaluated(second, 0.6) == str(v2) == champion(store)
    assert evaluated(second, 0.3) == str(v1) == champion(store)  # its later evaluation counts
    assert evaluated(first, -0.1, pretrained_gain=-0.5) == str(v2)  # below bicubic: out
    assert evaluated(second, 0.1, pretrained_gain=0.5) is None and champion(store) is None
    evaluated(second, 0.6)

    # The alias resolves to the champion's network, which restores images.
    src = tmp_path / "a.png"
    write_image(src, np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    code = main(
        [
            "restore",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--model",
            f"models:/{REGISTERED_MODEL}@{CHAMPION}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    restored = read_rgb(tmp_path / "out" / "a_restored.png").astype(int)
    # The registered copy has its weight norm folded into plain weights: equal up to rounding.
    assert np.abs(restored - restore(load_generator(second), read_rgb(src))).max() <= 1
    assert np.abs(restored - restore(load_generator(first), read_rgb(src))).max() > 10


def test_a_gan_generator_qualifies_by_the_trade_its_phase_chose_it_by(tmp_path):
    def summary(gan_gain, gan_stlpips, pretrained_gain=1.0, pretrained_stlpips=0.40):
        return {
            "generator": {"stlpips": pretrained_stlpips, "haarpsi": 0.6},
            "gan_generator": {"stlpips": gan_stlpips, "haarpsi": 0.6},
            "gain_db": {"generator": pretrained_gain, "gan_generator": gan_gain},
        }

    trade = registry.Trade("stlpips", 0.5)
    assert not registry.qualifies("gan_generator", summary(0.9, 0.35))  # strict: gain only
    assert registry.qualifies("gan_generator", summary(0.9, 0.35), trade)
    assert registry.qualifies("gan_generator", summary(0.5, 0.35), trade)  # the bound counts
    assert not registry.qualifies("gan_generator", summary(0.49, 0.35), trade)  # too far below
    assert not registry.qualifies("gan_generator", summary(0.9, 0.40), trade)  # no better
    assert not registry.qualifies(  # never below the reference
        "gan_generator", summary(-0.1, 0.35, pretrained_gain=0.2), trade
    )
    assert registry.qualifies("gan_generator", summary(1.1, 0.45), trade)  # a larger gain
    # higher is better for HaarPSI: equal scores are no trade
    assert not registry.qualifies("gan_generator", summary(0.9, 0.35), registry.Trade("haarpsi", 1))
    # a metric evaluate did not report cannot be traded for
    assert not registry.qualifies("gan_generator", summary(0.9, 0.35), registry.Trade("gmsd", 1))

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    assert registry.trade_of(metrics) is None
    (metrics / "train_gan.json").write_text('{"chosen_step": 80, "select_metric": "haarpsi"}')
    assert registry.trade_of(metrics) is None  # from before the drop was recorded: strict
    (metrics / "train_gan.json").write_text('{"select_metric": "stlpips", "max_psnr_drop": 0.5}')
    assert registry.trade_of(metrics) == trade


def test_an_unknown_alias_is_one_clear_error(store, tmp_path, capsys):
    src = tmp_path / "a.png"
    write_image(src, np.zeros((20, 20, 3), np.uint8))
    code = main(
        [
            "restore",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--model",
            f"models:/{REGISTERED_MODEL}@nobody",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"models:/{REGISTERED_MODEL}@nobody: cannot load the model" in err
    assert len(err.strip().splitlines()) == 1


def test_evaluate_tags_the_version_of_the_file_it_scored(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(5)
    for name in ("a.png", "b.png"):
        hr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        write_image(tmp_path / "data/hr/test" / name, hr)
        write_image((tmp_path / "data/lr/test" / name).with_suffix(".jpg"), hr[::2, ::2])
    gan, version = train_gan_like(store, tmp_path, seed=4)
    (tmp_path / "models").mkdir()
    gan.rename(tmp_path / "models" / "gan_generator.pt")
    pre = tiny_generator(5)
    checkpoint.save(
        tmp_path / "models" / "generator.pt", checkpoint.model_payload("generator", pre.arch, pre)
    )
    cfg = load(
        EvaluateConfig,
        "evaluate",
        {"base": {"device": "cpu", "scale": 2}, "crappify": {}, "evaluate": {"grid_crop": 0}},
    )
    with Tracker("evaluate", store) as tracker:
        results = evaluate.run(cfg, tracker)
    tags = MlflowClient(tracking_uri=store).get_model_version(REGISTERED_MODEL, version).tags
    gains = results["test"]["gain_db"]
    assert float(tags[GAIN_TAG]) == gains["gan_generator"]
    # no train_gan results here: the strict rule
    assert registry.trade_of(tmp_path / "metrics") is None
    assert tags[QUALIFIED_TAG] == str(registry.qualifies("gan_generator", results["test"])).lower()
    assert float(tags["decrappify.eval.psnr_y"]) == results["test"]["gan_generator"]["psnr_y"]
    assert tags["decrappify.eval.run_id"] == tracker.run_id


def test_an_unreachable_registry_warns_once_and_does_not_raise(tmp_path, caplog, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    model = tmp_path / "gan_generator.pt"
    model.write_bytes(b"weights")
    with caplog.at_level(logging.WARNING):
        assert (
            registry.record_evaluation(
                f"http://127.0.0.1:{port}", "test", scores(0.5), {"gan_generator": model}
            )
            is None
        )
    warnings = [r for r in caplog.records if "model registry unavailable" in r.getMessage()]
    assert len(warnings) == 1


def test_register_leaves_the_champion_to_single_pass_scores(tmp_path, capsys, monkeypatch):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text('{"test": {"gain_db": {}}}')
    (tmp_path / "models").mkdir()
    (tmp_path / "models/gan_generator.pt").write_bytes(b"weights")
    (tmp_path / "params.yaml").write_text("crappify: {}\nevaluate:\n  self_ensemble: true\n")
    registered, recorded = [], []
    monkeypatch.setattr(registry, "register_file", lambda *a: registered.append(a) or True)
    monkeypatch.setattr(registry, "record_evaluation", lambda *a, **k: recorded.append(a))
    assert main(["register", "--root", str(tmp_path)]) == 0
    assert len(registered) == 1 and recorded == []
    assert "not moved; evaluate.self_ensemble" in capsys.readouterr().out

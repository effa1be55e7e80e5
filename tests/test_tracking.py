"""MLflow tracking: nested runs, one store, models, and outages that never stop a stage."""

import json
import logging
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from pipelines.networks import build_critic, build_generator
from pipelines.running.tracking import PARENT_RUN_ENV, Tracker, resolve_tracking_uri
from pipelines.training.checkpoint import plain_copy


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_relative_uris_resolve_to_the_repo_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DECRAPPIFY_ROOT", str(tmp_path))
    assert resolve_tracking_uri("") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_stage_run_nested_under_parent(store, monkeypatch):
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("t")
    parent = mlflow.start_run(run_name="flow")
    mlflow.end_run()
    monkeypatch.setenv(PARENT_RUN_ENV, parent.info.run_id)
    with Tracker("crappify", experiment="t") as tracker:
        tracker.log_params({"a": {"b": 1}})
        tracker.log_metrics({"loss": 0.5, "nested": {"x": 2}, "text": "no"}, step=3)
        tracker.log_image(np.zeros((4, 4, 3), np.uint8), "grid.png")
    run = mlflow.get_run(tracker.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.params == {"a.b": "1"}
    assert run.data.metrics == {"loss": 0.5, "nested.x": 2.0}
    assert run.info.status == "FINISHED" and tracker.failed_calls == 0


def test_parametrized_models_are_logged_as_plain_modules(store):
    gen = build_generator(encoder="resnet18", scale=2, hr_channels=8)
    critic = build_critic(nf=8, n_blocks=2)
    x = torch.rand(1, 3, 32, 32)
    for model in (gen.eval(), critic.eval()):
        copy = plain_copy(model)
        assert not any(hasattr(m, "parametrizations") for m in copy.modules())
        with torch.no_grad():
            assert torch.allclose(model(x), copy(x), atol=1e-5)
    with Tracker("train_gan", experiment="t") as tracker:
        info = tracker.log_model(gen, "gan_generator", registered_model_name="t-gen")
    assert info is not None and tracker.failed_calls == 0
    # an ONNX model, not a pickle: the pyfunc flavour runs it with onnxruntime
    loaded = mlflow.pyfunc.load_model("models:/t-gen/1")
    assert "onnx" in loaded.metadata.flavors and "pytorch" not in loaded.metadata.flavors
    with torch.no_grad():
        assert np.abs(loaded.predict(x.numpy())["output"] - gen(x).numpy()).max() <= 1e-4


def test_unreachable_store_warns_once_and_the_stage_goes_on(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with caplog.at_level(logging.WARNING), Tracker("download", experiment="t") as tracker:
        for step in range(3):
            tracker.log_metrics({"loss": 1.0}, step=step)
    unavailable = [r for r in caplog.records if "MLflow unavailable" in r.getMessage()]
    assert len(unavailable) == 1
    assert "were not recorded" in caplog.text


def test_artifact_sample_images_are_logged_by_step_and_tables_hold_images(store):
    with Tracker("pretrain_critic", experiment="t") as tracker:
        for step in (3, 6):
            tracker.log_image(np.full((8, 8, 3), step, np.uint8), key="samples", step=step)
        tracker.log_table(
            {
                "method": ["bicubic", "gan"],
                "psnr_y": [20.0, 21.5],
                "restoration": [np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)],
            },
            "evaluate_images.json",
        )
    assert tracker.failed_calls == 0
    client = mlflow.MlflowClient(store)
    files = [a.path for a in client.list_artifacts(tracker.run_id, "images")]
    # MLflow names a series image <key>+step+<step>+...: the UI's step slider reads it
    steps = sorted(int(f.split("+step+")[1].split("+")[0]) for f in files if f.endswith(".png"))
    assert steps == [3, 6] and all(f.startswith("images/samples+step+") for f in files)
    table = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=tracker.run_id, artifact_path="evaluate_images.json", tracking_uri=store
            )
        ).read_text()
    )
    assert table["columns"] == ["method", "psnr_y", "restoration"]
    assert [row[:2] for row in table["data"]] == [["bicubic", 20.0], ["gan", 21.5]]
    assert all(row[2]["type"] == "image" for row in table["data"])


def test_training_stages_record_system_metrics(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    runs = {}
    for stage in ("train_gan", "evaluate"):
        with Tracker(stage, experiment="t") as tracker:
            deadline = time.monotonic() + 30
            # wait for the monitor's first sample, at most 30 s (never for evaluate)
            while (
                stage == "train_gan"
                and time.monotonic() < deadline
                and not any(
                    k.startswith("system/") for k in mlflow.get_run(tracker.run_id).data.metrics
                )
            ):
                time.sleep(0.2)
        runs[stage] = mlflow.get_run(tracker.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in runs["train_gan"]
    assert not any(k.startswith("system/") for k in runs["evaluate"])


def test_a_failing_image_call_never_stops_the_stage(store, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("artifact store unreachable")

    with caplog.at_level(logging.WARNING), Tracker("train_gan", experiment="t") as tracker:
        monkeypatch.setattr(mlflow, "log_image", broken)
        tracker.log_image(np.zeros((4, 4, 3), np.uint8), key="samples", step=1)
        tracker.log_metrics({"loss": 1.0}, step=1)  # the stage goes on, untracked
    assert tracker.failed_calls == 2 and not tracker.enabled
    assert "artifact store unreachable" in caplog.text

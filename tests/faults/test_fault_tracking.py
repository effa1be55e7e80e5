"""Tracking outages: MLflow unreachable from the start, and a real MLflow server killed in the
middle of a stage. Training completes, the model, checkpoints and DVC metrics are the same as
with tracking, and the stage says how many logging calls were not recorded."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from fault_kit import (
    BIN,
    TRAIN_STEPS,
    assert_same_weights,
    checkpoint_step,
    copy_stage_files,
    environment,
    kill_group,
    metrics_without_timing,
    run_stage,
    stage_command,
    start,
    wait_for,
)
from local_servers import free_port, http_ok

pytestmark = pytest.mark.slow


def assert_complete_without_tracking(ws, reference, stage: str, model: str, out: str, uri: str):
    assert out.count(f"MLflow unavailable at {uri}") == 1, out[-3000:]  # said once, then quiet
    assert (
        f"of stage {stage} were not recorded ({uri}); checkpoints and DVC metrics are complete"
        in out
    )
    assert "Traceback" not in out
    assert checkpoint_step(ws / f"checkpoints/{stage}/last.pt") == TRAIN_STEPS[stage]
    assert_same_weights(ws / model, reference.path / model)
    assert metrics_without_timing(ws / f"metrics/{stage}.json") == metrics_without_timing(
        reference.path / f"metrics/{stage}.json"
    )


def test_mlflow_unreachable_from_the_start(reference, tmp_path):
    ws = copy_stage_files(reference.path, tmp_path / "ws")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = run_stage(ws, "pretrain_critic", env=environment(MLFLOW_TRACKING_URI=uri))
    assert done.returncode == 0, done.stdout[-3000:]
    assert_complete_without_tracking(
        ws, reference, "pretrain_critic", "models/critic.pt", done.stdout, uri
    )


def test_mlflow_server_killed_mid_stage(reference, tmp_path):
    ws = copy_stage_files(reference.path, tmp_path / "ws")
    port, store = free_port(), tmp_path / "server"
    store.mkdir()
    server = start(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--workers",
            "1",
        ],
        store,
        tmp_path / "server.log",
    )
    stage = None
    try:
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{port}/health"),
            server,
            300,
            "the MLflow server",
            tmp_path / "server.log",
        )
        uri = f"http://127.0.0.1:{port}"
        log = tmp_path / "train_gan.log"
        stage = start(stage_command("train_gan"), ws, log, env=environment(MLFLOW_TRACKING_URI=uri))
        wait_for(
            lambda: checkpoint_step(ws / "checkpoints/train_gan/last.pt") >= 2,
            stage,
            900,
            "the first checkpoint",
            log,
        )
        kill_group(server)  # the server goes away mid-run
        assert stage.wait(timeout=900) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        kill_group(server)
        if stage is not None and stage.poll() is None:
            kill_group(stage)
    out = log.read_text(errors="replace")
    assert_complete_without_tracking(
        ws, reference, "train_gan", "models/gan_generator.pt", out, uri
    )

    # what reached the server before it died is kept; the run never ended
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    [run] = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.run_name == "train_gan" and run.info.status == "RUNNING"
    assert run.data.params["steps"] == "8"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_psnr_y")][:1] == [2]

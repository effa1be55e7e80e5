"""Interruption: SIGKILL at a random point of each training stage (and of crappify), then
``dvc repro`` again, or a Prefect task retried: the stage resumes, the final outputs are
bitwise equal to an uninterrupted run's (CPU), and no partial file is ever visible as an output.

The kill points are drawn from ``FAULT_SEED`` (random when unset; printed, so a failure can
be replayed with ``FAULT_SEED=<seed> pytest ...``).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import cv2
import psutil
import pytest
import yaml

from pipelines.imaging.images import read_rgb
from pipelines.running.stages import TRAINING
from pipelines.training import checkpoint

import fault_kit
from fault_kit import (
    MODEL_FILES,
    TRAIN_STEPS,
    assert_same_weights,
    checkpoint_step,
    copy_workspace,
    dvc,
    dvc_command,
    kill_group,
    metrics_without_timing,
    start,
    stop_when,
    stray_temporaries,
    tree_digest,
    wait_for,
)

SEED = int(os.environ.get("FAULT_SEED") or random.randrange(2**32))


def rng_for(test: str) -> random.Random:
    print(f"kill points drawn with FAULT_SEED={SEED}")
    return random.Random(f"{SEED}-{test}")


# -- what "no partial file is visible" means, checked after every kill ------------------------
def declared_outputs(ws: Path) -> list[Path]:
    """Every output, metric and plot that dvc.yaml declares."""
    stages = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]
    found = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                found.append(ws / (entry if isinstance(entry, str) else next(iter(entry))))
    return found


def assert_complete(path: Path) -> None:
    """A visible file is whole: it parses or decodes."""
    suffix = path.suffix.lower()
    if suffix == ".pt":
        checkpoint.load(path)
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".csv":
        rows = list(csv.reader(path.open(newline="")))
        assert rows and all(len(r) == len(rows[0]) for r in rows), path
    elif suffix in (".png", ".jpg"):
        read_rgb(path)


def assert_no_partial_outputs(ws: Path) -> None:
    for out in declared_outputs(ws):
        files = [out] if out.is_file() else sorted(out.rglob("*")) if out.is_dir() else []
        for f in files:
            if f.is_file() and not f.name.startswith("."):  # .x.tmp: an unfinished write
                assert_complete(f)


def assert_same_results(ws: Path, ref: Path) -> None:
    """Outputs bitwise equal to the uninterrupted run's; metrics equal but for timings."""
    for name in MODEL_FILES:
        assert_same_weights(ws / name, ref / name)
    for folder in ("data/hr", "data/lr", "data/generated"):
        assert tree_digest(ws / folder) == tree_digest(ref / folder), folder
    for m in sorted((ref / "metrics").glob("*.json")):
        assert metrics_without_timing(ws / "metrics" / m.name) == metrics_without_timing(m), m.name
    for name in (
        "plots/pretrain_generator.csv",
        "plots/gan_scores.csv",
        "plots/pretrain_generator_loss.csv",
        "plots/pretrain_critic_loss.csv",
        "plots/train_gan_loss.csv",
        "metrics/evaluate_images.csv",
    ):
        assert (ws / name).read_bytes() == (ref / name).read_bytes(), name


def visible_stray_files(ws: Path) -> list[str]:
    return [p for p in stray_temporaries(ws) if not p.startswith((".dvc/", ".git/"))]


# -- dvc repro, killed in every training stage -------------------------------------------------
@pytest.mark.slow
def test_kill_9_in_every_training_stage_then_dvc_repro_equals_an_uninterrupted_run(
    template, reference, tmp_path
):
    rng = rng_for("training")
    ws = copy_workspace(template, tmp_path / "ws")
    killed_at: dict[str, int] = {}
    logs: dict[str, str] = {}
    for stage in TRAINING:
        log = tmp_path / f"repro-{stage}.log"
        proc = start(dvc_command("repro"), ws, log)
        last = ws / "checkpoints" / stage / "last.pt"
        step = rng.randint(1, TRAIN_STEPS[stage] // 2)
        # stopped anywhere after that checkpoint: mid-step, mid-validation, mid-write
        stop_when(
            lambda last=last, step=step: checkpoint_step(last) >= step,
            proc,
            900,
            f"{stage} at step {step}",
            log,
            slice_s=rng.uniform(0.005, 0.03),
        )
        kill_group(proc)
        killed_at[stage] = checkpoint_step(last)
        assert 0 < killed_at[stage] < TRAIN_STEPS[stage], f"{stage} was not killed mid-run"
        assert_no_partial_outputs(ws)
        recorded = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
        assert stage not in recorded  # DVC records only a stage that completed
        logs[stage] = log.read_text(errors="replace")
    print("killed at", killed_at)

    final = dvc(ws, "repro")
    after = {
        stage: (logs[TRAINING[i + 1]] if i + 1 < len(TRAINING) else final.stdout)
        for i, stage in enumerate(TRAINING)
    }
    for stage, step in killed_at.items():
        assert f"resuming from checkpoints/{stage}/last.pt at step {step}" in after[stage], stage
    assert_same_results(ws, reference.path)
    assert visible_stray_files(ws) == []
    assert "Data and pipelines are up to date" in dvc(ws, "status").stdout
    # DVC recorded the same data and models as for the uninterrupted run
    assert recorded_outputs(ws) == recorded_outputs(reference.path)


def recorded_outputs(ws: Path) -> dict[str, str]:
    """The hashes dvc.lock holds for data and models (metrics files hold timings)."""
    stages = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    return {
        o["path"]: o["md5"]
        for stage in stages.values()
        for o in stage["outs"]
        if o["path"].startswith(("data/", "models/"))
    }


@pytest.mark.slow
def test_interrupted_right_after_a_phase_ends_resumes_exactly(
    stage_inputs, reference, monkeypatch, caplog
):
    """Stopped just after the checkpoint that ends phase 1 (step 4 of 4 + 4): the resumed phase 2
    starts with a fresh optimizer, as the uninterrupted run's does (a random kill found this)."""
    from pipelines import pretrain_generator
    from pipelines.training import loop as training

    (stage_inputs / "models/generator.pt").unlink()
    save = training.RollingCheckpoint.save

    def save_then_die(self, step, **state):
        save(self, step, **state)
        if step == 4:
            raise KeyboardInterrupt  # as if killed right after this checkpoint

    monkeypatch.setattr(training.RollingCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain_generator.main(["--no-tracking"])
    monkeypatch.setattr(training.RollingCheckpoint, "save", save)
    with caplog.at_level("INFO"):
        assert pretrain_generator.main(["--no-tracking"]) == 0
    assert "resuming from checkpoints/pretrain_generator/last.pt at step 4" in caplog.text
    assert_same_weights(
        stage_inputs / "models/generator.pt", reference.path / "models/generator.pt"
    )


# -- crappify, killed mid-way -------------------------------------------------------------------
def many_photos(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i:03d}.png"), fault_kit._bgr(fault_kit._photo(i, 48, 56)))
    return folder


@pytest.mark.slow
def test_kill_9_in_crappify_midway_then_dvc_repro_equals_an_uninterrupted_run(
    fault_store, tmp_path
):
    rng = rng_for("crappify")
    params = fault_kit.fault_params(many_photos(tmp_path / "photos", 300))
    params["crappify"]["workers"] = 2  # the worker pool dies with the group too
    straight = fault_kit.make_workspace(tmp_path / "straight", params)
    ws = copy_workspace(straight, tmp_path / "ws")
    dvc(straight, "repro", "crappify")

    log = tmp_path / "repro.log"
    proc = start(dvc_command("repro", "crappify"), ws, log)
    journal = ws / "data/lr/.crappify-journal.jsonl"
    done = rng.randint(5, 200)

    def lines() -> int:
        try:
            return journal.read_bytes().count(b"\n")
        except OSError:
            return 0

    wait_for(lambda: lines() >= done, proc, 300, f"{done} crappified images", log)
    kill_group(proc)
    assert not (ws / "data/lr/manifest.csv").exists()  # written only when complete
    assert_no_partial_outputs(ws)
    finished = lines()
    assert finished < 300, "crappify ended before it could be interrupted"

    out = dvc(ws, "repro", "crappify").stdout
    # a number of the run, not a result: logs/, not metrics/
    reused = json.loads((ws / "logs/crappify.json").read_text())["reused"]
    assert reused >= finished - 2 * 2  # all but what was in flight (2 workers)
    assert f"300 HR images: {reused} already done" in out
    assert tree_digest(ws / "data/lr") == tree_digest(straight / "data/lr")
    assert visible_stray_files(ws) == []
    lr_out = [
        yaml.safe_load((w / "dvc.lock").read_text())["stages"]["crappify"]["outs"][0]
        for w in (ws, straight)
    ]
    assert lr_out[0]["path"] == "data/lr" and lr_out[0] == lr_out[1]  # DVC's hash, too


# -- the Prefect flow: a retried task resumes -------------------------------------------------
def stage_processes(stage: str) -> list[psutil.Process]:
    """This test's descendants running ``python -m pipelines.<stage>``."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if f"pipelines.{stage}" in p.cmdline():
                found.append(p)
        except psutil.Error:
            pass
    return found


def flow_logs(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(entry.message for entry in logs)


@pytest.mark.slow
def test_a_retried_flow_task_resumes_the_killed_stage(
    prefect_api, reference, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.training import training
    from tasks import dvc_stage

    rng = rng_for("flow")
    ws = copy_workspace(reference.path, tmp_path / "ws")
    fault_kit.forget_stage(ws)
    for name, value in fault_kit.environment().items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    monkeypatch.setitem(dvc_stage.STAGE_RETRIES, "train_gan", 1)
    monkeypatch.setattr(dvc_stage, "RETRY_DELAY_SECONDS", 0)

    last = ws / "checkpoints/train_gan/last.pt"
    step = rng.randint(1, TRAIN_STEPS["train_gan"] - 2)
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and checkpoint_step(last) < step:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        for proc in stage_processes("train_gan"):
            proc.send_signal(signal.SIGKILL)
            killed.append(checkpoint_step(last))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    state = training(root=str(ws), stages=["train_gan"], return_state=True)
    thread.join(timeout=10)
    assert killed and 0 < killed[0] < TRAIN_STEPS["train_gan"], killed
    assert state.is_completed(), state.message
    assert state.result() == {"train_gan": "ran"}
    with get_client(sync_client=True) as client:
        [task_run] = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    assert task_run.run_count == 2  # killed once, retried once
    resumed = f"resuming from checkpoints/train_gan/last.pt at step {killed[0]}"
    deadline = time.monotonic() + 60  # the API receives logs in batches
    while resumed not in (text := flow_logs(state.state_details.flow_run_id)):
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(1)
    assert_same_weights(ws / "models/gan_generator.pt", reference.path / "models/gan_generator.pt")
    assert metrics_without_timing(ws / "metrics/train_gan.json") == metrics_without_timing(
        reference.path / "metrics/train_gan.json"
    )
    assert visible_stray_files(ws) == []

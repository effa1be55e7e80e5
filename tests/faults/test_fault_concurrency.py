"""Concurrency: two ``dvc repro`` at once in one workspace, and two flow runs at once. The second
``dvc repro`` fails at once with DVC's lock message naming the process that holds the lock; the
second flow waits for the workspace lock. The first run is undisturbed, nothing is corrupted."""
from __future__ import annotations

import subprocess
import sys

import pytest

import fault_kit
from fault_kit import (ROOT, assert_same_weights, copy_workspace, dvc, dvc_command, environment,
                       start, wait_for)

pytestmark = pytest.mark.slow


def assert_like_reference(ws, reference) -> None:
    for name in fault_kit.MODEL_FILES:
        assert_same_weights(ws / name, reference.path / name)
    assert "Data and pipelines are up to date" in dvc(ws, "status").stdout


def test_second_dvc_repro_fails_clearly_while_the_first_goes_on(reference, tmp_path):
    ws = copy_workspace(reference.path, tmp_path / "ws")
    fault_kit.forget_stage(ws)
    log = tmp_path / "first.log"
    first = start(dvc_command("repro"), ws, log)
    try:
        wait_for(lambda: (ws / "checkpoints/train_gan").exists(), first, 900, "train_gan to run", log)
        second = subprocess.run(dvc_command("repro"), cwd=ws, env=environment(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        # DVC's lock on the outputs the first run is writing, naming who holds it
        assert second.returncode != 0, second.stdout
        assert "is busy, it is being blocked by:" in second.stdout, second.stdout
        assert f"(PID {first.pid}): " in second.stdout, second.stdout
        assert first.poll() is None  # still training, undisturbed
        assert first.wait(timeout=900) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if first.poll() is None:
            fault_kit.kill_group(first)
    assert_like_reference(ws, reference)


FLOW = """\
import sys
from flows.training import training
state = training(root=sys.argv[1], return_state=True)
print("outcomes:", state.result(raise_on_failure=False), flush=True)
sys.exit(0 if state.is_completed() else 1)
"""


def test_second_flow_run_waits_for_the_first(prefect_api, reference, tmp_path):
    from prefect.settings import PREFECT_API_URL

    ws = copy_workspace(reference.path, tmp_path / "ws")
    fault_kit.forget_stage(ws)
    env = environment(PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT))
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = start([sys.executable, "-c", FLOW, str(ws)], ROOT, logs[0], env=env)
    second = None
    try:
        wait_for(lambda: (ws / "checkpoints/train_gan").exists(), first, 900, "train_gan to run",
                 logs[0])
        second = start([sys.executable, "-c", FLOW, str(ws)], ROOT, logs[1], env=env)
        assert first.wait(timeout=900) == 0, logs[0].read_text(errors="replace")[-3000:]
        assert second.wait(timeout=900) == 0, logs[1].read_text(errors="replace")[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                fault_kit.kill_group(proc)
    text = [log.read_text(errors="replace") for log in logs]
    assert "waiting for another DVC command in" in text[1]
    assert "'train_gan': 'ran'" in text[0]
    assert "'train_gan': 'up to date'" in text[1]  # it found the first run's result, whole
    assert "'failed'" not in text[0] + text[1]
    assert_like_reference(ws, reference)

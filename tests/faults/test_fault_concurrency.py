"""Concurrency: two ``dvc repro`` at once in one workspace, and two flow runs at once. The second
``dvc repro`` fails at once with DVC's lock message naming the process that holds the lock; two
flows take turns on the workspace lock (one waits). The first run is undisturbed, nothing is
corrupted."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fault_kit
from fault_kit import (
    ROOT,
    assert_same_weights,
    copy_workspace,
    dvc,
    dvc_command,
    environment,
    start,
    wait_for,
)

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
        wait_for(
            lambda: (ws / "checkpoints/train_gan").exists(), first, 900, "train_gan to run", log
        )
        second = subprocess.run(
            dvc_command("repro"),
            cwd=ws,
            env=environment(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
        # DVC's lock on the outputs the first run is writing, naming who holds it
        assert second.returncode != 0, second.stdout
        assert "is busy, it is being blocked by:" in second.stdout, second.stdout
        assert f"(PID {first.pid}): " in second.stdout, second.stdout
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


def test_two_flow_runs_at_once_take_turns(prefect_api, reference, tmp_path):
    """Both start together; their tasks take turns on the workspace lock, so one runs train_gan
    while the other waits, then finds it up to date."""
    from prefect.settings import PREFECT_API_URL

    ws = copy_workspace(reference.path, tmp_path / "ws")
    fault_kit.forget_stage(ws)
    env = environment(PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT))
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    runs = [start([sys.executable, "-c", FLOW, str(ws)], ROOT, log, env=env) for log in logs]
    try:
        for run, log in zip(runs, logs):
            assert run.wait(timeout=900) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        for run in runs:
            if run.poll() is None:
                fault_kit.kill_group(run)
    text = [log.read_text(errors="replace") for log in logs]
    outcomes = [next(line for line in t.splitlines() if line.startswith("outcomes:")) for t in text]
    assert sum("'train_gan': 'ran'" in o for o in outcomes) == 1, outcomes  # one trained
    assert sum("'train_gan': 'up to date'" in o for o in outcomes) == 1, outcomes
    assert not any("'failed'" in o for o in outcomes), outcomes
    assert any("waiting for another DVC command in" in t for t in text)
    assert_like_reference(ws, reference)

"""Deployments on a real `prefect server start`: prefect.yaml, a process worker, the gpu limit."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.dvc_stage import stage_task
from tasks.process import terminate_group
from tiny_dvc_repo import INTERVAL_DVC_YAML, make_repo

pytestmark = pytest.mark.slow

CODE = Path(__file__).resolve().parents[1]  # the checkout holding prefect.yaml and flows/


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free loopback port, with its own home and database."""
    home = tmp_path_factory.mktemp("prefect-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start",
                             "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert proc.poll() is None, (home / "server.log").read_text()
            assert time.monotonic() < deadline, "prefect server did not start in 120 s"
            time.sleep(0.5)
        yield url, env
    finally:
        terminate_group(proc, grace=10)
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def cli(env: dict, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(list(args), cwd=CODE, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_prefect_yaml_deployment_runs_on_a_process_worker(server, tmp_path):
    url, env = server
    repo = make_repo(tmp_path / "repo")
    prefect = [sys.executable, "-m", "prefect"]
    decrappify = [sys.executable, "-m", "pipelines.cli"]
    cli(env, *prefect, "work-pool", "create", "test-pool", "--type", "process")
    cli(env, *decrappify, "deploy", "--", "--name", "nightly", "--pool", "test-pool",
        "--param", f"root={repo}")
    out = cli(env, *prefect, "deployment", "run", "training/nightly")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    # The worker takes the waiting run, runs it to the end in this checkout, and exits.
    cli(env, *decrappify, "worker", "--root", str(CODE), "--pool", "test-pool", "--run-once",
        timeout=300)

    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        deployment = client.read_deployment_by_name("training/nightly")
    assert run.state.is_completed(), run.state.message
    assert (repo / "dvc.lock").exists() and (repo / "model.txt").exists()
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 3 * * *" and not schedule.active
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "{{ $DECRAPPIFY_ROOT }}"}}]


@flow
def two_training_stages(roots: list[str]) -> None:
    futures = [stage_task("train_gan").submit("train_gan", root) for root in roots]
    for future in futures:
        future.result()


def test_gpu_limit_serialises_training_stages(server, tmp_path):
    url, env = server
    roots = [make_repo(tmp_path / name, dvc_yaml=INTERVAL_DVC_YAML, params="{}\n")
             for name in ("a", "b")]

    def intervals():
        with temporary_settings(updates={PREFECT_API_URL: url}):
            two_training_stages([str(r) for r in roots])
            APILogHandler().flush()  # while the server is still there to take the logs
        (a0, a1), (b0, b1) = (json.loads((r / "interval.json").read_text()) for r in roots)
        return a0 < b1 and b0 < a1  # do they overlap?

    assert intervals(), "without a limit the two stages run side by side"
    cli(env, sys.executable, "-m", "prefect", "concurrency-limit", "create", "gpu", "1")
    assert not intervals(), "with `gpu` limited to 1 they take turns"

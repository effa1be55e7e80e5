"""Deployments on a real `prefect server start`: prefect.yaml, process workers (in the
checkout, and on "another machine" that clones the code and pulls data from a DVC remote),
the gpu limit, and the MLflow server and UI a user browses afterwards."""

from __future__ import annotations

import json
import os
import re
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

from pipelines.running import registry
from pipelines.running.stages import STAGES
from tasks.dvc_stage import stage_environment, stage_task

from local_servers import free_port, service
from pipeline_repo import ORCHESTRATION, TINY, dvc_cli, git, make_pipeline_repo
from tiny_dvc_repo import INTERVAL_DVC_YAML, make_repo

pytestmark = pytest.mark.slow

CODE = Path(__file__).resolve().parents[1]  # the checkout holding prefect.yaml and flows/


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free loopback port, with its own home and database."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
    }
    with service(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        home,
        f"{url}/health",
        env,
        timeout=120,
    ):
        yield url, env


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port: SQLite backend, artifacts served by the server."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    with service(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination",
            str(home / "artifacts"),
        ],
        home,
        f"http://127.0.0.1:{port}/health",
    ):
        yield f"http://127.0.0.1:{port}"


def cli(env: dict, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        list(args), cwd=CODE, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_prefect_yaml_deployment_runs_on_a_process_worker(server, tmp_path):
    url, env = server
    repo = make_repo(tmp_path / "repo")
    prefect = [sys.executable, "-m", "prefect"]
    decrappify = [sys.executable, "-m", "flows.cli"]
    cli(env, *prefect, "work-pool", "create", "test-pool", "--type", "process")
    cli(
        env,
        *decrappify,
        "deploy",
        "--",
        "--name",
        "nightly",
        "--pool",
        "test-pool",
        "--param",
        f"root={repo}",
    )
    out = cli(env, *prefect, "deployment", "run", "training/nightly")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    # The worker takes the waiting run, runs it to the end in this checkout, and exits.
    cli(
        env,
        *decrappify,
        "worker",
        "--root",
        str(CODE),
        "--pool",
        "test-pool",
        "--run-once",
        timeout=300,
    )

    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        deployment = client.read_deployment_by_name("training/nightly")
    assert run.state.is_completed(), run.state.message
    assert (repo / "dvc.lock").exists() and (repo / "model.txt").exists()
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 3 * * *" and not schedule.active
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $DECRAPPIFY_ROOT }}"}}
    ]


def test_deployment_artifact_queues_keep_from_git_runs_away_from_a_checkout_worker(
    server, tmp_path
):
    """Each deployment has its own work queue: a checkout worker takes `nightly` runs and
    leaves a `from-git` run waiting, which needs $DECRAPPIFY_GIT_URL that it does not have."""
    url, env = server
    repo = make_repo(tmp_path / "repo")
    prefect = [sys.executable, "-m", "prefect"]
    decrappify = [sys.executable, "-m", "flows.cli"]
    cli(env, *prefect, "work-pool", "create", "queue-pool", "--type", "process")
    cli(
        env,
        *decrappify,
        "deploy",
        "--",
        "--name",
        "nightly",
        "--pool",
        "queue-pool",
        "--param",
        f"root={repo}",
    )
    cli(env, *decrappify, "deploy", "--", "--name", "from-git", "--pool", "queue-pool")
    ids = {}
    for name in ("from-git", "nightly"):  # the from-git run first: it would be taken first
        out = cli(env, *prefect, "deployment", "run", f"training/{name}")
        ids[name] = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    cli(
        env,
        *decrappify,
        "worker",
        "--root",
        str(CODE),
        "--pool",
        "queue-pool",
        "--run-once",
        timeout=300,
    )
    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        runs = {name: client.read_flow_run(i) for name, i in ids.items()}
    assert runs["nightly"].state.is_completed(), runs["nightly"].state.message
    assert runs["nightly"].work_queue_name == "checkout"
    assert runs["from-git"].work_queue_name == "from-git"
    assert runs["from-git"].state.is_scheduled(), runs["from-git"].state
    assert runs["from-git"].start_time is None  # never started by the checkout worker


@flow
def two_training_stages(roots: list[str]) -> None:
    futures = [stage_task("train_gan").submit("train_gan", root) for root in roots]
    for future in futures:
        future.result()


def test_gpu_limit_serialises_training_stages(server, tmp_path):
    url, env = server
    roots = [
        make_repo(tmp_path / name, dvc_yaml=INTERVAL_DVC_YAML, params="{}\n") for name in ("a", "b")
    ]

    def intervals():
        with temporary_settings(updates={PREFECT_API_URL: url}):
            two_training_stages([str(r) for r in roots])
            APILogHandler().flush()  # while the server is still there to take the logs
        (a0, a1), (b0, b1) = (json.loads((r / "interval.json").read_text()) for r in roots)
        return a0 < b1 and b0 < a1  # do they overlap?

    assert intervals(), "without a limit the two stages run side by side"
    cli(env, sys.executable, "-m", "prefect", "concurrency-limit", "create", "gpu", "1")
    # A process remembers for 5 s that a set of task tags has no limit
    # (prefect.concurrency.services._no_limits_cache): the first run told this one so
    time.sleep(6)
    assert not intervals(), "with `gpu` limited to 1 they take turns"


def _get(url: str, endpoint: str, **query) -> dict:
    """A GET of the MLflow UI's own JSON API."""
    from urllib.parse import urlencode

    with urllib.request.urlopen(f"{url}{endpoint}?{urlencode(query, doseq=True)}", timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def _artifacts(url: str, run_id: str, path: str = "") -> list[str]:
    """Every artifact file of a run, as the UI's artifact browser lists them."""
    listing = _get(url, "/ajax-api/2.0/mlflow/artifacts/list", run_id=run_id, path=path)
    found = []
    for item in listing.get("files", []):
        found += _artifacts(url, run_id, item["path"]) if item["is_dir"] else [item["path"]]
    return found


def test_worker_elsewhere_clones_pulls_runs_the_pipeline_and_mlflow_ui_shows_it(
    server, mlflow_server, tmp_path
):
    """The `from-git` deployment on a worker with no checkout, as on another machine: the run
    clones the repository, takes from the DVC remote what is there, runs the real stages on
    the sample photos, logs them to the MLflow server, and pushes itself back as a DVC
    experiment that a third clone gets without recomputing anything."""
    url, env = server
    env = {**env, "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("DECRAPPIFY_ROOT", None)
    remote = tmp_path / "dvc-remote"
    seed = make_pipeline_repo(tmp_path / "seed", TINY, parts=ORCHESTRATION)
    dvc_cli(seed, "remote", "add", "-d", "storage", str(remote))
    git(seed, "commit", "-q", "-am", "DVC remote")
    origin = tmp_path / "origin.git"  # stands for the repository on a git host
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(origin))

    prefect = [sys.executable, "-m", "prefect"]
    cli(env, *prefect, "work-pool", "create", "elsewhere", "--type", "process")
    cli(
        env,
        sys.executable,
        "-m",
        "flows.cli",
        "deploy",
        "--",
        "--name",
        "from-git",
        "--pool",
        "elsewhere",
    )
    out = cli(env, *prefect, "deployment", "run", "training/from-git")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    machine = tmp_path / "machine-b"  # no checkout, no DVC cache
    machine.mkdir()
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "worker",
            "--pool",
            "elsewhere",
            "--run-once",
            "--git-url",
            origin.as_uri(),
        ],
        cwd=machine,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    assert run.state.is_completed(), (
        f"{run.state.message}\n{worker.stdout[-6000:]}\n{worker.stderr[-6000:]}"
    )
    assert list(machine.iterdir()) == [], "the run worked in a temporary clone"

    # -- what the MLflow UI shows, over HTTP ---------------------------------------------------
    with urllib.request.urlopen(mlflow_server, timeout=30) as page:
        assert page.status == 200 and b"MLflow" in page.read()
    experiment = _get(
        mlflow_server, "/ajax-api/2.0/mlflow/experiments/get-by-name", experiment_name="decrappify"
    )["experiment"]
    runs = _post(
        mlflow_server,
        "/ajax-api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
    )["runs"]
    tags = {
        r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs
    }
    [parent] = [
        r for r in runs if tags[r["info"]["run_id"]].get("prefect.flow_run_id") == flow_run_id
    ]
    parent_id = parent["info"]["run_id"]
    children = {
        r["info"]["run_name"]: r
        for r in runs
        if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == parent_id
    }
    stages = list(STAGES)
    assert sorted(children) == sorted(stages)
    assert tags[parent_id]["decrappify.stages.ran"] == ",".join(stages)
    assert all(c["info"]["status"] == "FINISHED" for c in children.values())
    metrics = {
        name: {m["key"] for m in c["data"].get("metrics", [])} for name, c in children.items()
    }
    assert {"loss", "valid_psnr_y"} <= metrics["pretrain_generator"], metrics["pretrain_generator"]
    assert "test.gain_db.gan_generator" in metrics["evaluate"], metrics["evaluate"]
    history = _get(
        mlflow_server,
        "/ajax-api/2.0/mlflow/metrics/get-history",
        run_id=children["pretrain_generator"]["info"]["run_id"],
        metric_key="loss",
    )
    assert [m["step"] for m in history["metrics"]] == list(range(1, 7))
    images = {
        name: [a for a in _artifacts(mlflow_server, c["info"]["run_id"]) if a.endswith(".png")]
        for name, c in children.items()
    }
    assert images["crappify"] and images["pretrain_generator"] and images["evaluate"], images
    exports = _artifacts(mlflow_server, children["export"]["info"]["run_id"])
    assert {
        "export/gan_generator.onnx",
        "export/gan_generator.safetensors",
        "export/gan_generator.md",
    } <= set(exports), exports
    with urllib.request.urlopen(
        f"{mlflow_server}/get-artifact?path={images['evaluate'][0]}"
        f"&run_uuid={children['evaluate']['info']['run_id']}"
    ) as r:
        assert r.read(8) == b"\x89PNG\r\n\x1a\n"
    # train_gan registered the GAN generator; evaluate tagged the version with its test scores
    # and points `champion` at it only when it beats bicubic (a few steps may not)
    [version] = _get(
        mlflow_server,
        "/ajax-api/2.0/mlflow/model-versions/search",
        filter="name='decrappify-generator'",
    )["model_versions"]
    assert version["run_id"] == children["train_gan"]["info"]["run_id"]
    version_tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    gain = float(version_tags["decrappify.eval.gain_db"])
    model = _get(
        mlflow_server, "/ajax-api/2.0/mlflow/registered-models/get", name="decrappify-generator"
    )["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    scores = {m["key"]: m["value"] for m in children["evaluate"]["data"]["metrics"]}
    assert gain == pytest.approx(scores["test.gain_db.gan_generator"], abs=1e-6)
    qualified = version_tags["decrappify.eval.qualified"] == "true"
    summary: dict = {}
    for key, value in scores.items():  # test.<method>.<metric> back into evaluate's summary
        dataset, method, *metric = key.split(".")
        if dataset == "test" and metric:
            summary.setdefault(method, {})[metric[0]] = value
    gan_params = {p["key"]: p["value"] for p in children["train_gan"]["data"]["params"]}
    trade = registry.Trade(gan_params["select_metric"], float(gan_params["max_psnr_drop"]))
    assert qualified == registry.qualifies("gan_generator", summary, trade)
    assert aliases == ({"champion": version["version"]} if qualified else {})

    # -- a third clone gets the run from the remotes and finds nothing to recompute -----------
    name = tags[parent_id]["dvc.experiment"]
    assert tags[parent_id]["dvc.experiment.pushed_to"] == "origin"
    laptop = tmp_path / "laptop"
    git(tmp_path, "clone", "-q", str(origin), str(laptop))
    dvc_env = stage_environment({})  # stage commands say `python`: this interpreter's
    dvc_cli(laptop, "exp", "pull", "origin", name, env=dvc_env)
    dvc_cli(laptop, "exp", "apply", name, env=dvc_env)
    dvc_cli(laptop, "pull", env=dvc_env)
    assert (laptop / "models/gan_generator.pt").exists()
    repro = dvc_cli(laptop, "repro", env=dvc_env).stdout
    assert "Running stage" not in repro, repro
    status = dvc_cli(laptop, "status", env=dvc_env).stdout
    assert "up to date" in status, status

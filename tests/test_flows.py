"""The training flow against real DVC repositories, a real Prefect API and a real MLflow store."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import mlflow
import psutil
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL

from flows.cli import build_parser, main
from flows.training import training
from pipelines.core.config import read_params
from tasks.process import terminate_group
from tasks.workspace import (
    OverrideError,
    PipelineOrderError,
    apply_overrides,
    set_param_args,
    stage_order,
)

from pipeline_repo import git
from tiny_dvc_repo import DVC_YAML, SLEEPER_DVC_YAML, make_repo

STAGES = ["download", "crappify", "train_gan"]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def built(prefect_api, tracking_uri, tmp_path_factory):
    """A tiny pipeline after its first flow run (every test below leaves its workspace as is)."""
    repo = make_repo(tmp_path_factory.mktemp("built") / "repo")
    state = training(root=str(repo), return_state=True)
    return repo, state


def run_flow(**kwargs):
    state = training(return_state=True, **kwargs)
    return state, state.result(raise_on_failure=False)


def task_runs(state) -> dict:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    return {run.name: run for run in runs}


def parent_run(state):
    """The MLflow parent run of a flow run, and the names of its child runs."""
    flow_run_id = str(state.state_details.flow_run_id)
    found = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
    )
    assert len(found) == 1, f"one parent run per flow run, found {len(found)}"
    parent_id = found[0].info.run_id
    children = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
    )
    return found[0], sorted(c.info.run_name for c in children)


# -- stage order, without Prefect ---------------------------------------------------------
def test_stage_order_is_the_order_of_dvc_yaml_checked_against_the_graph(tmp_path):
    # An independent stage listed first stays first: the order is dvc.yaml's, not a sort.
    extra = "  report:\n    cmd: python -c \"open('r.txt', 'w')\"\n    outs: [r.txt]\n"
    listed_first = DVC_YAML.replace("stages:\n", "stages:\n" + extra)
    repo = make_repo(tmp_path / "ok", dvc_yaml=listed_first)
    assert stage_order(repo) == ["report", *STAGES]

    header, download, crappify, train_gan = re.split(r"(?m)^(?=  \w+:$)", DVC_YAML)
    bad = make_repo(tmp_path / "bad", dvc_yaml=header + download + train_gan + crappify)
    with pytest.raises(PipelineOrderError, match="'train_gan' before 'crappify'"):
        stage_order(bad)


def test_the_stage_registry_is_the_projects_dvc_yaml_in_order(repo_root):
    from pipelines.running import stages

    assert list(stages.STAGES) == stage_order(repo_root)
    assert set(stages.TRAINING) <= stages.ACCELERATED <= set(stages.STAGES)
    # every stage is a module of its own: `python -m pipelines.<stage>`
    assert all((repo_root / "pipelines" / f"{name}.py").is_file() for name in stages.STAGES)


def test_overrides_are_written_as_dvc_exp_run_set_param_writes_them(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("# kept\nbase:\n  device: auto  # kept too\n  lr: 0.1\n  crop: [1, 2]\n")
    # Text goes to DVC as typed after `-S key=`; other values keep their type.
    overrides = {
        "base.device": "cpu",
        "base.lr": 1e-5,
        "base.crop": [64, 64],
        "+base.note": "'1e-5'",
        "+base.seed": "7",
    }
    assert set_param_args(overrides) == [
        "base.device=cpu",
        "base.lr=1e-05",
        "base.crop=[64,64]",
        "+base.note='1e-5'",
        "+base.seed=7",
    ]
    apply_overrides(tmp_path, overrides)
    assert "# kept too" in params.read_text()
    # DVC writes 1e-05, which a YAML 1.1 reader takes for a string unless told otherwise.
    assert read_params(params)["base"] == {
        "device": "cpu",
        "lr": 1e-5,
        "crop": [64, 64],
        "note": "1e-5",
        "seed": 7,
    }
    with pytest.raises(OverrideError, match="base.nope"):
        apply_overrides(tmp_path, {"base.nope": 1})


# -- the flow ------------------------------------------------------------------------------
def test_first_run_runs_every_stage_in_dvc_yaml_order_with_a_child_run_each(built):
    repo, state = built
    assert state.is_completed(), state.message
    outcomes = state.result()
    assert list(outcomes.items()) == [(s, "ran") for s in STAGES]
    runs = task_runs(state)
    started = sorted(STAGES, key=lambda s: runs[s].start_time)
    assert started == STAGES
    assert "gpu" in runs["train_gan"].tags
    assert "gpu" not in runs["download"].tags and "gpu" not in runs["crappify"].tags
    assert runs["download"].empirical_policy.retries == 2

    parent, children = parent_run(state)
    assert children == sorted(STAGES)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["decrappify.stages.ran"] == ",".join(STAGES)
    assert tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD")
    assert tags["dvc.lock.sha256"] == hashlib.sha256((repo / "dvc.lock").read_bytes()).hexdigest()
    assert (repo / "model.txt").read_text() == "xxxx" * 2


def test_second_run_finds_every_stage_up_to_date_and_opens_no_child_run(built):
    repo, _ = built
    lock = (repo / "dvc.lock").read_bytes()
    state, outcomes = run_flow(root=str(repo))
    assert outcomes == dict.fromkeys(STAGES, "up to date")
    parent, children = parent_run(state)
    assert children == []
    assert parent.data.tags["decrappify.stages.up_to_date"] == ",".join(STAGES)
    assert parent.data.tags["decrappify.stages.ran"] == ""
    assert (repo / "dvc.lock").read_bytes() == lock


def test_override_reruns_only_its_stage_as_a_dvc_experiment_leaving_the_workspace(built):
    repo, _ = built
    kept = ("params.yaml", "dvc.lock", "model.txt", "checkpoints/train_gan/last.json")
    before = {name: (repo / name).read_bytes() for name in kept}
    status = git(repo, "status", "--porcelain")  # dvc.lock is not committed: harder case
    state, outcomes = run_flow(root=str(repo), overrides={"train_gan.steps": 5})
    assert state.is_completed(), state.message
    assert outcomes == {"download": "up to date", "crappify": "up to date", "train_gan": "ran"}
    assert {name: (repo / name).read_bytes() for name in before} == before
    assert git(repo, "status", "--porcelain") == status

    parent, children = parent_run(state)
    assert children == ["train_gan"]
    name = parent.data.tags["dvc.experiment"]
    head = git(repo, "rev-parse", "HEAD")
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"  # based on HEAD: `dvc exp show` lists it
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "list", "--name-only"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert name in listed
    assert yaml.safe_load(git(repo, "show", f"{ref}:params.yaml"))["train_gan"]["steps"] == 5
    assert yaml.safe_load(git(repo, "show", f"{ref}:metrics/train_gan.json")) == {"steps": 5}
    files = git(repo, "ls-tree", "-r", "--name-only", ref).split()
    assert "dvc.lock" in files and not any(f.startswith("checkpoints/") for f in files)
    assert len(git(repo, "worktree", "list").splitlines()) == 1


def test_failing_stage_fails_the_flow_with_its_output_and_marks_the_parent_failed(built):
    repo, _ = built
    params = (repo / "params.yaml").read_bytes()
    refs = git(repo, "for-each-ref", "refs/exps")
    state, error = run_flow(root=str(repo), overrides={"crappify.fail": True})
    assert state.is_failed()
    assert "stage 'crappify' failed" in str(error)
    assert "crappify: refusing on purpose" in str(error)
    parent, children = parent_run(state)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["decrappify.stage.crappify"] == "failed"
    assert parent.data.tags["decrappify.stage.train_gan"] == "not run"
    assert children == ["crappify"]
    assert (repo / "params.yaml").read_bytes() == params
    assert git(repo, "for-each-ref", "refs/exps") == refs  # a failed run is no experiment
    assert len(git(repo, "worktree", "list").splitlines()) == 1


def test_bad_override_or_stage_name_fails_before_any_stage_runs(built):
    repo, _ = built
    state, error = run_flow(root=str(repo), overrides={"crappify.nope": 1})
    assert state.is_failed() and "crappify.nope" in str(error)
    assert task_runs(state) == {}
    state, error = run_flow(root=str(repo), stages=["crapify"])
    assert state.is_failed() and "unknown stage(s) crapify" in str(error)
    assert task_runs(state) == {}


def test_unreachable_mlflow_does_not_stop_the_flow(built, monkeypatch, caplog):
    repo, _ = built
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING):
        state, outcomes = run_flow(root=str(repo))
    assert state.is_completed(), state.message
    assert outcomes == dict.fromkeys(STAGES, "up to date")
    warnings = [r for r in caplog.records if "MLflow unavailable" in r.getMessage()]
    assert len(warnings) == 1


def test_timeout_kills_the_stage_process_tree(prefect_api, tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "sleeper", dvc_yaml=SLEEPER_DVC_YAML, params="{}\n")
    started = time.monotonic()
    state, error = run_flow(root=str(repo), stage_timeout=4)
    assert state.is_failed() and "timeout" in str(error)
    assert time.monotonic() - started < 60
    pids = [int(p) for p in (repo / "pids.txt").read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        assert not _alive(pid), f"process {pid} of the timed-out stage is still running"


def test_terminating_the_flow_process_stops_the_stage(prefect_api, tracking_uri, tmp_path):
    """What a cancelled deployment run or `kill` does: SIGTERM to the flow's process."""
    repo = make_repo(tmp_path / "sleeper", dvc_yaml=SLEEPER_DVC_YAML, params="{}\n")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--root", str(repo)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            pids = repo / "pids.txt"
            while not pids.exists() or len(pids.read_text().split()) < 2:
                assert proc.poll() is None, (tmp_path / "run.log").read_text()
                assert time.monotonic() < deadline, "the stage did not start"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) != 0
        finally:
            terminate_group(proc, grace=5)
    for pid in (int(p) for p in (repo / "pids.txt").read_text().split()):
        assert not _alive(pid), f"process {pid} of the stage outlived the flow"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- the command line ----------------------------------------------------------------------
def test_cli_run_selects_stages_and_passes_overrides(built, capsys):
    repo, _ = built
    code = main(
        ["run", "--root", str(repo), "--stages", "train_gan", "download", "-S", "train_gan.steps=3"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.index("download") < out.index("train_gan")
    assert "train_gan: ran" in out and "download: up to date" in out


def test_cli_parses_serve_and_worker_options():
    args = build_parser().parse_args(["serve", "--cron", "0 3 * * *", "-S", "crappify.workers=1"])
    assert args.cron == "0 3 * * *" and args.set == ["crappify.workers=1"]
    args = build_parser().parse_args(["worker", "--run-once"])
    assert args.pool == "decrappify" and args.run_once


def test_worker_exports_the_checkout_or_the_git_url_never_both(monkeypatch, tmp_path):
    """`decrappify worker` executes flow runs in its checkout (DECRAPPIFY_ROOT); with --git-url each
    run clones that repository instead, and an inherited DECRAPPIFY_ROOT would point the
    flow away from its clone."""
    from flows import deployments

    started = []
    monkeypatch.setattr(deployments.os, "execve", lambda exe, cmd, env: started.append((cmd, env)))
    monkeypatch.setenv("DECRAPPIFY_ROOT", "/somewhere/else")
    assert main(["worker", "--root", str(tmp_path), "--pool", "p", "--run-once"]) == 0
    assert main(["worker", "--pool", "p", "--git-url", "https://example.org/r.git"]) == 0
    (cmd, env), (cmd2, env2) = started
    assert cmd[-6:] == ["p", "--work-queue", "checkout", "--type", "process", "--run-once"]
    assert cmd2[-5:] == ["p", "--work-queue", "from-git", "--type", "process"]
    assert env["DECRAPPIFY_ROOT"] == str(tmp_path.resolve()) and "DECRAPPIFY_GIT_URL" not in env
    assert (
        "DECRAPPIFY_ROOT" not in env2 and env2["DECRAPPIFY_GIT_URL"] == "https://example.org/r.git"
    )

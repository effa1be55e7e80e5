"""`dvc repro` reruns a stage exactly when what it computes from changes, in a scratch git + DVC
copy of the pipeline with tiny params: how-it-runs params rerun nothing, a code edit retrains
from step 0, an identical rerun leaves git clean, and the registry follows the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_repo import ORCHESTRATION, TINY, dvc_cli, git, make_pipeline_repo

pytestmark = pytest.mark.slow

# every how-it-runs key of the params, set to another value
HOW_IT_RUNS_CHANGES = [
    ("base.launcher", "torchrun"),
    ("base.nproc", 2),
    ("base.device", "auto"),
    ("base.tracking_uri", "http://127.0.0.1:5000"),
    ("base.experiment", "elsewhere"),
    ("crappify.workers", 2),
    ("crappify.examples", 1),
    ("pretrain_generator.workers", 1),
    ("pretrain_generator.log_every", 2),
    ("pretrain_generator.sample_every", 0),
    ("pretrain_critic.workers", 1),
    ("pretrain_critic.log_every", 2),
    ("train_gan.workers", 1),
    ("train_gan.log_every", 2),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The pipeline reproduced once and committed, as after `make pipeline` and a commit."""
    path = make_pipeline_repo(tmp_path_factory.mktemp("reruns") / "ws", TINY, parts=ORCHESTRATION)
    # the stages log to the workspace's own store, whatever store this process was pointed at
    dvc_cli(path, "repro", env=own_store_environment(), timeout=3600)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first run")
    return path


def own_store_environment() -> dict[str, str]:
    """This environment without the variables that point MLflow or the project elsewhere."""
    return {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DECRAPPIFY_ROOT")
    }


def set_param(path: Path, dotted: str, value) -> None:
    params = yaml.safe_load((path / "params.yaml").read_text())
    node = params
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def status(path: Path) -> dict:
    out = dvc_cli(path, "status", "--json").stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def test_how_it_runs_changes_rerun_nothing(workspace):
    assert status(workspace) == {}
    try:
        for dotted, value in HOW_IT_RUNS_CHANGES:
            set_param(workspace, dotted, value)
            assert status(workspace) == {}, f"{dotted}={value} reruns stages"
        set_param(workspace, "base.seed", 8)  # a param that changes results reruns all
        assert set(status(workspace)) == set(
            yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
        )
    finally:
        git(workspace, "checkout", "params.yaml")


def test_moving_a_folder_reruns_the_stages_that_use_it(workspace):
    try:
        for dotted in ("base.paths.checkpoints", "base.paths.logs"):
            set_param(workspace, dotted, "elsewhere/" + dotted)
        assert status(workspace) == {}, "moving checkpoints or logs reruns stages"
        set_param(workspace, "base.paths.reports", "pages")
        assert set(status(workspace)) == {"evaluate"}
    finally:
        git(workspace, "checkout", "params.yaml")


def test_an_experiment_that_only_changes_how_it_runs_runs_no_stage(workspace):
    try:
        out = dvc_cli(
            workspace,
            "exp",
            "run",
            "-S",
            "base.launcher=torchrun",
            "-S",
            "crappify.workers=1",
            "-S",
            "train_gan.log_every=3",
        ).stdout
        assert "Running stage" not in out, out
    finally:
        git(workspace, "checkout", "params.yaml")


def test_metrics_show_is_the_evaluation_table(workspace):
    out = dvc_cli(workspace, "metrics", "show").stdout
    lines = out.strip().splitlines()
    assert max(map(len, lines)) <= 120, out
    assert lines[0].split() == [
        "Path",
        "gain_db",
        "gmsd",
        "haarpsi",
        "ms_ssim",
        "psnr_y",
        "ssim_y",
        "stlpips",
    ]
    methods = ["bicubic", "bilinear", "gan_generator", "generator"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(
        f"metrics/evaluate/{dataset}/{m}.json"
        for dataset in ("test", "test/clean")
        for m in methods
    )
    bicubic = json.loads((workspace / "metrics/evaluate/test/bicubic.json").read_text())
    assert bicubic["gain_db"] == 0
    summary = json.loads((workspace / "metrics/evaluate.json").read_text())["test"]
    gan = json.loads((workspace / "metrics/evaluate/test/gan_generator.json").read_text())
    assert gan["gain_db"] == summary["gain_db"]["gan_generator"]
    assert gan["psnr_y"] == summary["gan_generator"]["psnr_y"]


def test_plots_show_renders_every_plot(workspace, tmp_path):
    out = dvc_cli(workspace, "plots", "show", "--json", "-o", str(tmp_path)).stdout
    data = json.loads(out[out.index("{") :])
    rendered = set(data.get("data", data))
    assert {
        "pretrain_generator_loss",
        "pretrain_critic_loss",
        "train_gan_adversarial",
        "gan_candidates_haarpsi",
        "evaluate_gains",
    } <= rendered, rendered


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=path,
        env=own_store_environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_register_makes_the_registry_follow_a_checkout_dvc_skipped(workspace, tmp_path):
    """A fresh clone: DVC restores or skips train_gan and evaluate, so nothing registered."""
    from mlflow import MlflowClient

    from pipelines.core.files import sha256_file
    from pipelines.running import registry

    if (workspace / "mlflow.db").exists():  # the store a fresh clone does not have
        shutil.move(workspace / "mlflow.db", tmp_path / "stages.db")
    proc = cli(workspace, "register")
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    digest = sha256_file(workspace / "models/gan_generator.pt")
    versions = registry.registered_versions(uri, workspace / "models/gan_generator.pt")
    assert versions == ["1"]
    tags = client.get_model_version(registry.REGISTERED_MODEL, "1").tags
    summary = json.loads((workspace / "metrics/evaluate.json").read_text())["test"]
    assert float(tags[registry.GAIN_TAG]) == summary["gain_db"]["gan_generator"]
    trade = registry.trade_of(workspace / "metrics")
    assert trade == registry.Trade("stlpips", 0.5)  # the GAN phase's, from params.yaml
    qualified = registry.qualifies("gan_generator", summary, trade)
    assert tags[registry.QUALIFIED_TAG] == str(qualified).lower()
    aliases = client.get_registered_model(registry.REGISTERED_MODEL).aliases
    champion = aliases.get(registry.CHAMPION)  # MLflow gives the version as an int or a str
    assert (None if champion is None else str(champion)) == ("1" if qualified else None), (
        proc.stdout
    )
    assert (
        client.get_run(client.get_model_version(registry.REGISTERED_MODEL, "1").run_id).data.tags[
            registry.DIGEST_TAG
        ]
        == digest
    )

    # once more: the file is registered already, no second version
    assert cli(workspace, "register").returncode == 0
    assert registry.registered_versions(uri, workspace / "models/gan_generator.pt") == ["1"]

    # an evaluation in which the GAN generator beats bicubic and the pretrained one: the
    # alias is set, and the README's restore command works with it
    summary = json.loads((workspace / "metrics/evaluate.json").read_text())
    summary["test"]["gain_db"] = {"generator": 0.1, "gan_generator": 0.2}
    (workspace / "metrics/evaluate.json").write_text(json.dumps(summary))
    try:
        proc = cli(workspace, "register")
        assert "models:/decrappify-generator@champion -> version 1" in proc.stdout, proc.stderr
        lr = next((workspace / "data/lr/test").glob("*.jpg"))
        proc = cli(
            workspace,
            "restore",
            str(lr),
            "--out",
            str(tmp_path / "restored"),
            "--model",
            "models:/decrappify-generator@champion",
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (tmp_path / "restored" / f"{lr.stem}_restored.png").stat().st_size > 0
    finally:
        git(workspace, "checkout", "metrics/evaluate.json")


def test_a_code_edit_retrains_the_stage_from_step_0(workspace):
    """The finished rolling checkpoint must not be resumed after a change to the stage's code."""
    with open(workspace / "pipelines/pretrain_generator.py", "a") as f:
        f.write("\n# an edit that changes nothing it computes\n")
    out = dvc_cli(workspace, "repro", env=own_store_environment(), timeout=3600).stdout
    assert "Running stage 'pretrain_generator'" in out, out
    assert "discarding checkpoints/pretrain_generator/last.pt" in out, out
    assert "resuming from checkpoints/pretrain_generator" not in out, out
    assert "step 6: valid_psnr_y" in out, out  # the last validation: it trained to the end
    # the same weights: the stages after it are up to date
    assert "Running stage 'pretrain_critic'" not in out, out
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "-m", "an edit")


def test_an_identical_rerun_leaves_git_clean(workspace):
    # The workspace is shared: an earlier test edited and committed the code, so the report
    # and exports of that code are first made and committed; then a forced rerun changes nothing.
    dvc_cli(workspace, "repro", "--force", env=own_store_environment(), timeout=3600)
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "--allow-empty", "-m", "results of the current code")
    dvc_cli(workspace, "repro", "--force", env=own_store_environment(), timeout=3600)
    assert git(workspace, "status", "--porcelain") == ""
    logs = json.loads((workspace / "logs/crappify.json").read_text())
    assert set(logs) == {"processed", "reused", "seconds", "images_per_s"}

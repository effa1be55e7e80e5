"""What a training flow run leaves in Prefect besides its state: artifacts (evaluation table,
summary with the sample grid and the chosen GAN step, links to MLflow and to the report,
progress of the training stages), the stages drawn as a chain, and a log without bar refreshes.

The workspace is a tiny git + DVC repository whose stages are a few lines each, named like the
real ones; its evaluate stage writes a real report with the project's page builder.
"""

from __future__ import annotations

import json
import sys

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterTaskRunId,
)
from prefect.logging.handlers import APILogHandler

from flows.training import training
from tasks.process import run_streaming

from tiny_dvc_repo import make_repo

REFRESHES = 300  # bar refreshes the training stage draws
EVAL_LINES = 3  # real lines it prints between refreshes (tqdm.write, as StepLogger.metrics)

STAGES_PY = f"""\
import json
import sys
from pathlib import Path

import numpy as np

stage = sys.argv[1]
Path("metrics").mkdir(exist_ok=True)
Path("plots").mkdir(exist_ok=True)
if stage == "download":
    Path("hr.txt").write_text("hr")
elif stage == "pretrain_generator":
    # what a tqdm bar on a pipe looks like: a refresh ends with \\r, tqdm.write erases the bar
    total = {REFRESHES}
    for i in range(1, total + 1):
        sys.stderr.write(f"\\rpretrain_generator: {{100 * i // total:3d}}%|{{'#' * (10 * i // total):10s}}| "
                         f"{{i}}/{{total}} [00:01<00:02, 99.0step/s, loss={{1 / i:.4f}}]")
        if i % (total // {EVAL_LINES}) == 0:
            sys.stderr.write("\\r" + " " * 90 + "\\r" + f"step {{i}}: valid_psnr_y {{20 + i / 100:.4f}}\\n")
        sys.stderr.flush()
    # tqdm's close: the bar's last state, then its newline
    sys.stderr.write(f"\\rpretrain_generator: 100%|##########| {{total}}/{{total}} [00:03<00:00, 99.0step/s]\\n")
    print("UserWarning: a real warning line", file=sys.stderr)
    Path("generator.txt").write_text("g")
    Path("plots/pretrain_generator.csv").write_text("step,psnr_y\\n100,20.5\\n200,21.0\\n")
elif stage == "train_gan":
    Path("gan.txt").write_text("gan")
    Path("metrics/train_gan.json").write_text(json.dumps(
        {{"chosen_step": 4, "generator_steps": 6, "select_metric": "haarpsi"}}))
    Path("plots/gan_scores.csv").write_text("step,psnr_y,haarpsi\\n0,20,0.5\\n2,20.2,0.52\\n4,20.1,0.55\\n6,19.8,0.53\\n")
elif stage == "evaluate":
    from pipelines.imaging.images import write_image
    from pipelines.reporting.page import REPORT_NAME, write_report
    results = {{"test": {{"images": 2,
        "bicubic": {{"psnr_y": 25.5, "haarpsi": 0.51}},
        "gan_generator": {{"psnr_y": 26.75, "haarpsi": 0.6}},
        "gain_db": {{"gan_generator": 1.25}}}}}}
    Path("metrics/evaluate.json").write_text(json.dumps(results))
    write_image("plots/evaluate_grid.png", np.full((40, 120, 3), 200, np.uint8))
    write_report(Path("reports") / REPORT_NAME, results, None)
print(f"{{stage}} done")
"""

DVC_YAML = """\
stages:
  download:
    cmd: python stages.py download
    deps: [stages.py]
    outs: [hr.txt]
  pretrain_generator:
    cmd: python stages.py pretrain_generator
    deps: [stages.py, hr.txt]
    outs: [generator.txt]
    plots:
      - plots/pretrain_generator.csv:
          cache: false
  train_gan:
    cmd: python stages.py train_gan
    deps: [stages.py, generator.txt]
    outs: [gan.txt]
    metrics:
      - metrics/train_gan.json:
          cache: false
    plots:
      - plots/gan_scores.csv:
          cache: false
  evaluate:
    cmd: python stages.py evaluate
    deps: [stages.py, gan.txt]
    metrics:
      - metrics/evaluate.json:
          cache: false
    plots:
      - plots/evaluate_grid.png:
          cache: false
    outs:
      - reports/index.html:
          cache: false
"""
STAGES = ["download", "pretrain_generator", "train_gan", "evaluate"]


@pytest.fixture(scope="module")
def flow_run(prefect_api, tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'm.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        repo = make_repo(
            tmp_path_factory.mktemp("artifacts") / "repo",
            dvc_yaml=DVC_YAML,
            params="{}\n",
            files={"stages.py": STAGES_PY},
        )
        state = training(root=str(repo), return_state=True)
        APILogHandler().flush()
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        tasks = {t.name: t for t in tasks}
        logs = client.read_logs(
            log_filter=LogFilter(
                task_run_id=LogFilterTaskRunId(any_=[tasks["pretrain_generator"].id])
            )
        )
    return repo, state, artifacts, tasks, [log.message for log in logs], uri


def by_key(artifacts, key):
    found = [a for a in artifacts if a.key == key]
    assert len(found) == 1, f"one {key!r} artifact, found {[a.key for a in artifacts]}"
    return found[0]


def test_artifact_table_holds_the_evaluation_with_gains(flow_run):
    repo, _, artifacts, *_ = flow_run
    table = by_key(artifacts, "evaluation")
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    expected = json.loads((repo / "metrics/evaluate.json").read_text())["test"]
    assert [(r["dataset"], r["method"]) for r in rows] == [
        ("test", "bicubic"),
        ("test", "gan_generator"),
    ]
    gan = rows[1]
    assert gan["psnr_y"] == expected["gan_generator"]["psnr_y"]
    assert gan["haarpsi"] == expected["gan_generator"]["haarpsi"]
    assert gan["gain_db"] == 1.25 and gan["psnr_y_gain"] == 1.25
    assert gan["haarpsi_gain"] == pytest.approx(0.09)
    assert rows[0]["gain_db"] is None and rows[0]["images"] == 2


def test_artifact_summary_has_outcomes_chosen_step_and_the_grid_inline(flow_run):
    _, _, artifacts, *_ = flow_run
    summary = by_key(artifacts, "run-summary")
    assert summary.type == "markdown"
    text = summary.data
    assert "**Chosen GAN step: 4** of 6" in text
    for stage in STAGES:
        assert f"| {stage} | ran |" in text
    assert "![sample grid](data:image/jpeg;base64," in text


def test_artifact_links_to_the_mlflow_parent_run_and_the_report(flow_run, monkeypatch):
    repo, state, artifacts, _, _, uri = flow_run
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    [parent] = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string=f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'",
    )
    link = by_key(artifacts, "mlflow-run")
    assert link.type == "markdown"  # Prefect stores a link artifact as markdown
    assert f"/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in link.data
    report = by_key(artifacts, "report")
    assert (repo / "reports/index.html").resolve().as_uri() in report.data
    assert '<table class="evaluation"' in (repo / "reports/index.html").read_text()


def test_artifact_progress_of_the_training_stage_reaches_100(flow_run):
    _, _, artifacts, tasks, *_ = flow_run
    progress = by_key(artifacts, "pretrain-generator-progress")
    assert progress.type == "progress"
    assert float(progress.data) == 100.0
    assert progress.task_run_id == tasks["pretrain_generator"].id
    assert "pretrain_generator: 300/300" in progress.description
    # stages that draw no bar get no progress artifact
    assert not [a for a in artifacts if a.key == "download-progress"]


def test_bar_refreshes_are_not_logged_but_real_lines_are(flow_run):
    _, _, _, _, messages, _ = flow_run
    refreshes = [m for m in messages if "step/s" in m]
    # the bar's last state, ended by its newline, is a line; none of the refreshes is
    assert len(refreshes) == 1 and "300/300" in refreshes[0], refreshes
    for i in (100, 200, 300):
        assert sum(m.startswith(f"step {i}: valid_psnr_y") for m in messages) == 1, messages
    assert sum("a real warning line" in m for m in messages) == 1
    assert len(messages) < 20, messages  # DVC's few lines, the stage's 5: not 300 refreshes


def test_stages_are_drawn_as_a_chain_in_the_run_graph(flow_run):
    _, _, _, tasks, *_ = flow_run
    assert (
        "wait_for" not in tasks["download"].task_inputs
        or not tasks["download"].task_inputs["wait_for"]
    )
    for before, after in zip(STAGES, STAGES[1:]):
        upstream = [i.id for i in tasks[after].task_inputs["wait_for"]]
        assert upstream == [tasks[before].id], (after, upstream)


# -- the splitting itself, without Prefect ----------------------------------------------------
def test_stream_with_carriage_return_refreshes_gives_one_line_per_real_line(tmp_path):
    script = (
        "import sys\n"
        "for i in range(500):\n"
        "    sys.stdout.write(f'\\rbar {i}/500')\n"
        "    sys.stdout.flush()\n"
        "    if i % 100 == 99: sys.stdout.write('\\r      \\r' + f'eval {i}\\n')\n"
        "sys.stdout.write('\\rbar 500/500\\n')\n"
        "print('crlf line', end='\\r\\n', flush=True)\n"
        "print('error: the end', file=sys.stderr)\n"
    )
    lines, refreshes = [], []
    code = run_streaming(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        on_line=lines.append,
        on_progress=refreshes.append,
    )
    assert code == 0
    assert lines == [
        *(f"eval {i}" for i in range(99, 500, 100)),
        "bar 500/500",
        "crlf line",
        "error: the end",
    ]
    assert len(refreshes) == 500 and refreshes[0] == "bar 0/500"
    assert not any("eval" in r or not r.strip() for r in refreshes)  # blank erasers are dropped

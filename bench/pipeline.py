"""Pipeline overhead: what DVC and Prefect cost when there is nothing to do.

In a scratch copy of the tests' tiny DVC repository (tests/tiny_dvc_repo.py: git + DVC, three
stages named like the real ones, each a few lines of Python opening an MLflow run), built in a
temporary folder so the project's workspace is never touched, after one full run:

- ``dvc repro``, everything up to date;
- ``dvc repro --single-item STAGE`` for each stage in turn: the commands the flow runs;
- the training flow (``flows.training.training``) called in-process against a temporary
  Prefect server that is already up (``prefect_test_harness``);
- ``decrappify run`` from the shell: a new process that imports Prefect and starts its own
  temporary server, then runs the same flow.

The measurements run in one child process (its Prefect settings and log output kept away
from the caller); MLflow writes to a SQLite file in the scratch folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Report, fmt, ratios, repeats, summary

NAME = "pipeline"
TITLE = "Pipeline overhead (seconds with every stage up to date)"
MARKER = "BENCH_RESULT "
CLI_ROUNDS = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-scratch",
        action="store_true",
        help="pipeline: keep the scratch DVC repository and the child's log",
    )


def _env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}",
        PREFECT_HOME=str(scratch / "prefect-home"),
        PYTHONUNBUFFERED="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def _seconds(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
    return seconds


def child_main(spec: dict) -> None:
    """Runs in the child process (environment from ``_env``); prints MARKER + JSON."""
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    from flows.training import training
    from tasks.workspace import stage_order

    repo, rounds = Path(spec["repo"]), spec["rounds"]
    py = sys.executable
    stages = stage_order(repo)
    cli_env = {**os.environ, "PREFECT_HOME": spec["cli_prefect_home"]}
    out: dict = {"stages": stages}
    start = time.perf_counter()
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}):
        with prefect_test_harness(server_startup_timeout=180):
            out["server_start_s"] = time.perf_counter() - start

            def flow() -> float:
                t = time.perf_counter()
                state = training(root=str(repo), return_state=True)
                if not state.is_completed():
                    raise RuntimeError(f"flow {state.name}: {state.message}")
                outcomes = state.result()
                if set(outcomes.values()) != {"up to date"}:
                    raise RuntimeError(f"expected every stage up to date: {outcomes}")
                return time.perf_counter() - t

            variants = {
                "dvc repro": lambda: _seconds([py, "-m", "dvc", "repro"], repo),
                "dvc repro --single-item x stages": lambda: sum(
                    _seconds([py, "-m", "dvc", "repro", "--single-item", s], repo) for s in stages
                ),
                "flow in-process (server up)": flow,
                "decrappify run (own server)": lambda: _seconds(
                    [str(Path(py).parent / "decrappify"), "run", "--root", str(repo)], repo, cli_env
                ),
            }
            cli = "decrappify run (own server)"
            for name, fn in variants.items():  # warm-up: imports, caches (the CLI is cold anyway)
                if name != cli:
                    fn()
            res: dict[str, list[float]] = {k: [] for k in variants}
            names = list(variants)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    if name != cli or r < CLI_ROUNDS:  # ~30 s a run: two are enough
                        res[name].append(variants[name]())
                print(f"  pipeline: round {r + 1}/{rounds}", file=sys.__stderr__, flush=True)
            out["seconds"] = res
    print(MARKER + json.dumps(out), flush=True)


def run(args: argparse.Namespace) -> Report:
    n_rounds = repeats(args, 3, 1)
    report = Report(NAME, TITLE, {"rounds": n_rounds})
    scratch = Path(tempfile.mkdtemp(prefix="decrappify-bench-pipeline-"))
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_dvc_repo import make_repo

        env = _env(scratch)
        repo = make_repo(scratch / "repo")
        first = _seconds([sys.executable, "-m", "dvc", "repro"], repo, env)
        report.data["first_repro_s"] = first
        spec = {
            "repo": str(repo),
            "rounds": n_rounds,
            "cli_prefect_home": str(scratch / "prefect-cli-home"),
        }
        code = f"from bench.pipeline import child_main; child_main({spec!r})"
        log = scratch / "child.log"
        with open(log, "w") as err:
            proc = subprocess.run(
                [sys.executable, "-c", code],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
        if proc.returncode or not lines:
            tail = log.read_text().strip().splitlines()[-15:]
            raise RuntimeError(f"pipeline child failed ({proc.returncode}):\n" + "\n".join(tail))
        out = json.loads(lines[-1][len(MARKER) :])
    finally:
        if args.keep_scratch:
            print(f"  scratch kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    secs = out["seconds"]
    n = len(out["stages"])
    base = secs["dvc repro"]
    rows = [[k, fmt(v, 2), fmt(ratios(v, base), 2) + "x"] for k, v in secs.items()]
    report.data["seconds"] = {k: summary(v) for k, v in secs.items()}
    report.data["server_start_s"] = out["server_start_s"]
    report.data["stages"] = out["stages"]
    flow_over = [
        f - d
        for f, d in zip(
            secs["flow in-process (server up)"], secs["dvc repro --single-item x stages"]
        )
    ]
    report.data["prefect_overhead_s"] = summary(flow_over)
    report.table(
        f"{n} stages, all up to date; seconds, median [min-max] of {n_rounds} rounds "
        f"(first full dvc repro: {first:.1f} s; temporary Prefect server start-up: "
        f"{out['server_start_s']:.1f} s)",
        ["command", "seconds", "vs dvc repro"],
        rows,
        note=f"Prefect's own share of the in-process flow (flow minus the {n} "
        f"dvc repro --single-item runs it makes): {fmt(flow_over, 2)} s",
    )
    return report

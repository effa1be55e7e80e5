"""Data-parallel training: the real ``pretrain_generator`` stage in 1 process vs N under
torchrun (DDP, gloo on CPU), at the same global batch.

In a temporary folder (the project's workspace is never touched): the download and crappify
stages make the sample data once; then each round trains the generator from scratch with
``base.launcher: single`` and with ``base.launcher: torchrun`` (``base.nproc: N``), in rotating
order. Figures are the stage's own: training images/s (evaluation and checkpoint pauses
excluded) and wall seconds of the whole command (start-up, process group, rendezvous
included). One process uses every core through torch's threads; under torchrun each process
gets ``cores / N`` threads, so both variants use the same cores.
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

import yaml

from bench.common import ROOT, Report, fmt, ratios, repeats, summary
from pipelines.core.runtime import cpu_cores

NAME = "distributed"
TITLE = "Data-parallel training (pretrain_generator, 1 process vs torchrun)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, default=2, help="distributed: processes under torchrun")


def _params(steps: int, batch: int, crop: int, launcher: str, nproc: int) -> dict:
    return {
        "base": {
            "seed": 3,
            "device": "cpu",
            "scale": 4,
            "crop": crop,
            "launcher": launcher,
            "nproc": nproc,
        },
        "download": {"source": "sample"},
        "crappify": {"workers": 1},
        "pretrain_generator": {
            "model": yaml.safe_load((ROOT / "params.yaml").read_text())["pretrain_generator"][
                "model"
            ],
            "phases": [{"steps": steps, "batch_size": batch, "lr": 0.001}],
            "eval_every": steps,
            "checkpoint_every": steps,
            "sample_every": 0,
        },
    }


def _run(folder: Path, stage: str, params: dict, env: dict[str, str]) -> float:
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", f"pipelines.{stage}"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{stage} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return seconds


def run(args: argparse.Namespace) -> Report:
    n_rounds = repeats(args, 3, 1)
    nproc = max(2, args.nproc)
    # the default training shape: params.yaml's generator, 16 crops of 128 px
    steps, batch, crop = (10, 8, 64) if args.quick else (100, 16, 128)
    cores = cpu_cores()
    report = Report(
        NAME,
        TITLE,
        {
            "rounds": n_rounds,
            "nproc": nproc,
            "steps": steps,
            "global_batch": batch,
            "crop": crop,
            "generator": "params.yaml's",
            "scale": 4,
            "cores": cores,
        },
    )
    scratch = Path(tempfile.mkdtemp(prefix="decrappify-bench-ddp-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "DECRAPPIFY_", "OMP_NUM_THREADS"))
    }
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}", PYTHONUNBUFFERED="1")
    try:
        (scratch / "dvc.yaml").write_text("stages: {}\n")  # marks the workspace root
        data = _params(steps, batch, crop, "single", 1)
        for stage in ("download", "crappify"):
            _run(scratch, stage, data, env)
        variants = {
            "1 process": ("single", 1, {}),
            f"torchrun, {nproc} processes": (
                "torchrun",
                nproc,
                {"OMP_NUM_THREADS": str(max(1, cores // nproc))},
            ),
        }
        res: dict[str, dict[str, list[float]]] = {
            k: {"images_per_s": [], "wall_s": []} for k in variants
        }
        names = list(variants)
        for r in range(n_rounds + 1):  # round 0: warm-up (file caches, first imports)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                launcher, n, extra = variants[name]
                for out in ("checkpoints", "models", "metrics", "plots", "logs"):
                    shutil.rmtree(scratch / out, ignore_errors=True)
                wall = _run(
                    scratch,
                    "pretrain_generator",
                    _params(steps, batch, crop, launcher, n),
                    {**env, **extra},
                )
                # throughput is a number of the run, not a result: logs/, not metrics/
                metrics = json.loads((scratch / "logs/pretrain_generator.json").read_text())
                if r:
                    res[name]["images_per_s"].append(metrics["train_images_per_s"])
                    res[name]["wall_s"].append(wall)
            print(f"  distributed: round {r}/{n_rounds}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    one, many = names
    speedup = ratios(res[many]["images_per_s"], res[one]["images_per_s"])
    report.data["results"] = {k: {m: summary(v) for m, v in d.items()} for k, d in res.items()}
    report.data["speedup"] = summary(speedup)
    rows = [
        [
            name,
            fmt(d["images_per_s"]),
            fmt([1000 * batch / ips for ips in d["images_per_s"]], 0),
            fmt(d["wall_s"]),
        ]
        for name, d in res.items()
    ]
    report.table(
        f"{steps} steps, global batch {batch} x {crop} px HR, x4, params.yaml's generator "
        f"from scratch, {cores} cores; median [min-max] of {n_rounds} rounds",
        ["variant", "train img/s", "ms per step", "stage wall s"],
        rows,
        note=f"{many} / 1 process: {fmt(speedup, 2)}x training images/s",
    )
    return report

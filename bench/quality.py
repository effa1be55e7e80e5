"""Restoration quality: train with a params file through the real stages, then the gain table.

``python -m bench quality --params FILE [--set KEY=VALUE ...] [--until STAGE] [--tag NAME]``

In a scratch workspace (``--workdir``, default ``/tmp/decrappify-quality-<tag>``; the project's
data/, models/ and checkpoints/ are never touched) the stages download, crappify,
pretrain_generator, pretrain_critic, train_gan and evaluate (``make pipeline``'s) run one after
another as
``python -m pipelines.<stage> --params <workdir>/params.yaml --no-tracking``, from a copy of the
params file whose ``base.paths`` point into the workspace (``download.folder`` stays relative
to the repository root, as under DVC). The checkpoints and model files of the stages to run are
deleted first, so every figure comes from a run that trained. ``--eval-only`` reruns only
evaluate on the models already in the workspace.

The evaluate stage scores the models, with ``evaluate.hr_dirs`` set to the ``--hr-dir``
folders (default Set5): the test split and each folder, crappified by the params' own seeded
degradation and clean (MATLAB-bicubic LR), as ``dvc repro`` would. The table gives each
model's gain (Y-PSNR over OpenCV bicubic; a colorizer's RGB PSNR over the gray input), SSIM
gain and ST-LPIPS from metrics/evaluate.json, with the stage times.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.common import ROOT, Report

NAME = "quality"
TITLE = "Restoration quality: gain over bicubic (Y-PSNR dB, Y-SSIM)"
STAGES = ("download", "crappify", "pretrain_generator", "pretrain_critic", "train_gan", "evaluate")
MADE_BY = {
    "pretrain_generator": ("generator", "generator_last_weights"),
    "pretrain_critic": ("critic",),
    "train_gan": ("gan_generator",),
}
# the benchmark folder beside the checkout, as params-sun80.yaml names it
DEFAULT_HR_DIRS = (ROOT.parent / "shared" / "benchmarks" / "Set5",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quality")
    g.add_argument(
        "--params",
        type=Path,
        default=ROOT / "params.yaml",
        help="quality: params file to train with (default params.yaml)",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="quality: override a param, as the stages' -S (repeatable)",
    )
    g.add_argument(
        "--until",
        choices=STAGES,
        default=STAGES[-1],
        help="quality: last stage to run (pretrain_generator: no GAN)",
    )
    g.add_argument(
        "--from",
        dest="first",
        choices=STAGES,
        default=STAGES[0],
        help="quality: first stage to run; the earlier ones' outputs in the workspace "
        "are kept (continue a run made with --until)",
    )
    g.add_argument(
        "--hr-dir",
        dest="hr_dirs",
        action="append",
        default=None,
        metavar="DIR",
        help="quality: folder of clean HR benchmark images (repeatable; default Set5)",
    )
    g.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="quality: scratch workspace (default /tmp/decrappify-quality-<tag>)",
    )
    g.add_argument(
        "--tag",
        default="",
        help="quality: name of the run; results in bench/results/quality[-TAG].json",
    )
    g.add_argument(
        "--eval-only",
        action="store_true",
        help="quality: score the models already in the workspace",
    )


def workspace_params(params: Path, workdir: Path, overrides: list[str]) -> dict:
    """The params file with overrides applied and every base path inside ``workdir``."""
    from pipelines.core.config import _set_dotted, read_params
    from pipelines.running.stage import parse_overrides

    data = read_params(params)
    for key, value in parse_overrides(overrides).items():
        _set_dotted(data, key, value)
    paths = data.setdefault("base", {}).setdefault("paths", {})
    for key, rel in {
        "hr": "data/hr",
        "lr": "data/lr",
        "generated": "data/generated",
        "downloads": "data/downloads",
        "models": "models",
        "checkpoints": "checkpoints",
        "metrics": "metrics",
        "plots": "plots",
        "reports": "reports",
    }.items():
        paths[key] = str(workdir / rel)
    return data


def run_stages(params_file: Path, first: str, until: str, workdir: Path) -> dict[str, float]:
    seconds: dict[str, float] = {}
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for stage in STAGES[STAGES.index(first) : STAGES.index(until) + 1]:
        start = time.perf_counter()
        with open(logs / f"{stage}.log", "w") as log:
            code = subprocess.call(
                [
                    sys.executable,
                    "-m",
                    f"pipelines.{stage}",
                    "--params",
                    str(params_file),
                    "--no-tracking",
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        seconds[stage] = time.perf_counter() - start
        print(f"  {stage}: {seconds[stage]:.0f} s", file=sys.stderr, flush=True)
        if code:
            tail = (logs / f"{stage}.log").read_text().strip().splitlines()[-15:]
            raise RuntimeError(f"{stage} failed ({code}):\n" + "\n".join(tail))
    return seconds


def gain_table(results: dict, task: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: per model and data set, gain (dB) / SSIM gain / ST-LPIPS."""
    from pipelines.core.tasks import FIDELITY, REFERENCE

    key, reference = FIDELITY[task], REFERENCE[task]
    ssim = "ssim" if task == "colorize" else "ssim_y"
    datasets = list(results)
    headers = ["model"] + [f"{d} (n={results[d]['images']})" for d in datasets]
    models = list(next(iter(results.values())).get("gain_db", {}))
    rows = []
    for m in models:
        row = [m]
        for d in datasets:
            r, ref = results[d][m], results[d][reference]
            cell = f"{results[d]['gain_db'][m]:+.2f} dB / {r[ssim] - ref[ssim]:+.3f}"
            if "stlpips" in r:
                cell += f" / {r['stlpips']:.3f}"
            if task == "colorize":
                cell += f" / C {r['colorfulness']:.1f} of {r['truth_colorfulness']:.1f}"
            row.append(cell)
        rows.append(row)
    rows.append(
        [f"{reference} ({key})"]
        + [
            f"{results[d][reference][key]:.2f} dB"
            + (
                f" / {results[d][reference]['stlpips']:.3f}"
                if "stlpips" in results[d][reference]
                else ""
            )
            for d in datasets
        ]
    )
    return headers, rows


def run(args: argparse.Namespace) -> Report:
    tag = args.tag
    workdir = (args.workdir or Path(f"/tmp/decrappify-quality-{tag or 'run'}")).resolve()
    hr_dirs = args.hr_dirs or [str(d) for d in DEFAULT_HR_DIRS if d.is_dir()]
    report = Report(
        f"{NAME}-{tag}" if tag else NAME,
        TITLE,
        {
            "params": str(args.params),
            "overrides": args.overrides,
            "from": args.first,
            "until": args.until,
            "hr_dirs": hr_dirs,
            "workdir": str(workdir),
            "eval_only": args.eval_only,
        },
    )
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = [*args.overrides, f"evaluate.hr_dirs={json.dumps(hr_dirs)}"]
    params = workspace_params(args.params, workdir, overrides)
    params_file = workdir / "params.yaml"
    seconds: dict[str, float] = {}
    if not args.eval_only:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        # what the stages to run make: an earlier run's checkpoints would be resumed, not
        # trained, and its model files scored as if this run had made them
        for stage in STAGES[STAGES.index(args.first) :]:
            shutil.rmtree(workdir / "checkpoints" / stage, ignore_errors=True)
            for name in MADE_BY.get(stage, ()):
                (workdir / "models" / f"{name}.pt").unlink(missing_ok=True)
        # the times of earlier stages kept in the workspace (a run continued with --from)
        times_file = workdir / "stage_seconds.json"
        kept = json.loads(times_file.read_text()) if times_file.exists() else {}
        kept = {k: v for k, v in kept.items() if STAGES.index(k) < STAGES.index(args.first)}
        seconds = {**kept, **run_stages(params_file, args.first, args.until, workdir)}
        times_file.write_text(json.dumps(seconds, indent=1))
        report.data["stage_seconds"] = seconds
    else:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        run_stages(params_file, "evaluate", "evaluate", workdir)
    summary = workdir / "metrics" / "evaluate.json"
    if STAGES.index(args.until) < STAGES.index("evaluate") or not summary.exists():
        report.data["stage_seconds"] = seconds
        print(f"no evaluation ({summary} not written by this run)", file=sys.stderr)
        return report
    results = json.loads(summary.read_text())
    task = str(params["base"].get("task", "restore"))
    report.data["scores"] = results
    for path in sorted((workdir / "metrics").glob("*.json")):
        report.data.setdefault("stage_metrics", {})[path.stem] = json.loads(path.read_text())
    headers, rows = gain_table(results, task)
    times = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    what = "RGB PSNR over gray" if task == "colorize" else "Y-PSNR over OpenCV bicubic"
    report.table(
        f"Gain: {what}, dB / SSIM gain / ST-LPIPS ({args.params.name}"
        f"{' ' + ' '.join(args.overrides) if args.overrides else ''})",
        headers,
        rows,
        note=f"stage times: {times or 'not run (eval only)'}; total {sum(seconds.values()):.0f} s",
    )
    return report

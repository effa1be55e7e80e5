"""Restoration quality: train with a params file through the real stages, then the gain table.

``python -m bench quality --params FILE [--set KEY=VALUE ...] [--until STAGE] [--tag NAME]``

In a scratch workspace (``--workdir``, default ``/tmp/decrappify-quality-<tag>``; the project's
data/, models/ and checkpoints/ are never touched) the stages download, crappify,
pretrain_generator, pretrain_critic, train_gan and evaluate (``make pipeline``'s) run one after
another as
``python -m pipelines.<stage> --params <workdir>/params.yaml --no-tracking``, from a copy of the
params file whose ``base.paths`` point into the workspace (``download.folder`` stays relative
to the repository root, as under DVC). The checkpoints and model files of the stages to run are
deleted first, so every figure comes from a run that trained. ``--eval-only`` scores the models already in the
workspace.

Every model file then restores, through ``pipelines.inference.restore.restore`` (tiled as the
restore command does):

- the test split: the crappify stage's LR files of data/hr/test;
- each ``--hr-dir`` (default Set5) crappified: our own seeded degradation, the params'
  crappify section (``crappify(hr, spec, rng_for(seed, "<folder>/<file>"))``);
- each ``--hr-dir`` clean: the benchmarks' MATLAB-bicubic LR (``restore.benchmark_lr``).

The table gives each model's mean Y-PSNR gain over OpenCV bicubic upsampling (dB) and its
Y-SSIM gain, ``scale`` border px excluded, with the stage times.
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
MODELS = ("generator", "gan_generator")
MADE_BY = {
    "pretrain_generator": ("generator", "generator_last_weights"),
    "pretrain_critic": ("critic",),
    "train_gan": ("gan_generator",),
}
DEFAULT_HR_DIRS = ("/work/shared/benchmarks/Set5",)


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
    g.add_argument("--tile", type=int, default=256, help="quality: restore tile, LR px")


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


def last_weights(workdir: Path) -> Path | None:
    """With an EMA, generator.pt holds the average; the rolling checkpoint still holds the
    trained weights of the last step. Written as a model file, so both are scored side by side
    (the same run: the EMA does not change training)."""
    from pipelines.training import checkpoint

    ckpt = workdir / "checkpoints" / "pretrain_generator" / "last.pt"
    gen = workdir / "models" / "generator.pt"
    if not ckpt.exists() or not gen.exists():
        return None
    state = checkpoint.load(ckpt, kind="training_state")
    if "ema" not in state:
        return None
    path = workdir / "models" / "generator_last_weights.pt"
    arch = checkpoint.load(gen, kind="generator")["arch"]
    checkpoint.save(path, {"kind": "generator", "arch": arch, "model": state["model"]})
    return path


def eval_sets(params: dict, workdir: Path, hr_dirs: list[str]) -> dict[str, list]:
    """name -> [(lr, hr)] for the test split and each HR folder, crappy and clean."""
    from pipelines.core.config import load
    from pipelines.datasets.pairs import aligned_lr, lr_path_for
    from pipelines.imaging.degradations import CrappifyConfig, crappify, rng_for
    from pipelines.imaging.images import list_images, read_rgb
    from pipelines.imaging.resize import benchmark_lr

    spec = load(CrappifyConfig, "crappify", params)
    scale, seed = spec.base.scale, spec.base.seed
    hr_root, lr_root = workdir / "data/hr", workdir / "data/lr"
    sets: dict[str, list] = {
        "test crappy": [
            aligned_lr(read_rgb(lr_path_for(f, hr_root, lr_root)), read_rgb(f), scale)
            for f in list_images(hr_root / "test")
        ]
    }
    for folder in map(Path, hr_dirs):
        crappy, clean = [], []
        for f in list_images(folder):
            hr = read_rgb(f)
            hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
            lr = crappify(hr, spec, rng_for(seed, f"{folder.name}/{f.name}"))[0]
            crappy.append((lr, hr))
            clean.append(benchmark_lr(hr, scale))
        sets[f"{folder.name} crappy"] = crappy
        sets[f"{folder.name} clean"] = clean
    return sets


def score_models(
    models: dict[str, Path], sets: dict[str, list], scale: int, tile: int
) -> dict[str, dict[str, dict[str, float]]]:
    """set -> model (and "bicubic") -> mean psnr_y / ssim_y, and the gains over bicubic."""
    import torch

    from pipelines.imaging.resize import bicubic_upscale
    from pipelines.inference.restore import load_generator, restore
    from pipelines.scoring.metrics import psnr_y, ssim_y

    torch.set_grad_enabled(False)
    nets = {name: load_generator(path) for name, path in models.items()}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, pairs in sets.items():
        rows: dict[str, list[tuple[float, float]]] = {"bicubic": []}
        for lr, hr in pairs:
            up = bicubic_upscale(lr, scale)
            rows["bicubic"].append((psnr_y(up, hr, scale), ssim_y(up, hr, scale)))
            for name, net in nets.items():
                sr = restore(net, lr, tile=tile, overlap=min(32, tile // 2))
                rows.setdefault(name, []).append((psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)))
        means = {
            k: {"psnr_y": sum(r[0] for r in v) / len(v), "ssim_y": sum(r[1] for r in v) / len(v)}
            for k, v in rows.items()
        }
        for name in nets:
            means[name]["gain_db"] = means[name]["psnr_y"] - means["bicubic"]["psnr_y"]
            means[name]["ssim_gain"] = means[name]["ssim_y"] - means["bicubic"]["ssim_y"]
        means["images"] = {"count": len(pairs)}
        out[set_name] = means
    return out


def run(args: argparse.Namespace) -> Report:
    tag = args.tag
    workdir = (args.workdir or Path(f"/tmp/decrappify-quality-{tag or 'run'}")).resolve()
    hr_dirs = args.hr_dirs or [d for d in DEFAULT_HR_DIRS if Path(d).is_dir()]
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
    params = workspace_params(args.params, workdir, args.overrides)
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
    models = {
        m: workdir / "models" / f"{m}.pt"
        for m in MODELS
        if (workdir / "models" / f"{m}.pt").exists()
    }
    raw = last_weights(workdir)
    if raw is not None:
        models = {"generator (last weights, no EMA)": raw, **models}
    if not models:
        raise RuntimeError(f"{workdir / 'models'}: no model files to score")
    scale = int(params["base"].get("scale", 4))
    start = time.perf_counter()
    results = score_models(models, eval_sets(params, workdir, hr_dirs), scale, args.tile)
    report.data["scores"] = results
    report.data["eval_seconds"] = time.perf_counter() - start
    for path in sorted((workdir / "metrics").glob("*.json")):
        report.data.setdefault("stage_metrics", {})[path.stem] = json.loads(path.read_text())
    headers = ["model"] + [f"{s} (n={r['images']['count']})" for s, r in results.items()]
    rows = [
        [name]
        + [f"{r[name]['gain_db']:+.2f} dB / {r[name]['ssim_gain']:+.3f}" for r in results.values()]
        for name in models
    ]
    rows.append(
        ["bicubic (Y-PSNR)"] + [f"{r['bicubic']['psnr_y']:.2f} dB" for r in results.values()]
    )
    times = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    report.table(
        f"Gain over OpenCV bicubic, Y-PSNR dB / Y-SSIM ({args.params.name}"
        f"{' ' + ' '.join(args.overrides) if args.overrides else ''})",
        headers,
        rows,
        note=f"stage times: {times or 'not run (eval only)'}; total {sum(seconds.values()):.0f} s",
    )
    return report

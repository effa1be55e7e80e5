"""Restoration: images/s of ``pipelines.inference.restore.restore`` and the cost of tiling.

The generator is the default params.yaml architecture (weights random: speed does not depend
on them). Measured:

- images/s at 256 and 512 px LR input (1024 and 2048 px output), each in one pass (the tile
  holds the image): PyTorch fp32 (the CPU default) and bf16 autocast, and the same network
  exported to ONNX (``pipelines.exporting.onnx_file``) run by ONNX Runtime on the CPU;
- tiling overhead: an image that fits in one 512 px tile (480 px) restored in one pass and
  with the default tiles (256 px, 32 px overlap: 2 x 2 tiles, 13.8% more pixels computed);
- a large photo (default 1000x750 LR -> 4000x3000; ``--photo 4000x3000`` for a camera-sized
  input, ~15-30 min here) with the default tiles, in a child process: seconds and peak RSS
  (``/usr/bin/time -v``, cross-checked with the child's own VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.common import (
    ROOT,
    Report,
    clock,
    fmt,
    interleave,
    rates,
    ratios,
    repeats,
    sample_images,
    summary,
)
from pipelines.inference.restore import restore, tile_starts

NAME = "restore"
TITLE = "Restoration (images/s, tiling overhead, a large photo's time and memory)"
TILE, OVERLAP = 256, 32  # evaluate's and `decrappify restore`'s defaults


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--photo",
        default=None,
        metavar="WxH",
        help="restore: LR size of the large photo (default 1000x750; 500x375 with "
        "--quick; 4000x3000 for a camera photo); 0 = skip",
    )


def generator_arch() -> dict:
    """pretrain_generator.model of params.yaml (base.scale), random weights."""
    arch = dict(
        encoder="resnet18",
        blur=True,
        blur_final=True,
        self_attention=True,
        norm="weight",
        hr_channels=32,
        lr_cross=True,
    )
    scale = 4
    params = ROOT / "params.yaml"
    if params.exists():
        data = yaml.safe_load(params.read_text()) or {}
        arch.update((data.get("pretrain_generator") or {}).get("model") or {})
        scale = int((data.get("base") or {}).get("scale", scale))
    arch.update(pretrained="none", scale=scale)
    return arch


def build_model() -> torch.nn.Module:
    from pipelines.networks import build_generator

    torch.manual_seed(0)
    return build_generator(**generator_arch()).eval()


def onnx_runner(model: torch.nn.Module, folder: Path):
    """``model`` exported as ``decrappify export`` exports it (parity-checked), loaded as the
    tile runner ``decrappify restore --model x.onnx`` uses."""
    from pipelines.exporting import metadata, onnx_file
    from pipelines.training.checkpoint import plain_copy

    net = plain_copy(model)
    meta = metadata.build(
        net.arch,
        net.arch["scale"],
        commit="bench",
        data_md5="none",
        params={},
        source="bench",
        min_size=onnx_file.size_rule(net)[0],
    )
    data, diff = onnx_file.to_onnx(net, meta)
    path = folder / "bench.onnx"
    path.write_bytes(data)
    return onnx_file.OnnxRunner(path), diff


def photo(width: int, height: int) -> np.ndarray:
    """A real photo resized to ``width`` x ``height`` (texture matters little to the speed)."""
    import cv2

    from pipelines.imaging.images import read_rgb

    src = max(sample_images(), key=lambda f: f.stat().st_size)
    return cv2.resize(read_rgb(src), (width, height), interpolation=cv2.INTER_CUBIC)


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_main(width: int, height: int) -> None:
    """In a child process: restore a width x height photo; one JSON line on stdout."""
    model = build_model()
    lr = photo(width, height)
    with torch.inference_mode():
        model(torch.zeros(1, 3, 64, 64))  # allocator and kernels warm, as in a real run
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    hr = restore(model, lr, TILE, OVERLAP)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_mb": before,
                "vm_hwm_mb": _status_mb("VmHWM"),
                "output": [int(hr.shape[1]), int(hr.shape[0])],
                "output_mb": hr.nbytes / 2**20,
            }
        ),
        flush=True,
    )


TIME = Path("/usr/bin/time")


def run_photo(width: int, height: int) -> dict:
    """The child's figures plus its peak RSS, from ``/usr/bin/time -v`` when present, else the
    child's own VmHWM (its high-water mark after exec). Not ``os.wait4`` or RUSAGE_CHILDREN
    from here: a child forked from this (large) process keeps this process's RSS at the fork
    as the floor of its ``ru_maxrss`` even after exec; ``time``'s small process passes on
    nothing."""
    code = f"from bench.restore import child_main; child_main({width}, {height})"
    cmd = [sys.executable, "-c", code]
    if TIME.exists():
        cmd = [str(TIME), "-v", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(
            f"the large-photo child failed (exit code {proc.returncode}):\n" + err[-2000:]
        )
    res = json.loads(out.strip().splitlines()[-1])
    peak = [line for line in err.splitlines() if "Maximum resident set size" in line]
    if peak:
        res["peak_rss_mb"] = int(peak[-1].split(":")[-1]) / 1024  # kbytes
        res["peak_rss_source"] = "/usr/bin/time -v"
    else:
        res["peak_rss_mb"] = res["vm_hwm_mb"]
        res["peak_rss_source"] = "VmHWM"
    return res


def run(args: argparse.Namespace) -> Report:
    n_rounds = repeats(args, 2, 1)
    photo_size = args.photo or ("500x375" if args.quick else "1000x750")
    sizes = [128, 256] if args.quick else [256, 512]
    # an image that fits one tile of fit_tile px, and the tiles it is cut into instead
    fit, fit_tile, tile, overlap = (240, 256, 128, 16) if args.quick else (480, 512, TILE, OVERLAP)
    arch = generator_arch()
    report = Report(
        NAME,
        TITLE,
        {
            "arch": arch,
            "sizes": sizes,
            "tile": TILE,
            "overlap": OVERLAP,
            "rounds": n_rounds,
            "photo": photo_size,
        },
    )
    model = build_model()
    scale = arch["scale"]
    images = {s: photo(s, s) for s in sizes + [fit]}

    with tempfile.TemporaryDirectory() as tmp:
        runner, diff = onnx_runner(model, Path(tmp))
    report.data["onnx_max_abs_diff"] = diff
    variants = {}
    for s in sizes:
        for dt, label in ((None, "fp32"), (torch.bfloat16, "bf16")):
            variants[f"{s} px {label}"] = clock(
                lambda s=s, dt=dt: restore(model, images[s], tile=s, overlap=OVERLAP, dtype=dt)
            )
        variants[f"{s} px onnx"] = clock(
            lambda s=s: restore(runner, images[s], tile=s, overlap=OVERLAP)
        )
    small = photo(64, 64)
    for dt in (None, torch.bfloat16):  # first-call costs out of the way, cheaply
        restore(model, small, tile=64, overlap=OVERLAP // 2, dtype=dt)
    restore(runner, small, tile=64, overlap=OVERLAP // 2)
    res = interleave(variants, n_rounds, warmup=0, progress="throughput")
    rows = []
    for s in sizes:
        fp32, bf16 = rates(res[f"{s} px fp32"], 1), rates(res[f"{s} px bf16"], 1)
        ort = rates(res[f"{s} px onnx"], 1)
        mpx = (s * scale) ** 2 / 1e6
        rows.append(
            [
                f"{s} -> {s * scale}",
                fmt(fp32, 2),
                fmt([r * mpx for r in fp32], 2),
                fmt(bf16, 2),
                fmt([r * mpx for r in bf16], 2),
                fmt(ratios(bf16, fp32), 2) + "x",
                fmt(ort, 2),
                fmt([r * mpx for r in ort], 2),
                fmt(ratios(ort, fp32), 2) + "x",
            ]
        )
        report.data[f"{s}px"] = {
            "fp32_images_per_s": summary(fp32),
            "bf16_images_per_s": summary(bf16),
            "onnxruntime_images_per_s": summary(ort),
        }
    report.table(
        f"one pass on the CPU, images/s and output Mpx/s, median [min-max] of "
        f"{n_rounds} rounds: PyTorch fp32 and bf16 autocast, ONNX Runtime fp32",
        [
            "LR -> HR px",
            "fp32 img/s",
            "fp32 Mpx/s",
            "bf16 img/s",
            "bf16 Mpx/s",
            "bf16 / fp32",
            "onnxruntime img/s",
            "onnxruntime Mpx/s",
            "onnxruntime / fp32",
        ],
        rows,
    )

    n_tiles = len(tile_starts(fit, tile, overlap)) ** 2
    extra = n_tiles * tile * tile / fit**2 - 1
    res = interleave(
        {
            "one pass": clock(lambda: restore(model, images[fit], tile=fit_tile, overlap=OVERLAP)),
            "tiled": clock(lambda: restore(model, images[fit], tile=tile, overlap=overlap)),
        },
        max(n_rounds, 3),
        warmup=0,
        progress="tiling",
    )
    overhead = [100 * (r - 1) for r in ratios(res["tiled"], res["one pass"])]
    report.data["tiling"] = {
        "image": fit,
        "tiles": n_tiles,
        "extra_pixels_pct": 100 * extra,
        "one_pass_s": summary(res["one pass"]),
        "tiled_s": summary(res["tiled"]),
        "overhead_pct": summary(overhead),
    }
    report.table(
        f"tiling overhead, median [min-max] of {max(n_rounds, 3)} rounds: a {fit} px "
        f"LR image that fits one {fit_tile} px tile, vs {n_tiles} tiles of {tile} px with "
        f"{overlap} px overlap (target < 15%)",
        ["one pass s", "tiled s", "time overhead", "extra pixels computed"],
        [
            [
                fmt(res["one pass"], 2),
                fmt(res["tiled"], 2),
                fmt(overhead, 1, "%"),
                f"{100 * extra:.1f}%",
            ]
        ],
    )

    if photo_size not in ("0", ""):
        w, h = (int(v) for v in photo_size.lower().split("x"))
        print(f"  large photo {w}x{h} in a child process...", file=sys.stderr, flush=True)
        big = run_photo(w, h)
        tiles = len(tile_starts(w, TILE, OVERLAP)) * len(tile_starts(h, TILE, OVERLAP))
        report.data["photo"] = {"lr": [w, h], "tiles": tiles, **big}
        report.table(
            f"large photo, tiles of {TILE} px / {OVERLAP} px overlap, fp32, one run in "
            "a child process",
            [
                "LR",
                "HR",
                "tiles",
                "seconds",
                "s / tile",
                "peak RSS MB",
                "child VmHWM MB",
                "RSS before MB",
                "result MB",
            ],
            [
                [
                    f"{w}x{h}",
                    "x".join(map(str, big["output"])),
                    tiles,
                    f"{big['seconds']:.1f}",
                    f"{big['seconds'] / tiles:.2f}",
                    f"{big['peak_rss_mb']:.0f}",
                    f"{big['vm_hwm_mb']:.0f}",
                    f"{big['rss_before_mb']:.0f}",
                    f"{big['output_mb']:.0f}",
                ]
            ],
            note=f"peak RSS from {big['peak_rss_source']}; RSS before: torch, the "
            "model and the LR image, before the first tile",
        )
    return report

"""Generator training step: our U-Net against fastai's DynamicUnet, and what this CPU can do.

One step = forward + loss + backward + optimizer step on a batch of HR crops (default 8 x
128 px, x4, the recipe's stage-1 size), timed per phase. fastai's U-Net runs at the HR size, as
in the recipe (the LR image upsampled x4 first, outside the timed step); ours takes the LR
image (32 px) and returns the HR one. Both are resnet34 U-Nets with blur, self-attention and
weight norm, random weights, MSE loss (the recipe's settings; ours: ``params-recipe.yaml``).

Beside the step rates: the machine's matmul peak (``torch.mm`` on large square matrices, fp32
and bf16), the FLOPs of a step (``FlopCounterMode``: convolutions, matmuls, attention) and the
share of that peak each variant achieves; ``torch.compile`` in a child process with a time
limit; and the OpenMP wait policy's effect on a shared machine (child processes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.common import Report, fmt, interleave, rates, ratios, repeats, summary
from bench.peers import FASTAI_MISSING, fastai_adam, fastai_available, fastai_unet
from pipelines.networks import build_generator
from pipelines.training.loop import adamw

NAME = "generator"
TITLE = "Generator training step (images/s, forward + backward + optimizer)"
SCALE = 4
RECIPE_ARCH = dict(
    encoder="resnet34",
    scale=SCALE,
    pretrained="none",
    blur=True,
    blur_final=True,
    self_attention=True,
    norm="weight",
    hr_channels=32,
    lr_cross=True,
)
DEFAULT_ARCH = {**RECIPE_ARCH, "encoder": "resnet18"}  # params.yaml
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--crop",
        type=int,
        default=None,
        help="generator/gan: HR crop, px (default 128, 64 with --quick)",
    )
    p.add_argument("--batch", type=int, default=8, help="generator/gan: batch size (default 8)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="generator/gan: steps per variant and round (default 1)",
    )
    p.add_argument(
        "--compile-timeout",
        type=float,
        default=None,
        metavar="S",
        help="generator: seconds allowed for torch.compile in its child process, "
        "0 = skip (default 360; skipped with --quick)",
    )
    p.add_argument(
        "--no-omp-probe",
        action="store_true",
        help="generator: skip the OpenMP wait policy comparison",
    )


def sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    crop = args.crop or (64 if args.quick else 128)
    steps = args.steps or 1
    return crop, args.batch, steps


# -- one training step per variant -----------------------------------------------------------------
class Step:
    """A model, its optimizer and a fixed batch; ``__call__`` runs one step and adds its phase
    times (forward incl. loss, backward, optimizer) to ``phases``."""

    def __init__(
        self,
        model: torch.nn.Module,
        opt,
        x: torch.Tensor,
        y: torch.Tensor,
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ):
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.model, self.opt, self.x, self.y, self.dtype = model.train(), opt, x, y, dtype
        self.phases: list[list[float]] = []

    def forward_loss(self) -> torch.Tensor:
        ctx = (
            torch.autocast("cpu", dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.model(self.x)
        return F.mse_loss(out.float(), self.y)

    def __call__(self) -> list[float]:
        t0 = time.perf_counter()
        loss = self.forward_loss()
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        self.opt.step()
        t3 = time.perf_counter()
        return [t1 - t0, t2 - t1, t3 - t2]

    def variant(self, steps: int, threads: int | None = None) -> Callable[[], float]:
        """``steps`` steps; with ``threads``, at that many torch threads (restored after)."""

        def go() -> float:
            before = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            try:
                total = [0.0, 0.0, 0.0]
                for _ in range(steps):
                    total = [a + b for a, b in zip(total, self())]
            finally:
                torch.set_num_threads(before)
            self.phases.append(total)
            return sum(total)

        return go

    def flops(self) -> int:
        """FLOPs of forward + backward (what FlopCounterMode counts: convs, matmuls, attention)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            loss = self.forward_loss()
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def batch(crop: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 3, crop, crop, generator=g)
    lr = F.avg_pool2d(hr, SCALE)
    return lr, hr


def ours(
    arch: dict, crop: int, n: int, *, fused: bool = True, dtype=None, channels_last: bool = False
) -> Step:
    torch.manual_seed(0)
    model = build_generator(**arch)
    opt = (
        adamw(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-3)
        if fused
        else torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-3)
    )
    lr, hr = batch(crop, n)
    return Step(model, opt, lr, hr, dtype, channels_last)


def fastai_step(crop: int, n: int) -> Step:
    """The recipe: the LR image upsampled to the HR size, ImageNet-normalised input and target,
    MSE, fastai's Adam (wd 1e-3 decoupled)."""
    torch.manual_seed(0)
    model = fastai_unet(crop)
    lr, hr = batch(crop, n)
    up = F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)
    x = (up - IMAGENET_MEAN) / IMAGENET_STD
    y = (hr - IMAGENET_MEAN) / IMAGENET_STD
    opt = fastai_adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99), wd=1e-3)
    return Step(model, opt, x, y)


# -- the machine's matmul peak ---------------------------------------------------------------------
def matmul_peak(n: int, rounds: int, reps: int = 3) -> dict[str, list[float]]:
    """GFLOP/s of ``torch.mm`` on n x n matrices, fp32 and bf16, with every thread and with
    one (keys "fp32", "bf16", "fp32 1 thread", "bf16 1 thread"), interleaved."""
    mats = {
        dt: (torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt))
        for dt in (torch.float32, torch.bfloat16)
    }

    def variant(dt, threads: int | None = None):
        a, b = mats[dt]

        def go() -> float:
            before = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            try:
                start = time.perf_counter()
                for _ in range(reps):
                    torch.mm(a, b)
                return time.perf_counter() - start
            finally:
                torch.set_num_threads(before)

        return go

    res = interleave(
        {
            "fp32": variant(torch.float32),
            "bf16": variant(torch.bfloat16),
            "fp32 1 thread": variant(torch.float32, 1),
            "bf16 1 thread": variant(torch.bfloat16, 1),
        },
        rounds,
    )
    return {k: [reps * 2 * n**3 / s / 1e9 for s in v] for k, v in res.items()}


# -- child processes: torch.compile, OpenMP wait policy -------------------------------------------
def child_main(spec: dict) -> None:
    """Runs in a child process; prints one JSON line with its measurements."""
    crop, n, steps, rounds = spec["crop"], spec["batch"], spec["steps"], spec["rounds"]
    if spec["kind"] == "compile":
        eager = ours(RECIPE_ARCH, crop, n)
        compiled = ours(RECIPE_ARCH, crop, n)
        compiled.model = torch.compile(compiled.model)
        start = time.perf_counter()
        compiled()  # compiles forward and backward
        compile_s = time.perf_counter() - start
        res = interleave(
            {"eager": eager.variant(steps), "compiled": compiled.variant(steps)}, rounds
        )
        print(json.dumps({"compile_seconds": compile_s, **res}), flush=True)
    else:  # omp
        step = ours(RECIPE_ARCH, crop, n)
        res = interleave({"step": step.variant(steps)}, rounds)
        print(json.dumps(res), flush=True)


def run_child(spec: dict, timeout: float, env: dict | None = None) -> dict | str:
    """The child's JSON, or why there is none. On timeout the child's whole process group
    (inductor's compile workers included) is stopped."""
    code = f"import json, sys; from bench.generator import child_main; child_main({spec!r})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"did not finish within {timeout:.0f} s"
    if proc.returncode:
        tail = [line for line in err.strip().splitlines() if line.strip()][-1:] or ["?"]
        return f"failed (exit code {proc.returncode}): {tail[0][:200]}"
    return json.loads(out.strip().splitlines()[-1])


# -- the benchmark ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> Report:
    crop, n, steps = sizes(args)
    n_rounds = repeats(args, 3, 2)
    compile_timeout = (
        (0.0 if args.quick else 360.0) if args.compile_timeout is None else args.compile_timeout
    )
    report = Report(
        NAME,
        TITLE,
        {
            "crop": crop,
            "batch": n,
            "scale": SCALE,
            "steps": steps,
            "rounds": n_rounds,
            "recipe_arch": RECIPE_ARCH,
            "compile_timeout": compile_timeout,
        },
    )

    peak = matmul_peak(1024 if args.quick else 2048, max(n_rounds, 3))
    report.data["matmul_gflops"] = {k: summary(v) for k, v in peak.items()}
    best_peak = {k: max(v) for k, v in peak.items()}
    report.table(
        f"matmul peak, torch.mm {1024 if args.quick else 2048}^2, GFLOP/s",
        ["dtype", "threads", "GFLOP/s", "bf16 / fp32"],
        [
            ["fp32", torch.get_num_threads(), fmt(peak["fp32"]), ""],
            [
                "bf16",
                torch.get_num_threads(),
                fmt(peak["bf16"]),
                fmt(ratios(peak["bf16"], peak["fp32"]), 2) + "x",
            ],
            ["fp32", 1, fmt(peak["fp32 1 thread"]), ""],
            [
                "bf16",
                1,
                fmt(peak["bf16 1 thread"]),
                fmt(ratios(peak["bf16 1 thread"], peak["fp32 1 thread"]), 2) + "x",
            ],
        ],
    )

    variants: dict[str, tuple[Step, str]] = {}
    threads: dict[str, int] = {}
    if fastai_available():
        variants["fastai DynamicUnet at HR, fastai Adam (recipe)"] = (fastai_step(crop, n), "fp32")
    else:
        report.note(FASTAI_MISSING)
    variants.update(
        {
            "ours, AdamW for-each": (ours(RECIPE_ARCH, crop, n, fused=False), "fp32"),
            "ours, fused AdamW (pipeline)": (ours(RECIPE_ARCH, crop, n), "fp32"),
            "ours, bf16 autocast": (ours(RECIPE_ARCH, crop, n, dtype=torch.bfloat16), "bf16"),
            "ours, channels_last": (ours(RECIPE_ARCH, crop, n, channels_last=True), "fp32"),
            "ours resnet18 (params.yaml), fused AdamW": (ours(DEFAULT_ARCH, crop, n), "fp32"),
            # one thread: no barrier shared with another process's threads on a busy machine
            "ours, 1 thread": (ours(RECIPE_ARCH, crop, n), "fp32"),
            "ours, bf16 autocast, 1 thread": (
                ours(RECIPE_ARCH, crop, n, dtype=torch.bfloat16),
                "bf16",
            ),
        }
    )
    threads.update({"ours, 1 thread": 1, "ours, bf16 autocast, 1 thread": 1})
    flops = {}
    for name, (step, _) in variants.items():
        try:
            flops[name] = step.flops()
        except Exception as exc:  # a counter that cannot follow a model is no reason to stop
            report.note(f"{name}: FLOPs not counted ({type(exc).__name__}: {exc})")
    res = interleave(
        {k: s.variant(steps, threads.get(k)) for k, (s, _) in variants.items()},
        n_rounds,
        progress="training steps",
    )
    images = steps * n
    rate = {k: rates(v, images) for k, v in res.items()}
    ref = "ours, fused AdamW (pipeline)"
    rows = []
    report.data["variants"] = {}
    for name, (step, dtype) in variants.items():
        ph = list(zip(*step.phases[-n_rounds:]))  # per phase, per round (seconds per `steps`)
        fwd_bwd = [a + b for a, b in zip(ph[0], ph[1])]
        gf = flops.get(name)
        achieved = [gf * steps / s / 1e9 for s in fwd_bwd] if gf else []
        key = dtype + (" 1 thread" if threads.get(name) == 1 else "")
        pct = [100 * a / best_peak[key] for a in achieved]
        rows.append(
            [
                name,
                fmt(rate[name]),
                fmt(ratios(rate[name], rate[ref]), 2) + "x",
                *(f"{1000 * summary(p)['median'] / steps:.0f}" for p in ph),
                f"{gf / 1e9:.0f}" if gf else "-",
                fmt(achieved, 0),
                fmt(pct, 0, "%"),
            ]
        )
        report.data["variants"][name] = {
            "images_per_s": summary(rate[name]),
            "vs_pipeline": summary(ratios(rate[name], rate[ref])),
            "ms_forward": summary([1000 * p / steps for p in ph[0]]),
            "ms_backward": summary([1000 * p / steps for p in ph[1]]),
            "ms_optimizer": summary([1000 * p / steps for p in ph[2]]),
            "gflop_per_step": gf / 1e9 if gf else None,
            "gflops_fwd_bwd": summary(achieved),
            "dtype": dtype,
        }
    report.table(
        f"training step, batch {n} x {crop} px HR (x{SCALE}), images/s median [min-max] "
        f"of {n_rounds} rounds x {steps} steps; GFLOP/s over forward+backward; % of the "
        "best matmul rate of the same dtype and thread count",
        [
            "variant",
            "images/s",
            "vs pipeline",
            "fwd ms",
            "bwd ms",
            "opt ms",
            "GFLOP/step",
            "GFLOP/s",
            "% peak",
        ],
        rows,
    )
    if "fastai DynamicUnet at HR, fastai Adam (recipe)" in rate:
        fa = rate["fastai DynamicUnet at HR, fastai Adam (recipe)"]
        comp = [[k, fmt(ratios(rate[k], fa), 2) + "x"] for k in rate if not k.startswith("fastai")]
        report.table("ours / fastai (recipe), round by round", ["variant", "speed-up"], comp)
        report.data["vs_fastai"] = {k: v for k, v in comp}
    pairs = [
        ("fused AdamW / AdamW for-each", "ours, fused AdamW (pipeline)", "ours, AdamW for-each"),
        ("bf16 / fp32", "ours, bf16 autocast", ref),
        ("bf16 / fp32, 1 thread", "ours, bf16 autocast, 1 thread", "ours, 1 thread"),
        ("channels_last / default layout", "ours, channels_last", ref),
        (f"{torch.get_num_threads()} threads / 1 thread", ref, "ours, 1 thread"),
    ]
    same = [[label, fmt(ratios(rate[a], rate[b]), 2) + "x"] for label, a, b in pairs]
    report.table(
        "our options side by side (images/s ratio, round by round)", ["ratio", "value"], same
    )
    report.data["options"] = {k: v for k, v in same}
    del variants

    # torch.compile, in a child process with a time limit
    if compile_timeout > 0:
        spec = {"kind": "compile", "crop": crop, "batch": n, "steps": steps, "rounds": n_rounds}
        out = run_child(spec, compile_timeout)
        if isinstance(out, str):
            report.note(f"torch.compile skipped: {out}")
            report.data["compile"] = out
        else:
            r = {k: rates(out[k], images) for k in ("eager", "compiled")}
            report.data["compile"] = {
                "compile_seconds": out["compile_seconds"],
                **{k: summary(v) for k, v in r.items()},
            }
            report.table(
                f"torch.compile (ours, fp32, fused AdamW; child process; compiling took "
                f"{out['compile_seconds']:.0f} s, far longer with a cold inductor cache)",
                ["variant", "images/s", "compiled / eager"],
                [
                    ["eager", fmt(r["eager"]), ""],
                    [
                        "torch.compile",
                        fmt(r["compiled"]),
                        fmt(ratios(r["compiled"], r["eager"]), 2) + "x",
                    ],
                ],
            )
    else:
        report.note("torch.compile skipped (--compile-timeout 0 or --quick)")

    if not args.no_omp_probe:
        omp_probe(report, crop, n, steps, 1 if args.quick else 2)
    return report


def omp_probe(report: Report, crop: int, n: int, steps: int, alternations: int) -> None:
    """Our fp32 step in child processes with libgomp's default wait policy (busy-wait) and with
    OMP_WAIT_POLICY=PASSIVE, alternated."""
    spec = {"kind": "omp", "crop": crop, "batch": n, "steps": steps, "rounds": 2}
    out: dict[str, list[float]] = {"default": [], "PASSIVE": []}
    for _ in range(alternations):
        for policy in out:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy == "PASSIVE":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            res = run_child(spec, 600, env)
            if isinstance(res, str):
                report.note(f"OpenMP probe ({policy}): {res}")
                return
            out[policy] += rates(res["step"], steps * n)
    report.data["omp_wait_policy"] = {k: summary(v) for k, v in out.items()}
    report.table(
        "OpenMP wait policy (ours, resnet34 fp32; child processes alternated, "
        f"{alternations} x 2 rounds each)",
        ["OMP_WAIT_POLICY", "images/s"],
        [[k, fmt(v)] for k, v in out.items()],
        note="libgomp's default busy-waits at every barrier; when another process holds "
        "the other core, each parallel region waits for a descheduled thread.",
    )

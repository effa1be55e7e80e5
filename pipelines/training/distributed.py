"""Data-parallel training under torchrun, in one place: ranks, the process group, wrapping.

Without torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op and the
stages run as one process. Under ``torchrun --nproc-per-node N`` every rank takes its share of
each global batch (pipelines.datasets.pairs.StepBatches), gradients are averaged by
DistributedDataParallel, and only rank 0 writes checkpoints, metrics, outputs and MLflow runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pipelines.core.errors import StageError
from pipelines.core.runtime import cpu_cores, pick_device


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Ranks:
    """This process's place, read from torchrun's environment (1 process without it)."""
    return Ranks(
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def init(device: torch.device) -> Ranks:
    """Join the process group (NCCL on CUDA, gloo on the CPU) when started by torchrun."""
    ranks = current()
    if ranks.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(
    model: nn.Module, ranks: Ranks, device: torch.device, sync_batchnorm: bool = False
) -> nn.Module:
    """DistributedDataParallel over ``model`` with more than one process, else ``model``.

    Wrap after choosing which parameters train (a frozen encoder): DDP registers its gradient
    hooks on the parameters that require grad when it is built.
    """
    if ranks.world == 1:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise StageError(
                "base.sync_batchnorm: SyncBatchNorm needs CUDA devices; "
                "set it to false for CPU processes"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean(value: float, ranks: Ranks) -> float:
    """The mean of ``value`` over all ranks, so decisions (the GAN switch) agree everywhere."""
    if ranks.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / ranks.world


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


@dataclass(frozen=True)
class Launch:
    nproc: int
    threads: int | None  # intra-op threads per process on a CPU; None: torchrun's choice


def launch(launcher: str, nproc: int, device: str, batches: Sequence[int] = ()) -> Launch | None:
    """How a training stage runs under ``base.launcher``: None in this process, else under
    torchrun with ``nproc`` processes.

    auto: one process per GPU when the stage runs on CUDA, or 2 on a CPU of 2 or more cores,
    which pretrain the default generator 1.3x faster on 2 cores than one process of two threads
    (README "Several processes"); at most as many as divide every global batch in ``batches``
    (each process takes an equal share), so no machine fails a config that runs in one
    process. On a CPU the processes share its cores as threads. Fewer than 2 processes, from
    auto or torchrun's nproc, run here: torchrun's single worker would see no distributed run
    and start torchrun again.
    """
    if launcher == "single":
        return None
    cuda = pick_device(device).type == "cuda"
    if launcher == "auto":
        most = torch.cuda.device_count() if cuda else min(2, cpu_cores())
        nproc = max(n for n in range(1, max(most, 1) + 1) if all(b % n == 0 for b in batches))
    if nproc < 2:
        return None
    return Launch(nproc, None if cuda else max(1, cpu_cores() // nproc))


def relaunch(stage: str, plan: Launch, argv: list[str]) -> int:
    """Run ``python -m pipelines.<stage>`` again under torchrun as ``plan`` says."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={plan.nproc}",
        "-m",
        f"pipelines.{stage}",
        *argv,
    ]
    env = dict(os.environ)
    # torchrun gives each process one thread unless told otherwise, which leaves a larger
    # CPU's other cores idle; a thread count the user set stands
    if plan.threads is not None and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(plan.threads)
    return subprocess.call(cmd, env=env)

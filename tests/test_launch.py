"""How base.launcher runs a training stage: in its own process or under torchrun."""

from __future__ import annotations

import pytest
import torch

from pipelines.training import distributed
from pipelines.training.distributed import Launch, launch, relaunch


@pytest.fixture
def machine(monkeypatch):
    """A machine of ``cores`` CPU cores and ``gpus`` CUDA devices, set by the test."""

    def set_machine(cores: int, gpus: int = 0) -> None:
        monkeypatch.setattr(distributed, "cpu_cores", lambda: cores)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)

    return set_machine


def test_single_runs_the_stage_in_its_own_process(machine):
    machine(cores=8, gpus=4)
    assert launch("single", 4, "auto") is None


def test_torchrun_shares_a_cpu_between_its_processes(machine):
    machine(cores=8)
    assert launch("torchrun", 3, "auto") == Launch(3, 2)
    machine(cores=2)
    assert launch("torchrun", 4, "cpu") == Launch(4, 1)
    # one per GPU: threads stay torchrun's choice
    machine(cores=8, gpus=2)
    assert launch("torchrun", 2, "auto") == Launch(2, None)
    # one process is this one: under torchrun it would see no distributed run and relaunch
    assert launch("torchrun", 1, "auto") is None


def test_auto_takes_every_gpu_or_two_cpu_processes(machine):
    machine(cores=2)
    assert launch("auto", 1, "auto") == Launch(2, 1)
    machine(cores=16)
    assert launch("auto", 1, "auto") == Launch(2, 8)
    machine(cores=1)
    assert launch("auto", 1, "auto") is None
    machine(cores=8, gpus=4)
    assert launch("auto", 1, "auto") == Launch(4, None)
    assert launch("auto", 1, "cpu") == Launch(2, 4)  # the GPUs are not the stage's device
    machine(cores=8, gpus=1)
    assert launch("auto", 1, "auto") is None  # one GPU: no second process to give it


def test_auto_takes_only_as_many_processes_as_divide_every_batch(machine):
    machine(cores=2)
    assert launch("auto", 1, "auto", [16, 8]) == Launch(2, 1)
    assert launch("auto", 1, "auto", [16, 5]) is None  # an odd batch runs in one process
    machine(cores=8, gpus=4)
    assert launch("auto", 1, "auto", [6, 12]) == Launch(3, None)
    assert launch("auto", 1, "auto", [7]) is None


def test_relaunch_gives_each_cpu_process_its_threads(monkeypatch):
    calls = []
    monkeypatch.setattr(
        distributed.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0
    )
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert relaunch("train_gan", Launch(2, 3), ["--params", "p.yaml"]) == 0
    cmd, env = calls[-1]
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "pipelines.train_gan",
        "--params",
        "p.yaml",
    ]
    assert env["OMP_NUM_THREADS"] == "3"
    relaunch("train_gan", Launch(2, None), [])
    assert "OMP_NUM_THREADS" not in calls[-1][1]
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the user's setting stands
    relaunch("train_gan", Launch(2, 3), [])
    assert calls[-1][1]["OMP_NUM_THREADS"] == "5"


def test_a_training_stage_under_auto_relaunches_itself(machine, monkeypatch, tmp_path):
    from pipelines import pretrain_generator
    from pipelines.running import stage

    machine(cores=2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    launched = []
    monkeypatch.setattr(stage, "relaunch", lambda *args: launched.append(args) or 0)
    params = tmp_path / "params.yaml"
    params.write_text("base: {launcher: auto}\ncrappify: {}\npretrain_generator: {}\n")
    argv = ["--params", str(params)]
    assert pretrain_generator.main(argv) == 0
    assert launched == [("pretrain_generator", Launch(2, 1), argv)]


def test_a_cuda_stage_without_a_gpu_fails_naming_the_device(machine, tmp_path, capsys):
    from pipelines import train_gan

    machine(cores=2)
    params = tmp_path / "params.yaml"
    params.write_text("base: {launcher: auto, device: cuda}\ncrappify: {}\ntrain_gan: {}\n")
    assert train_gan.main(["--params", str(params)]) == 2
    assert "base.device: 'cuda'" in capsys.readouterr().err

"""Fixtures of the fault suite: a mixed photo folder, a scratch DVC workspace of the real
pipeline, and one uninterrupted ``dvc repro`` of it that the fault cases compare against."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import fault_kit


@pytest.fixture(autouse=True)
def one_math_thread():
    """Stages run in this process with one thread, as the suite's subprocesses do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fault_store(tmp_path_factory) -> str:
    """The MLflow store (sqlite) of every stage the suite runs through DVC or as a process."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('fault-mlflow') / 'mlflow.db'}"
    fault_kit.settings["tracking_uri"] = uri
    yield uri
    fault_kit.settings["tracking_uri"] = ""


@dataclass(frozen=True)
class Mixed:
    folder: Path
    accepted: dict[str, str]  # source name -> note in the manifest
    skipped: dict[str, str]  # source name -> reason in metrics/download.json


@pytest.fixture(scope="session")
def mixed(tmp_path_factory) -> Mixed:
    folder = tmp_path_factory.mktemp("scraped") / "photos"
    expected = fault_kit.make_mixed_folder(folder)
    return Mixed(folder, expected["accepted"], expected["skipped"])


@pytest.fixture(scope="session")
def template(fault_store, mixed, tmp_path_factory) -> Path:
    """A committed git + DVC workspace of the real pipeline on the mixed folder; never run."""
    path = tmp_path_factory.mktemp("template") / "ws"
    return fault_kit.make_workspace(path, fault_kit.fault_params(mixed.folder))


@dataclass(frozen=True)
class Reference:
    path: Path  # the workspace after an uninterrupted `dvc repro`
    log: str  # what `dvc repro` printed


@pytest.fixture(scope="session")
def reference(template, tmp_path_factory) -> Reference:
    """``dvc repro`` of every stage, uninterrupted: what each fault case must still produce."""
    path = fault_kit.copy_workspace(template, tmp_path_factory.mktemp("reference") / "ws")
    proc = fault_kit.dvc(path, "repro")
    return Reference(path, proc.stdout)


@pytest.fixture
def stage_inputs(reference, tmp_path, monkeypatch) -> Path:
    """A working folder holding the reference run's inputs and outputs, for stages run in this
    process (``python -m pipelines.<stage>`` semantics: paths relative to it)."""
    fault_kit.copy_stage_files(reference.path, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DECRAPPIFY_ROOT", raising=False)
    return tmp_path


def pytest_report_header(config):
    how = (
        "root without DAC override (setpriv)"
        if fault_kit.PERMISSION_DROP
        else "as is"
        if os.geteuid()
        else "root with all capabilities: mode-000 files are readable"
    )
    return f"fault suite: stages run {how}"

"""Untrusted files: a checkpoint or model file carrying a pickled object that would run code is
refused (the code never runs), and an archive with links is refused at download, leaving data/hr
as it was. (Path traversal and special files in archives: tests/test_fetch.py and
tests/test_download.py::test_url_source_with_bad_archive_fails_without_touching_data.)"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import fault_kit
from archives import tar_bytes
from fault_kit import assert_same_weights, checkpoint_step


class RunsCode:
    """Unpickling this runs a shell command: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def booby_trap(path: Path, marker: Path, kind: str) -> None:
    """A file in the checkpoint format whose payload runs code when loaded unsafely."""
    torch.save(
        {
            "format": 1,
            "kind": kind,
            "arch": {},
            "model": {"w": torch.ones(1)},
            "step": 1,
            "fingerprint": "x",
            "payload": RunsCode(marker),
        },
        path,
    )


def test_the_trap_is_real(tmp_path):
    marker = tmp_path / "ran"
    booby_trap(tmp_path / "m.pt", marker, "generator")
    torch.load(tmp_path / "m.pt", weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


@pytest.fixture
def untrained_models(tmp_path, monkeypatch) -> Path:
    """A working folder with the fault suite's params and untrained model files."""
    from pipelines.core.config import as_dict, load
    from pipelines.networks import build_critic, build_generator
    from pipelines.pretrain_critic import PretrainCriticConfig
    from pipelines.pretrain_generator import PretrainGeneratorConfig
    from pipelines.training import checkpoint

    monkeypatch.chdir(tmp_path)
    params = fault_kit.fault_params("photos")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    g = load(PretrainGeneratorConfig, "pretrain_generator", params)
    gen = build_generator(**g.model.arch(g.base.scale))
    for name in ("generator", "gan_generator"):
        checkpoint.save(
            tmp_path / f"models/{name}.pt", checkpoint.model_payload("generator", gen.arch, gen)
        )
    c = load(PretrainCriticConfig, "pretrain_critic", params)
    critic = build_critic(**as_dict(c.model))
    checkpoint.save(
        tmp_path / "models/critic.pt", checkpoint.model_payload("critic", as_dict(c.model), critic)
    )
    return tmp_path


@pytest.mark.parametrize(
    "stage, trapped",
    [
        ("pretrain_critic", "models/generator.pt"),
        ("train_gan", "models/critic.pt"),
        ("evaluate", "models/gan_generator.pt"),
    ],
)
def test_a_model_file_that_would_run_code_is_refused(stage, trapped, untrained_models, capsys):
    import importlib

    marker = untrained_models / "ran"
    kind = "critic" if "critic" in trapped else "generator"
    booby_trap(untrained_models / trapped, marker, kind)
    module = importlib.import_module(f"pipelines.{stage}")
    assert module.main(["--no-tracking"]) == 1
    err = capsys.readouterr().err
    assert (
        f"error: {stage}: {trapped}: refused or unreadable checkpoint (Weights only load failed"
        in err
    )
    assert not marker.exists()


@pytest.mark.slow
def test_a_rolling_checkpoint_that_would_run_code_is_ignored_and_training_starts_over(
    stage_inputs, reference, capsys, caplog
):
    from pipelines import pretrain_critic

    marker = stage_inputs / "ran"
    last = stage_inputs / "checkpoints/pretrain_critic/last.pt"
    last.parent.mkdir(parents=True)
    booby_trap(last, marker, "training_state")
    with caplog.at_level("INFO"):
        assert pretrain_critic.main(["--no-tracking"]) == 0
    assert (
        "ignoring unusable checkpoint: checkpoints/pretrain_critic/last.pt: refused" in caplog.text
    )
    assert not marker.exists()
    assert checkpoint_step(last) == fault_kit.TRAIN_STEPS["pretrain_critic"]  # a real one now
    assert_same_weights(stage_inputs / "models/critic.pt", reference.path / "models/critic.pt")


# -- archives ---------------------------------------------------------------------------------
def link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member, why",
    [
        (link("photos/passwd.png", tarfile.SYMTYPE, "/etc/passwd"), "link to '/etc/passwd'"),
        (link("photos/hard.png", tarfile.LNKTYPE, "photos/a.png"), "link to 'photos/a.png'"),
        (
            link("photos/up.png", tarfile.SYMTYPE, "../../outside.png"),
            "link to '../../outside.png'",
        ),
    ],
)
def test_an_archive_with_links_is_refused_at_download(
    member, why, web, tmp_path, monkeypatch, capsys
):
    from pipelines import download

    monkeypatch.chdir(tmp_path)
    good = {
        f"photos/{c}.png": fault_kit._png(Image.fromarray(fault_kit._photo(i, 40, 40)))
        for i, c in enumerate("abc")
    }
    base = {"crop": 32, "scale": 2}
    # a previous, good download
    (tmp_path / "old").mkdir()
    for name, data in good.items():
        (tmp_path / "old" / Path(name).name).write_bytes(data)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"base": base, "download": {"source": "folder", "folder": "old"}})
    )
    assert download.main(["--no-tracking"]) == 0
    before = fault_kit.tree_digest(tmp_path / "data/hr")

    root, url = web
    archive = tar_bytes(good, extra=[member])
    (root / "evil.tar.gz").write_bytes(archive)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "base": base,
                "download": {
                    "source": "url",
                    "url": f"{url}/evil.tar.gz",
                    "sha256": hashlib.sha256(archive).hexdigest(),
                },
            }
        )
    )
    capsys.readouterr()
    assert download.main(["--no-tracking"]) == 1
    err = capsys.readouterr().err
    assert f"refusing member {member.name!r}: {why}" in err
    assert fault_kit.tree_digest(tmp_path / "data/hr") == before
    downloads = tmp_path / "data/downloads"
    extracted = [p for p in downloads.rglob("*") if p.name != "evil.tar.gz" and p.is_file()]
    assert extracted == []  # nothing unpacked is left behind
    assert not (tmp_path / "outside.png").exists()

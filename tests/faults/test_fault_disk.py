"""Disk faults: an output folder that is full, turns read-only, or is a file. The stage stops with
a clear error naming the output (exit status 1, no traceback), the previous outputs are left as
they were, no partial file is left behind, and once there is room a rerun resumes.

A real small filesystem (tmpfs) where ``mount`` is allowed; a mocked ENOSPC elsewhere."""

from __future__ import annotations

import builtins
import errno
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest
import yaml

import fault_kit
from fault_kit import (
    assert_same_weights,
    checkpoint_step,
    copy_stage_files,
    run_stage,
    stage_command,
    start,
    stray_temporaries,
    tree_digest,
    wait_for,
)

NO_SPACE = "No space left on device"


def disk_full_for(monkeypatch, matches, after: int = 0) -> list[str]:
    """Writes to a file whose name ``matches`` fail with ENOSPC halfway through, from the
    ``after``+1-th such write on (through pipelines.core.files and Path.write_bytes, the ways the
    stages write). Returns the names attempted."""
    from pipelines.core import files

    seen: list[str] = []
    write_bytes = Path.write_bytes

    def fake_write_bytes(self, data):
        with fake_open(self, "wb") as f:
            f.write(data)
        return len(data)

    def fake_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if "w" not in mode or not matches(Path(path).name):
            return f
        seen.append(Path(path).name)
        if len(seen) <= after:
            return f

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, NO_SPACE)

            def __getattr__(self, name):
                return getattr(f, name)

        return Full()

    monkeypatch.setattr(files, "open", fake_open, raising=False)
    monkeypatch.setattr(Path, "write_bytes", fake_write_bytes)
    assert write_bytes is not fake_write_bytes
    return seen


@pytest.fixture
def photos_workdir(tmp_path, monkeypatch) -> Path:
    """A folder of 6 photos and the suite's params, as the working directory; download done."""
    from pipelines import download

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    for i in range(6):
        cv2.imwrite(
            str(tmp_path / "photos" / f"p{i}.png"), fault_kit._bgr(fault_kit._photo(i, 48, 56))
        )
    params = fault_kit.fault_params("photos")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert download.main(["--no-tracking"]) == 0
    return tmp_path


def test_disk_full_while_writing_the_download_keeps_the_previous_data(
    photos_workdir, monkeypatch, capsys
):
    from pipelines import download

    before = tree_digest(photos_workdir / "data/hr")
    disk_full_for(monkeypatch, lambda name: name.startswith(".manifest.csv."))
    assert download.main(["--no-tracking"]) == 1
    err = capsys.readouterr().err
    assert f"error: download: cannot write data/hr: {NO_SPACE}; data/hr was left as it was" in err
    assert "Traceback" not in err
    assert tree_digest(photos_workdir / "data/hr") == before
    assert sorted(p.name for p in (photos_workdir / "data").iterdir()) == ["hr"]  # no leftovers


def test_disk_full_while_crappifying_then_a_rerun_finishes_the_job(
    photos_workdir, monkeypatch, capsys, tmp_path_factory
):
    from pipelines import crappify

    disk_full_for(monkeypatch, lambda name: name.endswith(".tmp") and ".jpg." in name, after=3)
    assert crappify.main(["--no-tracking"]) == 1
    err = capsys.readouterr().err
    assert "error: crappify: cannot write data/lr/" in err and f"{NO_SPACE}; data/lr/" in err
    assert stray_temporaries(photos_workdir / "data/lr") == []
    monkeypatch.undo()
    monkeypatch.chdir(photos_workdir)
    assert crappify.main(["--no-tracking"]) == 0
    partial = tree_digest(photos_workdir / "data/lr")
    shutil.rmtree(photos_workdir / "data/lr")
    assert crappify.main(["--no-tracking"]) == 0  # from scratch
    assert tree_digest(photos_workdir / "data/lr") == partial


def test_a_file_where_the_metrics_folder_should_be(photos_workdir, capsys):
    from pipelines import crappify

    shutil.rmtree(photos_workdir / "metrics")  # download wrote metrics/download.json
    (photos_workdir / "metrics").write_text("a file, not a folder")
    assert crappify.main(["--no-tracking"]) == 1
    err = capsys.readouterr().err
    assert (
        "error: crappify: cannot write metrics/crappify.json: metrics is a file, not a folder; "
        "metrics/crappify.json was left as it was"
    ) in err
    assert (photos_workdir / "metrics").read_text() == "a file, not a folder"


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_write_then_a_rerun_resumes(
    stage_inputs, reference, monkeypatch, capsys, caplog
):
    from pipelines import pretrain_critic

    previous = (stage_inputs / "models/critic.pt").read_bytes()
    disk_full_for(monkeypatch, lambda name: name.startswith(".last.pt."), after=1)
    assert pretrain_critic.main(["--no-tracking"]) == 1
    err = capsys.readouterr().err
    last = "checkpoints/pretrain_critic/last.pt"
    assert (
        f"error: pretrain_critic: cannot write {last}: {NO_SPACE}; {last} was left as it was" in err
    )
    assert checkpoint_step(stage_inputs / last) == 3  # the previous checkpoint, intact
    assert stray_temporaries(stage_inputs / "checkpoints") == []
    assert (stage_inputs / "models/critic.pt").read_bytes() == previous

    monkeypatch.undo()
    monkeypatch.chdir(stage_inputs)
    with caplog.at_level("INFO"):
        assert pretrain_critic.main(["--no-tracking"]) == 0
    assert f"resuming from {last} at step 3" in caplog.text
    assert_same_weights(stage_inputs / "models/critic.pt", reference.path / "models/critic.pt")


# -- a real small filesystem ----------------------------------------------------------------------
@pytest.fixture
def tmpfs():
    """mount(path, bytes): a tmpfs of that size at ``path``; unmounted at the end."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted: list[Path] = []

    def mount(path: Path, size: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "fault-suite", str(path)],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.mark.slow
def test_models_folder_that_fills_up_then_turns_read_only(reference, tmp_path, tmpfs):
    """A real tmpfs as models/: it fills up during the stage, then is read-only for the rerun;
    each time the stage stops with a clear error, leaving the previous outputs as they were;
    with room again, the rerun resumes at the last step and writes the uninterrupted model."""
    ws = copy_stage_files(reference.path, tmp_path / "ws")
    models = ws / "models"
    kept = {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()}  # not export/
    shutil.rmtree(models)
    # room for one more model: an atomic write holds the old file and the new one at once
    tmpfs(models, sum(len(b) for b in kept.values()) + len(kept["gan_generator.pt"]) + (8 << 20))
    for name, data in kept.items():
        (models / name).write_bytes(data)
    metrics_before = tree_digest(ws / "metrics")
    target = "models/gan_generator.pt"
    last = ws / "checkpoints/train_gan/last.pt"

    def assert_refused(out: str, reason: str) -> None:
        assert (
            f"error: train_gan: cannot write {target}: {reason}; {target} was left as it was" in out
        )
        assert "Traceback" not in out
        assert (models / "gan_generator.pt").read_bytes() == kept["gan_generator.pt"]
        assert stray_temporaries(models) == []
        assert tree_digest(ws / "metrics") == metrics_before
        assert checkpoint_step(last) == 8  # training itself finished: nothing to redo

    log = tmp_path / "train_gan.log"
    proc = start(stage_command("train_gan"), ws, log)
    wait_for(lambda: checkpoint_step(last) >= 2, proc, 900, "the first checkpoint", log)
    fill(models)  # the disk fills up while the stage trains
    assert proc.wait(timeout=900) == 1
    assert_refused(log.read_text(errors="replace"), NO_SPACE)

    (models / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(models)], check=True)
    done = run_stage(ws, "train_gan")
    assert done.returncode == 1
    assert "resuming from checkpoints/train_gan/last.pt at step 8" in done.stdout
    assert_refused(done.stdout, "Read-only file system")

    subprocess.run(["mount", "-o", "remount,rw", str(models)], check=True)
    done = run_stage(ws, "train_gan")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "resuming from checkpoints/train_gan/last.pt at step 8" in done.stdout
    assert_same_weights(models / "gan_generator.pt", reference.path / "models/gan_generator.pt")

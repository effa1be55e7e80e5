"""Atomic outputs: a failure mid-write leaves the previous output untouched."""

import pytest

from pipelines.core.files import (
    atomic_dir,
    atomic_path,
    remove_stale_temporaries,
    write_csv,
    write_json,
    write_text,
)


def test_write_replaces_atomically_with_normal_mode(tmp_path):
    target = tmp_path / "out" / "m.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}") and '"a": 2' in target.read_text()
    assert target.stat().st_mode & 0o044  # readable by others, not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "m.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_keeps_old_until_complete(tmp_path):
    out = tmp_path / "data"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_unwritable_destination_is_an_error_and_keeps_old(tmp_path):
    target = tmp_path / "m.txt"
    target.mkdir()  # a directory where a file should go: root cannot write over it either
    with pytest.raises(OSError):
        write_text(target, "new")
    assert target.is_dir() and not any(target.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["m.txt"]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".x.png.abc.tmp").write_text("partial")
    (tmp_path / ".d.tmp").mkdir()
    (tmp_path / "keep.png").write_text("ok")
    assert remove_stale_temporaries(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_csv(tmp_path):
    write_csv(tmp_path / "h.csv", [{"step": 1, "psnr": 20.123456789}, {"step": 2, "psnr": 21.0}])
    assert (tmp_path / "h.csv").read_text() == "step,psnr\n1,20.1235\n2,21\n"

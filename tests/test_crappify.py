"""The crappify stage on a few tiny images: outputs, determinism, resume, invalidation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipelines import crappify as stage
from pipelines.core.config import ConfigError, load
from pipelines.crappify import run
from pipelines.datasets import crappified
from pipelines.imaging.degradations import CrappifyConfig, crappify, rng_for
from pipelines.imaging.images import read_rgb, write_image

SIZES = {
    "train/a.png": (48, 64),
    "train/sub/b.png": (97, 131),
    "train/c.png": (64, 64),
    "valid/d.png": (48, 64),
    "valid/e.png": (50, 70),
    "test/f.png": (40, 72),
}


def picture(h: int, w: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x * 3, y * 4, (x + y) * 2], -1) + 20 * np.sin(x * (1 + seed % 3))[..., None]
    img += np.random.default_rng(seed).normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A working directory with data/hr laid out as the download stage leaves it."""
    monkeypatch.chdir(tmp_path)
    for i, (rel, (h, w)) in enumerate(SIZES.items()):
        write_image(Path("data/hr") / rel, picture(h, w, i))
    Path("data/hr/manifest.csv").write_text("file\n")
    return tmp_path


def config(lr: str = "data/lr", scale: int = 4, **section) -> CrappifyConfig:
    params = {
        "base": {"seed": 3, "scale": scale, "crop": 8 * scale, "paths": {"lr": lr}},
        "crappify": {"workers": 1, **section},
    }
    return load(CrappifyConfig, "crappify", params)


def tree(root: str = "data/lr") -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def manifest(root: str = "data/lr") -> list[dict]:
    with open(Path(root) / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_mirrors_the_hr_tree_with_the_bytes_crappify_makes(repo):
    metrics = run(config(jpeg_quality=[30, 60]))
    out = tree()
    assert set(out) == {r.replace(".png", ".jpg") for r in SIZES} | {
        "manifest.csv",
        ".crappify.json",
    }
    rows = {r["source"]: r for r in manifest()}
    for rel, (h, w) in SIZES.items():
        hr = read_rgb(Path("data/hr") / rel)
        lr, data, rec = crappify(hr, config(jpeg_quality=[30, 60]), rng_for(3, rel))
        name = rel.replace(".png", ".jpg")
        assert out[name] == data
        assert read_rgb(Path("data/lr") / name).shape == (h // 4, w // 4, 3)
        row = rows[rel]
        assert (row["file"], row["split"]) == (name, rel.split("/")[0])
        assert (int(row["lr_width"]), int(row["lr_height"])) == (w // 4, h // 4)
        assert int(row["quality"]) == rec["quality"] and 30 <= rec["quality"] <= 60
        assert row["text"] == str(rec["quality"]) and int(row["x"]) == rec["x"]
    saved = json.loads(Path("metrics/crappify.json").read_text())
    logged = json.loads(Path("logs/crappify.json").read_text())
    # results for DVC and git; what varies run to run apart
    assert saved == {k: v for k, v in metrics.items() if k not in stage.RUN_KEYS}
    assert logged == {k: metrics[k] for k in stage.RUN_KEYS}
    assert metrics["count"] == metrics["processed"] == len(SIZES) and metrics["failures"] == 0
    assert metrics["splits"] == {"test": 1, "train": 3, "valid": 2}
    qualities = [int(r["quality"]) for r in rows.values()]
    assert (metrics["quality_min"], metrics["quality_max"]) == (min(qualities), max(qualities))


def test_byte_identical_whatever_the_worker_count(repo):
    run(config(lr="out1", workers=1))
    run(config(lr="out2", workers=2))
    one, two = tree("out1"), tree("out2")
    assert one == two and len(one) == len(SIZES) + 2


@pytest.mark.parametrize("scale", [1, 2, 8])
def test_lr_size_follows_base_scale(repo, scale):
    run(config(scale=scale, watermark="none"))
    for rel, (h, w) in SIZES.items():
        assert read_rgb(Path("data/lr") / rel.replace(".png", ".jpg")).shape == (
            h // scale,
            w // scale,
            3,
        )


def test_resumes_after_an_interruption_and_matches_a_clean_run(repo, monkeypatch):
    run(config(lr="clean"))
    calls = []

    def dies_on_the_fourth(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return crappify(*args)

    monkeypatch.setattr(crappified, "crappify", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(config())
    monkeypatch.setattr(crappified, "crappify", crappify)
    assert (Path("data/lr") / ".crappify-journal.jsonl").is_file()
    assert not (Path("data/lr") / "manifest.csv").exists()
    # a write killed before its rename leaves a temporary beside the output
    Path("data/lr/train/.c.jpg.x1y2.tmp").write_bytes(b"\xff\xd8partial")
    with open("data/lr/.crappify-journal.jsonl", "a") as f:
        f.write('{"source": "train/c.p')  # a torn last line

    metrics = run(config())
    assert metrics["reused"] == 3 and metrics["processed"] == len(SIZES) - 3
    assert tree() == tree("clean")


def test_rerun_keeps_valid_outputs_and_redoes_only_what_changed(repo):
    run(config())
    first = tree()
    again = run(config())
    assert again["processed"] == 0 and again["reused"] == len(SIZES) and tree() == first

    Path("data/lr/valid/d.jpg").write_bytes(b"not the recorded bytes")
    write_image("data/hr/train/a.png", picture(48, 64, 99))  # changed HR content
    Path("data/hr/test/f.png").unlink()  # HR gone
    (Path("data/lr/valid/e.jpg")).unlink()  # output lost
    metrics = run(config())
    assert metrics["processed"] == 3 and metrics["count"] == len(SIZES) - 1
    out = tree()
    assert "test/f.jpg" not in out and not Path("data/lr/test").exists()
    assert out["valid/d.jpg"] == first["valid/d.jpg"] and out["valid/e.jpg"] == first["valid/e.jpg"]
    assert out["train/a.jpg"] != first["train/a.jpg"]
    assert {r["source"] for r in manifest()} == set(SIZES) - {"test/f.png"}


def test_a_param_change_clears_the_old_outputs(repo):
    run(config())
    Path("data/hr/valid/e.png").unlink()
    metrics = run(config(jpeg_quality=[80, 80], watermark="none"))
    assert metrics["reused"] == 0 and metrics["processed"] == len(SIZES) - 1
    assert "valid/e.jpg" not in tree()
    assert {(r["quality"], r["text"]) for r in manifest()} == {("80", "")}
    state = json.loads(Path("data/lr/.crappify.json").read_text())
    assert state["spec"]["jpeg_quality"] == [80, 80] and state["seed"] == 3


def test_unreadable_image_is_counted_not_fatal(repo):
    Path("data/hr/train/broken.png").write_bytes(b"\x89PNG not really")
    metrics = run(config())
    assert metrics["failures"] == 1 and metrics["count"] == len(SIZES)
    assert not Path("data/lr/train/broken.jpg").exists()


def test_refuses_ambiguous_or_overlapping_paths(repo):
    write_image("data/hr/train/a.jpg", picture(48, 64, 0))
    with pytest.raises(ValueError, match="would both become train/a.jpg"):
        run(config())
    Path("data/hr/train/a.jpg").unlink()
    with pytest.raises(ValueError, match="must be outside"):
        run(config(lr="data/hr/lr"))


def test_logs_an_example_grid_of_hr_lr_pairs(repo):
    class Recorder:
        images = {}

        def log_image(self, image, name):
            self.images[name] = image

    tracker = Recorder()
    run(config(examples=2), tracker)
    grid = tracker.images["crappify/examples.png"]
    assert grid.dtype == np.uint8 and grid.shape == (2 * 256, 2 * 256, 3)


@pytest.mark.parametrize(
    "section, start, value",
    [
        ({"jpeg_quality": [0, 70]}, "crappify.jpeg_quality:", "(0, 70)"),
        ({"jpeg_quality": [60, 20]}, "crappify.jpeg_quality:", "[60, 20]"),
        ({"jpeg_quality": [60.5, 70]}, "crappify.jpeg_quality[0]:", "60.5"),
        ({"short_side": -96}, "crappify.short_side:", "-96"),
        ({"workers": -1}, "crappify.workers:", "-1"),
        ({"size_mode": "half"}, "crappify.size_mode:", "'half'"),
        ({"scale": 2}, "crappify.scale:", "unknown key"),
    ],
)
def test_config_errors_name_the_key_and_value(section, start, value):
    with pytest.raises(ConfigError) as err:
        load(CrappifyConfig, "crappify", {"crappify": section})
    assert str(err.value).startswith(start) and value in str(err.value)


def test_the_config_is_a_spec_with_the_base_scale():
    cfg = load(CrappifyConfig, "crappify", {"base": {"scale": 2, "crop": 64}, "crappify": {}})
    assert cfg.scale == 2 and cfg.jpeg_quality == (10, 70) and cfg.watermark == "quality"

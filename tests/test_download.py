"""The download stage: sources, checks, deterministic split, atomic outputs, params."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipelines import download
from pipelines.core.config import ConfigError, load
from pipelines.core.errors import StageError
from pipelines.core.files import sha256_file
from pipelines.datasets.photos import NoImagesError, output_names, split_key, split_sizes
from pipelines.download import DownloadConfig, run
from pipelines.imaging import images

from archives import tar_bytes

SMALL_BASE = {"crop": 16, "scale": 4}


def config(base=None, **section) -> DownloadConfig:
    return load(DownloadConfig, "download", {"base": base or SMALL_BASE, "download": section})


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def manifest(root: Path = Path("data/hr")) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def photo_folder(root: Path, n: int) -> Path:
    for i in range(n):
        images.write_image(root / f"img{i:02d}.png", noise(20, 24, i))
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder: params paths (data/hr, metrics) are relative to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- pure rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, expected",
    [
        (17, (12, 2, 3)),
        (0, (0, 0, 0)),
        (1, (1, 0, 0)),
        (2, (2, 0, 0)),
        (3, (1, 1, 1)),
        (5, (3, 1, 1)),
        (7390, (5542, 739, 1109)),
    ],
)
def test_split_sizes(n, expected):
    assert split_sizes(n, 0.1, 0.15) == expected


def test_split_sizes_without_held_out_sets():
    assert split_sizes(10, 0.0, 0.0) == (10, 0, 0)


def test_output_names_never_collide():
    names = output_names(
        ["a.jpg", "a.png", "x/A.jpeg", "x/a.JPG", "d.jpg", "d.png/e.jpg", "n/b.tif", "n/b.tif.png"]
    )
    assert names == {
        "a.png": "a.png",
        "a.jpg": "a.jpg.png",
        "x/A.jpeg": "x/A.png",
        "x/a.JPG": "x/a.JPG.png",
        "d.png/e.jpg": "d.png/e.png",
        "d.jpg": "d.jpg.png",
        "n/b.tif.png": "n/b.tif.png",
        "n/b.tif": "n/b.png",
    }
    clash = output_names(["p.jpg", "p.png", "p.jpg.png"])
    assert clash["p.jpg"] == "p.jpg-2.png"
    assert len({v.lower() for v in clash.values()}) == 3


# -- params ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, key",
    [
        ({"source": "url"}, "download.url"),
        ({"source": "url", "url": "ftp://host/a.tgz", "sha256": "a" * 64}, "download.url"),
        ({"source": "url", "url": "https://host/a.tgz", "sha256": "abc"}, "download.sha256"),
        ({"source": "folder"}, "download.folder"),
        ({"source": "web"}, "download.source"),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, "download.test_fraction"),
        ({"test_fraction": 0.6}, "download.test_fraction"),
        ({"min_size": 8}, "download.min_size"),
        ({"max_pixels": 0}, "download.max_pixels"),
        ({"max_images": -1}, "download.max_images"),
        ({"bogus": 1}, "download.bogus"),
    ],
)
def test_bad_params_name_the_key(section, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + ":"):
        config(**section)


def test_params_yaml_and_presets_load(repo_root):
    cfg = load(DownloadConfig, "download", repo_root / "params.yaml")
    assert cfg.min_side == cfg.base.crop
    assert config(source="oxford-pets").source == "oxford-pets"
    assert config(min_size=40).min_side == 40
    url = config(source="url", url="https://host/a.tgz", sha256="AB" * 32)
    assert url.sha256 == "AB" * 32


# -- the sample source, end to end -----------------------------------------------------------------


def test_sample_source_end_to_end(workdir):
    cfg = load(DownloadConfig, "download", {"base": {}, "download": {}})
    metrics = run(cfg)
    counts = metrics["images"], metrics["train"], metrics["valid"], metrics["test"]
    assert counts == (17, 12, 2, 3)
    assert metrics["skipped_files"] == {"microaneurysms.png": "too small: 102x102 < 128"}
    assert json.loads(Path("metrics/download.json").read_text()) == metrics

    rows = manifest()
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)
    assert {r["split"] for r in rows} == {"train", "valid", "test"}
    on_disk = sorted(p.relative_to("data/hr").as_posix() for p in images.list_images("data/hr"))
    assert on_disk == sorted(r["file"] for r in rows)
    for row in rows:
        path = Path("data/hr") / row["file"]
        assert row["file"].startswith(row["split"] + "/") and row["file"].endswith(".png")
        assert sha256_file(path) == row["sha256"] and path.stat().st_size == int(row["bytes"])
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint8 and raw.shape == (int(row["height"]), int(row["width"]), 3)
    by_source = {r["source"]: r for r in rows}
    assert by_source["sample:camera.png"]["note"] == "converted: grayscale"
    assert by_source["sample:hubble_deep_field.jpg"]["file"].endswith("/hubble_deep_field.png")
    assert by_source["sample:astronaut.png"]["note"] == "ok"
    assert sorted(p.name for p in Path("data").iterdir()) == ["hr"]  # no temporaries left


# -- the folder source -----------------------------------------------------------------------------


def test_folder_source_checks_converts_dedupes_and_keeps_names_apart(workdir):
    src = workdir / "photos"
    images.write_image(src / "a.jpg", noise(30, 40, 1))
    images.write_image(src / "a.png", noise(30, 40, 2))
    cv2.imwrite(str(src / "gray.png"), noise(30, 40, 3)[:, :, 0])
    images.write_image(src / "sub" / "b.jpeg", noise(40, 30, 4))
    (src / "sub" / "b-copy.jpeg").write_bytes((src / "sub" / "b.jpeg").read_bytes())
    (src / "empty.png").write_bytes(b"")
    (src / "notes.jpg").write_text("a text file named like a photo")
    images.write_image(src / "tiny.png", noise(10, 12, 5))
    (src / "trunc.jpg").write_bytes(images.encode_jpeg(noise(40, 40, 6))[:900])
    (src / "readme.txt").write_text("not a candidate")

    metrics = run(config(source="folder", folder="photos"))
    rows = {r["source"].removeprefix("folder:"): r for r in manifest()}
    assert set(rows) in (
        {"a.jpg", "a.png", "gray.png", "sub/b.jpeg"},
        {"a.jpg", "a.png", "gray.png", "sub/b-copy.jpeg"},
    )
    names = {src: r["file"].split("/", 1)[1] for src, r in rows.items()}
    assert names["a.png"] == "a.png" and names["a.jpg"] == "a.jpg.png"
    assert rows["gray.png"]["note"] == "converted: grayscale" and rows["a.png"]["note"] == "ok"
    skipped = dict(metrics["skipped_files"])
    duplicate = {k: skipped.pop(k) for k in list(skipped) if k.startswith("sub/")}
    assert list(duplicate.values()) in (
        ["duplicate: same pixels as sub/b.jpeg"],
        ["duplicate: same pixels as sub/b-copy.jpeg"],
    )
    assert skipped == {
        "empty.png": "empty file",
        "notes.jpg": "not an image",
        "tiny.png": "too small: 12x10 < 16",
        "trunc.jpg": "truncated",
    }
    assert metrics["skipped_by_reason"] == {
        "duplicate": 1,
        "empty file": 1,
        "not an image": 1,
        "too small": 1,
        "truncated": 1,
    }
    assert (metrics["train"], metrics["valid"], metrics["test"]) == (2, 1, 1)


def test_missing_folder_is_a_clear_error(workdir):
    with pytest.raises(StageError, match="download.folder: nowhere is not a folder"):
        run(config(source="folder", folder="nowhere"))


def test_split_is_deterministic_and_independent_of_listing_order(workdir, monkeypatch):
    photo_folder(workdir / "photos", 12)
    cfg = config(source="folder", folder="photos")
    run(cfg)
    first = Path("data/hr/manifest.csv").read_bytes()
    run(cfg)
    assert Path("data/hr/manifest.csv").read_bytes() == first

    listed = images.list_images
    monkeypatch.setattr(download.images, "list_images", lambda root: listed(root)[::-1])
    run(cfg)
    assert Path("data/hr/manifest.csv").read_bytes() == first

    split_of = {r["source"]: r["split"] for r in manifest()}
    ranked = sorted(split_of, key=lambda s: split_key(cfg.base.seed, s.removeprefix("folder:")))
    assert [split_of[s] for s in ranked] == ["test"] * 2 + ["valid"] + ["train"] * 9

    run(config({**SMALL_BASE, "seed": 7}, source="folder", folder="photos"))
    assert {r["source"]: r["split"] for r in manifest()} != split_of


def test_max_images_keeps_the_first_by_seeded_order(workdir):
    photo_folder(workdir / "photos", 10)
    cfg = config(source="folder", folder="photos", max_images=4)
    metrics = run(cfg)
    assert metrics["images"] == 4
    expected = sorted(
        (f"img{i:02d}.png" for i in range(10)), key=lambda rel: split_key(cfg.base.seed, rel)
    )[:4]
    assert sorted(r["source"] for r in manifest()) == sorted(f"folder:{e}" for e in expected)


# -- failure leaves the previous output intact -----------------------------------------------------


def test_no_usable_images_fails_clearly_and_keeps_previous_output(workdir, capsys):
    photo_folder(workdir / "photos", 4)
    run(config(source="folder", folder="photos"))
    before = Path("data/hr/manifest.csv").read_bytes()
    (workdir / "bad").mkdir()
    (workdir / "bad" / "x.png").write_bytes(b"")
    (workdir / "bad" / "y.jpg").write_text("text")

    with pytest.raises(NoImagesError, match="no usable images"):
        run(config(source="folder", folder="bad"))
    params = workdir / "params.yaml"
    params.write_text(
        yaml.safe_dump({"base": SMALL_BASE, "download": {"source": "folder", "folder": "bad"}})
    )
    assert download.main(["--params", str(params), "--no-tracking"]) == 1
    assert "error: download: no usable images" in capsys.readouterr().err
    assert Path("data/hr/manifest.csv").read_bytes() == before
    assert sorted(p.name for p in Path("data").iterdir()) == ["hr"]


def test_interrupted_run_keeps_previous_output_and_next_run_cleans_up(workdir, monkeypatch):
    photo_folder(workdir / "photos", 4)
    run(config(source="folder", folder="photos"))
    before = Path("data/hr/manifest.csv").read_bytes()
    encode = images.encode_png
    calls = []

    def failing(rgb):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(rgb)

    monkeypatch.setattr(download.images, "encode_png", failing)
    with pytest.raises(KeyboardInterrupt):
        run(config(source="folder", folder="photos"))
    assert Path("data/hr/manifest.csv").read_bytes() == before
    assert sorted(p.name for p in Path("data").iterdir()) == ["hr"]

    monkeypatch.setattr(download.images, "encode_png", encode)
    (workdir / "data" / ".hr.killed.tmp").mkdir()  # what a killed process leaves behind
    run(config(source="folder", folder="photos"))
    assert sorted(p.name for p in Path("data").iterdir()) == ["hr"]


def test_tracker_receives_contact_sheet_and_manifest(workdir):
    photo_folder(workdir / "photos", 5)

    class Recorder:
        def __init__(self):
            self.images, self.artifacts = [], []

        def log_image(self, image, name):
            self.images.append((image, name))

        def log_artifact(self, path, artifact_path=None):
            self.artifacts.append(Path(path))

    tracker = Recorder()
    run(config(source="folder", folder="photos"), tracker)
    [(sheet, name)] = tracker.images
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    assert name.endswith(".png")
    assert tracker.artifacts == [Path("data/hr/manifest.csv")]


# -- the url source, against a local server --------------------------------------------------------


def test_url_source_downloads_checks_and_strips_the_top_folder(workdir, web):
    root, url = web
    archive = tar_bytes(
        {
            "photos/one.png": images.encode_png(noise(24, 32, 1)),
            "photos/two.jpg": images.encode_jpeg(noise(32, 24, 2)),
            "photos/more/three.png": images.encode_png(noise(20, 20, 3)),
            "photos/broken.jpg": images.encode_jpeg(noise(64, 64, 4))[:1500],
            "photos/LICENSE.txt": b"CC BY-SA",
        }
    )
    (root / "set.tar.gz").write_bytes(archive)
    sha = hashlib.sha256(archive).hexdigest()
    metrics = run(config(source="url", url=f"{url}/set.tar.gz", sha256=sha))
    assert metrics["images"] == 3 and metrics["skipped_files"] == {"broken.jpg": "truncated"}
    sources = sorted(r["source"] for r in manifest())
    assert sources == ["url:more/three.png", "url:one.png", "url:two.jpg"]
    assert (workdir / "data/downloads" / sha[:16] / "set.tar.gz").read_bytes() == archive


def test_url_source_with_bad_archive_fails_without_touching_data(workdir, web, capsys):
    photo_folder(workdir / "photos", 4)
    run(config(source="folder", folder="photos"))
    before = Path("data/hr/manifest.csv").read_bytes()
    root, url = web
    evil = tar_bytes(
        {
            "photos/ok.png": images.encode_png(noise(24, 24, 1)),
            "../escape.png": images.encode_png(noise(24, 24, 2)),
        }
    )
    (root / "evil.tar.gz").write_bytes(evil)
    params = workdir / "params.yaml"
    for sha, message in [
        (hashlib.sha256(evil).hexdigest(), "refusing member '../escape.png'"),
        ("0" * 64, "sha256 mismatch"),
    ]:
        params.write_text(
            yaml.safe_dump(
                {
                    "base": SMALL_BASE,
                    "download": {"source": "url", "url": f"{url}/evil.tar.gz", "sha256": sha},
                }
            )
        )
        assert download.main(["--params", str(params), "--no-tracking"]) == 1
        assert message in capsys.readouterr().err
    assert Path("data/hr/manifest.csv").read_bytes() == before
    assert not (workdir / "escape.png").exists() and not (workdir / "data" / "escape.png").exists()

"""Data faults: a scraped folder mixing good photos with every bad kind of file goes through
the whole pipeline (``dvc repro`` of the real stages). Every stage processes the good ones,
reports each bad one with its reason, and the counts add up."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from pipelines.core.config import load
from pipelines.datasets.photos import utf8_name
from pipelines.download import DownloadConfig, run
from pipelines.imaging.images import list_images, read_rgb
from pipelines.training import checkpoint

import fault_kit
from fault_kit import NON_UTF8, NON_UTF8_SHOWN, SMALL


def manifest(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def metrics(ws: Path, stage: str) -> dict:
    """A stage's results and the numbers of its last run (logs/), together."""
    results = json.loads((ws / "metrics" / f"{stage}.json").read_text())
    run_log = ws / "logs" / f"{stage}.json"
    return {**results, **(json.loads(run_log.read_text()) if run_log.exists() else {})}


@pytest.mark.slow  # the session's reference `dvc repro`
def test_download_keeps_every_good_photo_and_names_every_bad_file_with_its_reason(reference, mixed):
    ws = reference.path
    m = metrics(ws, "download")
    assert m["skipped_files"] == mixed.skipped
    rows = manifest(ws / "data/hr/manifest.csv")
    assert {r["source"].removeprefix("folder:"): r["note"] for r in rows} == mixed.accepted
    # the counts add up
    assert m["candidates"] == len(mixed.accepted) + len(mixed.skipped)
    assert m["images"] == len(rows) == len(mixed.accepted)
    assert m["skipped"] == len(mixed.skipped)
    assert m["train"] + m["valid"] + m["test"] == m["images"]
    assert sum(m["skipped_by_reason"].values()) == m["skipped"]
    assert m["converted"] == sum(1 for n in mixed.accepted.values() if n != "ok")
    on_disk = sorted(p.relative_to(ws / "data/hr").as_posix() for p in list_images(ws / "data/hr"))
    assert on_disk == sorted(r["file"] for r in rows)
    # converted pictures are upright 8-bit RGB PNGs
    by_source = {r["source"].removeprefix("folder:"): r for r in rows}
    sideways = by_source["exif_rotated.jpg"]
    assert (int(sideways["width"]), int(sideways["height"])) == (64, 88)  # stored as 88x64
    for r in rows:
        img = read_rgb(ws / "data/hr" / r["file"])
        assert img.shape == (int(r["height"]), int(r["width"]), 3)
    # a name that is not UTF-8 is kept, readable, in the manifest and on disk
    latin1 = by_source[NON_UTF8_SHOWN]
    assert latin1["file"].endswith("/caf%E9-latin1.png")
    # the report names each bad file, in the log too
    for name, reason in mixed.skipped.items():
        assert f"skipped {name}: {reason}" in reference.log


@pytest.mark.slow
def test_every_later_stage_processes_every_good_photo(reference, mixed):
    ws = reference.path
    d = metrics(ws, "download")
    c = metrics(ws, "crappify")
    assert c["count"] == c["processed"] == d["images"] and c["failures"] == 0
    assert c["splits"] == {"test": d["test"], "train": d["train"], "valid": d["valid"]}
    lr = sorted(p.relative_to(ws / "data/lr").as_posix() for p in list_images(ws / "data/lr"))
    hr = sorted(p.relative_to(ws / "data/hr").as_posix() for p in list_images(ws / "data/hr"))
    assert lr == [h.removesuffix(".png") + ".jpg" for h in hr]

    g = metrics(ws, "pretrain_generator")
    assert g["steps"] == 8
    # the photo above base.crop but below phase 2's 48 px crop: left out of that phase, said so
    small = next(
        r for r in manifest(ws / "data/hr/manifest.csv") if r["source"] == f"folder:{SMALL}"
    )
    assert small["split"] == "train"
    assert (
        f"1 of {d['train']} training images are smaller than the 48 px crop and are left "
        f"out: {Path(small['file']).name} (44x40)"
    ) in reference.log

    critic = metrics(ws, "pretrain_critic")
    assert critic["generated_images"] == d["train"] + d["valid"]
    generated = [p for p in (ws / "data/generated").rglob("*.png")]
    assert len(generated) == d["train"] + d["valid"]

    gan = metrics(ws, "train_gan")
    assert gan["generator_steps"] == 8 and gan["chosen_step"] in (0, 2, 4, 6, 8)

    ev = metrics(ws, "evaluate")
    assert ev["test"]["images"] == d["test"]
    rows = manifest(ws / "metrics/evaluate_images.csv")
    # bicubic, bilinear, generator, gan_generator; with crappify's LR and bicubic-downscaled
    assert len(rows) == d["test"] * 4 * 2
    assert ev["test/clean"]["images"] == d["test"]
    for name in fault_kit.MODEL_FILES:
        assert checkpoint.load(ws / name)["kind"] in ("generator", "critic")
    assert "Data and pipelines are up to date" in fault_kit.dvc(ws, "status").stdout


def test_non_utf8_names_are_escaped_not_fatal():
    assert utf8_name(os.fsdecode(b"a/caf\xe9.jpg")) == "a/caf%E9.jpg"
    assert utf8_name("été/ok.png") == "été/ok.png"


def test_non_utf8_name_beside_its_escaped_twin_is_reported_not_lost(tmp_path, monkeypatch):
    """The escaped name of a non-UTF-8 file can exist already; the clash is a reported skip."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "photos"
    src.mkdir()
    photo = fault_kit._jpeg(fault_kit._photo(1, 40, 40))
    (src / "caf%E9.jpg").write_bytes(photo)
    with open(os.path.join(os.fsencode(src), b"caf\xe9.jpg"), "wb") as f:
        f.write(fault_kit._jpeg(fault_kit._photo(2, 40, 40)))
    m = run(
        load(
            DownloadConfig,
            "download",
            {
                "base": {"crop": 32, "scale": 2},
                "download": {
                    "source": "folder",
                    "folder": "photos",
                    "valid_fraction": 0,
                    "test_fraction": 0,
                },
            },
        )
    )
    assert m["images"] == 1 and m["candidates"] == 2
    assert m["skipped_files"] == {
        "caf%E9.jpg (not UTF-8)": "bad file name: not UTF-8, and caf%E9.jpg exists"
    }
    assert [r["source"] for r in manifest(Path("data/hr/manifest.csv"))] == ["folder:caf%E9.jpg"]
    assert NON_UTF8.startswith(b"caf\xe9")


def test_photos_smaller_than_a_training_crop_are_left_out_and_named(tmp_path, caplog):
    """The critic may crop larger than base.crop too (pretrain_critic.crop): a batch of crops of
    one size, the small photo named, not a crash in the middle of training."""
    import cv2

    from pipelines.core.errors import StageError
    from pipelines.datasets.pairs import CriticPairs, step_loader

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    cv2.imwrite(str(big), fault_kit._bgr(fault_kit._photo(1, 64, 72)))
    cv2.imwrite(str(small), fault_kit._bgr(fault_kit._photo(2, 40, 44)))
    with caplog.at_level("WARNING"):
        pairs = CriticPairs([big, small], [big, small], 48, seed=1)
    assert pairs.real_files == [big] and pairs.fake_files == [big]
    assert (
        "1 of 2 training images are smaller than the 48 px crop and are left out: small.png (44x40)"
    ) in caplog.text
    fake, real = next(iter(step_loader(pairs, 0, 1, 4, 0)))
    assert fake.shape == real.shape == (4, 3, 48, 48)
    with pytest.raises(StageError, match="none of the 2 training images is at least 80 px"):
        CriticPairs([big, small], [big, small], 80, seed=1)

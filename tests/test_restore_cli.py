"""`decrappify restore` and the restoration flow on tiny images with a real (small) generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.cli import main
from pipelines.imaging.images import encode_png, read_rgb, write_image
from pipelines.imaging.resize import upscale
from pipelines.imaging.visualize import GAP
from pipelines.inference.restore import load_generator, restore
from pipelines.inference.restore_files import COMPARE_MAX_SIDE, comparison
from pipelines.networks import build_generator
from pipelines.training import checkpoint

SCALE = 2


def photo(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 80 * np.sin(x / 4), y * 255 / h, (x + y) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_generator(encoder="resnet18", scale=SCALE, hr_channels=8)
    # The residual head starts at zero (the network is then bicubic): make it do something.
    torch.nn.init.normal_(model.to_residual.weight, std=0.05)
    path = tmp_path_factory.mktemp("models") / "generator.pt"
    checkpoint.save(path, checkpoint.model_payload("generator", model.arch, model))
    return path


@pytest.fixture(scope="module")
def generator(generator_file):
    return load_generator(generator_file, "cpu")


@pytest.fixture
def folder(tmp_path):
    """Two good images (one in a subfolder) and three bad ones, plus a file that is no image."""
    root = tmp_path / "photos"
    write_image(root / "good.png", photo(seed=1))
    write_image(root / "sub" / "other.jpg", photo(34, 44, seed=2), jpeg_quality=90)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("a shopping list, not a picture\n")
    png = encode_png(photo(seed=3))
    (root / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "readme.txt").write_text("ignored: not an image suffix\n")
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["restore", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_one_file_is_restored_as_the_generator_restores_it(
    tmp_path, capsys, generator_file, generator
):
    src = tmp_path / "in" / "a.jpg"
    write_image(src, photo(), jpeg_quality=80)
    # tile 16 on a 40x30 image: the tiled, blended path
    code, out, err = run(
        capsys,
        src,
        "--out",
        tmp_path / "out",
        "--model",
        generator_file,
        "--tile",
        16,
        "--overlap",
        4,
        "--device",
        "cpu",
    )
    assert code == 0, err
    restored = read_rgb(tmp_path / "out" / "a_restored.png")
    assert restored.shape == (30 * SCALE, 40 * SCALE, 3)
    np.testing.assert_array_equal(restored, restore(generator, read_rgb(src), 16, 4))
    assert "restored 1, failed 0" in out and "images/s" in out
    assert err == ""


def test_self_ensemble_restores_as_the_generator_averaged_over_flips_and_turns(
    tmp_path, capsys, generator_file, generator
):
    src = tmp_path / "in" / "a.png"
    write_image(src, photo())
    out = tmp_path / "out"
    argv = [src, "--out", out, "--model", generator_file, "--tile", 16, "--overlap", 4]
    code, _, err = run(capsys, *argv, "--self-ensemble", "--suffix", "_x8")
    assert code == 0, err
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    ensembled = read_rgb(out / "a_x8.png")
    np.testing.assert_array_equal(
        ensembled, restore(generator, read_rgb(src), 16, 4, self_ensemble=True)
    )
    assert np.abs(ensembled.astype(int) - read_rgb(out / "a_restored.png")).max() > 0


def test_folder_restores_the_good_images_and_names_each_bad_one(
    tmp_path, capsys, folder, generator_file
):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, folder, "--out", out_dir, "--model", generator_file)
    assert code == 1
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.png"))
    assert written == ["good_restored.png", "sub/other_restored.png"]
    assert read_rgb(out_dir / "sub" / "other_restored.png").shape == (34 * SCALE, 44 * SCALE, 3)
    lines = err.strip().splitlines()
    assert sorted(lines) == sorted(
        [
            f"{folder / 'cut.png'}: truncated",
            f"{folder / 'empty.png'}: empty file",
            f"{folder / 'notes.jpg'}: not an image",
        ]
    )
    assert "restored 2, failed 3" in out


def test_glob_patterns_select_files_and_keep_the_path_below_the_pattern(
    tmp_path, capsys, folder, generator_file
):
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys,
        str(folder / "**" / "*.jpg"),
        str(folder / "good.*"),
        "--out",
        out_dir,
        "--model",
        generator_file,
        "--suffix",
        "",
    )
    assert code == 1  # notes.jpg matches and is no image
    assert err.strip() == f"{folder / 'notes.jpg'}: not an image"
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.png"))
    assert written == ["good.png", "sub/other.png"]
    code, _, err = run(capsys, str(folder / "*.bmp"), "--out", out_dir, "--model", generator_file)
    assert code == 1 and "no image file matches this pattern" in err


def test_compare_puts_the_enlarged_input_beside_the_restoration(tmp_path, capsys, generator_file):
    src = tmp_path / "a.png"
    lr = photo()
    write_image(src, lr)
    code, _, err = run(
        capsys, src, "--out", tmp_path / "out", "--model", generator_file, "--compare"
    )
    assert code == 0, err
    restored = read_rgb(tmp_path / "out" / "a_restored.png")
    pair = read_rgb(tmp_path / "out" / "a_restored_compare.png")
    h, w = restored.shape[:2]
    assert pair.shape[1] == 2 * w + 3 * GAP and pair.shape[0] > h
    top = pair.shape[0] - 2 * GAP - h  # under the label strip, GAP above the bottom
    np.testing.assert_array_equal(pair[top : top + h, GAP : GAP + w], upscale(lr, SCALE, "nearest"))
    np.testing.assert_array_equal(pair[top : top + h, 2 * GAP + w : 2 * GAP + 2 * w], restored)


def test_a_large_comparison_is_downscaled():
    lr, hr = np.zeros((10, 2048, 3), np.uint8), np.zeros((20, 4096, 3), np.uint8)
    pair = comparison(lr, hr)
    assert pair.shape[1] == 2 * COMPARE_MAX_SIDE + 3 * GAP


def test_outputs_inside_an_input_folder_are_not_restored_again(tmp_path, capsys, generator_file):
    src = tmp_path / "photos"
    write_image(src / "a.png", photo())
    for _ in range(2):
        code, out, _ = run(capsys, src, "--out", src / "restored", "--model", generator_file)
        assert code == 0 and "restored 1, failed 0" in out
    assert [p.name for p in (src / "restored").iterdir()] == ["a_restored.png"]


def test_two_inputs_for_one_output_name_are_refused(tmp_path, capsys, generator_file):
    write_image(tmp_path / "in" / "a.png", photo())
    write_image(tmp_path / "in" / "a.jpg", photo())
    code, out, err = run(
        capsys, tmp_path / "in", "--out", tmp_path / "out", "--model", generator_file
    )
    assert code == 1 and "restored 1, failed 1" in out
    assert (
        err.strip()
        == f"{tmp_path / 'in' / 'a.png'}: same output name as {tmp_path / 'in' / 'a.jpg'}"
    )


def test_missing_inputs_are_reported(tmp_path, capsys, generator_file):
    write_image(tmp_path / "a.png", photo())
    (tmp_path / "empty").mkdir()
    code, out, err = run(
        capsys,
        tmp_path / "a.png",
        tmp_path / "nope.png",
        tmp_path / "empty",
        "--out",
        tmp_path / "out",
        "--model",
        generator_file,
    )
    assert code == 1 and "restored 1, failed 2" in out
    assert f"{tmp_path / 'nope.png'}: no such file or folder" in err
    assert f"{tmp_path / 'empty'}: no images in this folder" in err


def test_a_missing_model_says_how_to_make_one_and_writes_nothing(tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "a.png", photo())
    monkeypatch.setenv("DECRAPPIFY_ROOT", str(tmp_path))  # a repository without models/
    code, out, err = run(capsys, tmp_path / "a.png", "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert str(tmp_path / "models" / "gan_generator.pt") in err
    assert "dvc repro train_gan" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(
        capsys, tmp_path / "a.png", "--out", tmp_path / "out", "--model", tmp_path / "other.pt"
    )
    assert code == 2 and f"{tmp_path / 'other.pt'}: model file not found" in err
    assert not (tmp_path / "out").exists()


def test_an_unusable_model_file_is_one_clear_error(tmp_path, capsys):
    write_image(tmp_path / "a.png", photo())
    (tmp_path / "model.pt").write_text("not a checkpoint")
    code, _, err = run(
        capsys, tmp_path / "a.png", "--out", tmp_path / "out", "--model", tmp_path / "model.pt"
    )
    assert code == 2 and "refused or unreadable checkpoint" in err


@pytest.mark.parametrize("out", ["taken", "taken/sub"])
def test_an_unwritable_output_folder_stops_before_any_image(tmp_path, capsys, generator_file, out):
    # Tests run as root, for whom permissions do not stop writes: a file where the folder
    # should be does.
    write_image(tmp_path / "in" / "a.png", photo())
    (tmp_path / "taken").write_text("keep me")
    before = sorted(tmp_path.rglob("*"))
    code, stdout, err = run(
        capsys, tmp_path / "in", "--out", tmp_path / out, "--model", generator_file
    )
    assert code == 2 and stdout == ""
    assert err.startswith(f"decrappify restore: error: {tmp_path / out}: ")
    assert len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before
    assert (tmp_path / "taken").read_text() == "keep me"


def test_bad_tiling_is_refused(tmp_path, capsys, generator_file):
    code, _, err = run(
        capsys,
        tmp_path,
        "--out",
        tmp_path / "out",
        "--model",
        generator_file,
        "--tile",
        32,
        "--overlap",
        20,
    )
    assert code == 2 and "--overlap 20" in err


def test_the_flow_restores_with_one_task_per_image(prefect_api, tmp_path, folder, generator_file):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.restoration import restoration

    state = restoration(
        inputs=[str(folder)],
        out=str(tmp_path / "out"),
        model=str(generator_file),
        compare=True,
        return_state=True,
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert sorted(summary["restored"]) == [
        str(folder / "good.png"),
        str(folder / "sub" / "other.jpg"),
    ]
    assert summary["failed"] == {
        str(folder / "cut.png"): "truncated",
        str(folder / "empty.png"): "empty file",
        str(folder / "notes.jpg"): "not an image",
    }
    assert (tmp_path / "out" / "sub" / "other_restored_compare.png").is_file()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    assert sorted(r.name for r in runs) == sorted(
        f"restore {n}" for n in ("cut.png", "empty.png", "good.png", "notes.jpg", "other.jpg")
    )
    assert all(r.state.is_completed() for r in runs)

    state = restoration(
        inputs=[str(folder)],
        out=str(folder / "good.png"),
        model=str(generator_file),
        return_state=True,
    )
    assert state.is_failed() and "output folder is an existing file" in state.message

"""Exports a generator to safetensors and ONNX, restoring with them, the MLflow ONNX model,
and the files export and restore refuse. Tiny networks (resnet18, 8 HR channels) on small
images; each export is made once per module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from flows.cli import main
from pipelines.core.config import load
from pipelines.exporting import metadata, onnx_file, safetensors_file
from pipelines.exporting.exports import ExportSettings, export_generator, load_source
from pipelines.exporting.metadata import ExportError
from pipelines.imaging.images import read_rgb, write_image
from pipelines.inference.restore import load_generator, restore
from pipelines.networks import build_generator
from pipelines.training import checkpoint
from pipelines.training.checkpoint import plain_copy

SCALE = 2
ODD_SIZES = [(29, 61), (50, 35)]
PARAMS = {
    "base": {"scale": SCALE},
    "crappify": {
        "jpeg_quality": [10, 70],
        "watermark": "quality",
        "watermark_height": [0.08, 0.16],
        "watermark_opacity": [1.0, 1.0],
        "blur_prob": 0.5,
        "blur_sigma": [0.5, 1.5],
        "resample": "area",
    },
    "pretrain_generator": {"loss": "l1"},
    "train_gan": {"steps": 4},
    "evaluate": {"tile": 64},
}
EVALUATION = {
    "test": {
        "images": 2,
        "bicubic": {"psnr_y": 25.0, "ssim": 0.7},
        "gan_generator": {"psnr_y": 26.5, "ssim": 0.75},
        "gain_db": {"gan_generator": 1.5},
    }
}


def photo(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 80 * np.sin(x / 4), y * 255 / h, (x + y) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def tiny_generator(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_generator(encoder="resnet18", scale=SCALE, hr_channels=8)
    # The residual head starts at zero (the network is then bicubic): make it do something.
    torch.nn.init.normal_(model.to_residual.weight, std=0.05)
    return model.eval()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository root with params, a dvc.lock recording data/hr, an evaluation and a model."""
    root = tmp_path_factory.mktemp("repo")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (root / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "download": {
                        "cmd": "python -m pipelines.download",
                        "outs": [
                            {"path": "data/hr", "md5": "0123456789abcdef0123456789abcdef.dir"}
                        ],
                    }
                },
            }
        )
    )
    (root / "metrics").mkdir()
    (root / "metrics" / "evaluate.json").write_text(json.dumps(EVALUATION))
    model = tiny_generator()
    path = root / "models" / "gan_generator.pt"
    path.parent.mkdir()
    checkpoint.save(path, checkpoint.model_payload("generator", model.arch, model))
    return root


@pytest.fixture(scope="module")
def exported(repo):
    """``decrappify export`` of the repository's generator: (output folder, CLI exit code)."""
    out = repo / "export"
    code = main(
        [
            "export",
            "--model",
            str(repo / "models" / "gan_generator.pt"),
            "--out",
            str(out),
            "--root",
            str(repo),
        ]
    )
    return out, code


def test_export_writes_the_weights_the_graph_and_the_card(exported):
    out, code = exported
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "gan_generator.card.json",
        "gan_generator.md",
        "gan_generator.onnx",
        "gan_generator.safetensors",
    ]
    card = json.loads((out / "gan_generator.card.json").read_text())
    assert card["scale"] == SCALE and card["task"] == "restore"
    assert "JPEG compression, quality 10-70" in card["trained_on"]
    assert any(d.startswith("Gaussian blur with probability 0.5") for d in card["trained_on"])
    assert card["evaluation"] == EVALUATION and card["parity"]["onnx_max_abs_diff"] <= 1e-3
    text = (out / "gan_generator.md").read_text()
    assert "| **gan_generator** (this model) | 26.5 | 0.75 | +1.500 |" in text
    assert "chaiNNer" in text and 'ort.InferenceSession("gan_generator.onnx"' in text


def test_onnx_matches_pytorch_on_two_odd_sizes(exported, repo):
    out, code = exported
    assert code == 0
    session = ort.InferenceSession(
        str(out / "gan_generator.onnx"), providers=["CPUExecutionProvider"]
    )
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(float)" and inp.shape[1] == 3 and outp.shape[1] == 3
    assert all(isinstance(d, str) for d in (inp.shape[2], inp.shape[3]))  # dynamic H and W
    net = load_generator(repo / "models" / "gan_generator.pt")
    rng = np.random.default_rng(1)
    for h, w in [(37, 45), (23, 71)]:
        x = rng.random((1, 3, h, w), dtype=np.float32)
        got = session.run(None, {inp.name: x})[0]
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        assert got.shape == (1, 3, h * SCALE, w * SCALE)
        assert np.abs(got - expected).max() <= 1e-3


def test_onnx_graph_pads_inputs_below_the_networks_smallest_size(exported):
    out, _ = exported
    session = ort.InferenceSession(
        str(out / "gan_generator.onnx"), providers=["CPUExecutionProvider"]
    )
    y = session.run(None, {"input": np.full((1, 3, 5, 9), 0.5, np.float32)})[0]
    assert y.shape == (1, 3, 10, 18) and np.isfinite(y).all() and 0 <= y.min() <= y.max() <= 1


def test_safetensors_export_round_trip_with_metadata(exported, repo):
    out, code = exported
    assert code == 0
    state, meta = safetensors_file.read(out / "gan_generator.safetensors")
    original = plain_copy(load_generator(repo / "models" / "gan_generator.pt")).state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], original[k]) for k in state)
    assert meta["scale"] == SCALE and meta["task"] == "restore"
    assert meta["arch"] == tiny_generator().arch
    assert meta["data_md5"] == "0123456789abcdef0123456789abcdef.dir"
    assert meta["git_commit"] == "unknown"  # the scratch repository is not a git checkout
    assert meta["params"]["crappify"] == PARAMS["crappify"]
    assert meta["params"]["base"] == {"scale": SCALE} and "evaluate" not in meta["params"]
    assert meta["source"].startswith("gan_generator.pt sha256:")
    # The ONNX graph carries the same metadata.
    props = {p.key: p.value for p in onnx.load(str(out / "gan_generator.onnx")).metadata_props}
    assert metadata.parse(props, "onnx")["arch"] == meta["arch"]
    # An export of the safetensors file is the same network again.
    again = load_source(str(out / "gan_generator.safetensors"))
    assert again.params == meta["params"]


def test_restore_with_onnx_safetensors_and_checkpoint_agree(exported, repo, tmp_path, capsys):
    assert exported[1] == 0
    src = tmp_path / "in" / "a.png"
    write_image(src, photo(45, 70))
    results = {}
    for model in (
        "models/gan_generator.pt",
        "export/gan_generator.safetensors",
        "export/gan_generator.onnx",
    ):
        dest = tmp_path / Path(model).suffix[1:]
        # tile 32 on a 70x45 image: the tiled, blended path
        code = main(
            [
                "restore",
                str(src),
                "--out",
                str(dest),
                "--model",
                str(repo / model),
                "--tile",
                "32",
                "--overlap",
                "8",
                "--device",
                "cpu",
            ]
        )
        assert code == 0, capsys.readouterr().err
        results[model] = read_rgb(dest / "a_restored.png").astype(int)
    reference = results.pop("models/gan_generator.pt")
    assert reference.shape == (90, 140, 3)
    for model, result in results.items():
        assert np.abs(result - reference).max() <= 1, model


def test_onnx_runner_restores_as_pytorch_without_torch_in_the_loop(exported, repo):
    out, _ = exported
    runner = onnx_file.OnnxRunner(out / "gan_generator.onnx")
    assert not isinstance(runner, torch.nn.Module) and runner.scale == SCALE
    lr = photo(33, 50, seed=4)
    tile = runner(lr)
    assert tile.dtype == np.float32 and tile.shape == (66, 100, 3)
    net = load_generator(repo / "models" / "gan_generator.pt")
    diff = np.abs(restore(runner, lr, 24, 8).astype(int) - restore(net, lr, 24, 8)).max()
    assert diff <= 1


def test_export_that_differs_from_pytorch_is_never_written(repo, tmp_path):
    source = load_source(str(repo / "models" / "gan_generator.pt"))
    # float32 rounding differs by ~1e-7 between the two runtimes: a zero tolerance fails
    with pytest.raises(ExportError, match="differs from PyTorch by .* not written"):
        export_generator(
            source,
            tmp_path / "out",
            root=repo,
            settings=ExportSettings(check_sizes=((29, 61),), tolerance=1e-12),
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "pickled", "critic"])
def test_export_of_a_bad_checkpoint_names_the_file_and_writes_nothing(kind, tmp_path, capsys):
    path = tmp_path / "model.pt"
    if kind == "corrupt":
        good = tmp_path / "good.pt"
        model = tiny_generator()
        checkpoint.save(good, checkpoint.model_payload("generator", model.arch, model))
        path.write_bytes(good.read_bytes()[:1000])
    elif kind == "pickled":
        # a whole module is saved by pickling its class: loading it could run any code
        torch.save(
            {
                "format": checkpoint.FORMAT_VERSION,
                "kind": "generator",
                "model": torch.nn.Linear(2, 2),
            },
            path,
        )
    elif kind == "critic":
        checkpoint.save(path, {"kind": "critic", "arch": {}, "model": {}})
    out = tmp_path / "out"
    code = main(["export", "--model", str(path), "--out", str(out), "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"decrappify export: error: cannot export: {path}: " in err
    assert {
        "missing": "not found",
        "corrupt": "unreadable",
        "pickled": "refused",
        "critic": "expected a 'generator'",
    }[kind] in err
    assert "nothing written" in err and not out.exists()


def foreign_onnx(path: Path, shape: list, meta: dict | None = None) -> Path:
    """A valid ONNX graph (identity) with input ``shape`` and optional metadata."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta:
        helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("rank", "it has input of rank 3"),
        ("channels", "it has input with 1 channels"),
        ("metadata", "metadata lacks decrappify.format, task, scale, arch"),
        ("not onnx", "not a loadable ONNX model"),
        ("safetensors without metadata", "metadata lacks decrappify.format, task, scale, arch"),
        ("not safetensors", "not a readable safetensors file"),
    ],
)
def test_restore_refuses_exports_that_are_not_ours(case, expected, tmp_path, capsys):
    if case == "rank":
        model = foreign_onnx(tmp_path / "m.onnx", ["h", "w", 3])
    elif case == "channels":
        model = foreign_onnx(tmp_path / "m.onnx", [1, 1, "h", "w"])
    elif case == "metadata":
        model = foreign_onnx(tmp_path / "m.onnx", [1, 3, "h", "w"], {"author": "someone"})
    elif case == "not onnx":
        model = tmp_path / "m.onnx"
        model.write_text("not a graph")
    elif case == "safetensors without metadata":
        from safetensors.torch import save_file

        model = tmp_path / "m.safetensors"
        save_file({"w": torch.zeros(2)}, str(model))
    else:
        model = tmp_path / "m.safetensors"
        model.write_bytes(b"\x00" * 64)
    src = tmp_path / "a.png"
    write_image(src, photo())
    code = main(["restore", str(src), "--out", str(tmp_path / "out"), "--model", str(model)])
    err = capsys.readouterr().err
    assert code == 2 and f"decrappify restore: error: {model}: " in err and expected in err
    if case in ("rank", "channels"):
        assert "expected one float32 input of shape N x 3 x H x W" in err
    assert not (tmp_path / "out").exists()


def test_export_stage_writes_the_exports_and_their_metrics(repo, tmp_path, monkeypatch):
    from pipelines.export import ExportConfig, run

    monkeypatch.chdir(repo)
    monkeypatch.setenv("DECRAPPIFY_ROOT", str(repo))
    params = {
        **PARAMS,
        "base": {
            "scale": SCALE,
            "crop": 32,
            "paths": {"models": "models", "metrics": str(tmp_path)},
        },
        "export": {"check_sizes": [[21, 27]], "fp16": True},
    }
    metrics = run(load(ExportConfig, "export", params), params_file=repo / "params.yaml")
    files = sorted(p.name for p in (repo / "models" / "export").iterdir())
    assert files == [
        "gan_generator.card.json",
        "gan_generator.fp16.onnx",
        "gan_generator.md",
        "gan_generator.onnx",
        "gan_generator.safetensors",
    ]
    assert metrics["onnx_max_abs_diff"] <= 1e-3 and metrics["fp16_max_abs_diff"] <= 2e-3
    assert json.loads((tmp_path / "export.json").read_text()) == metrics
    # the evaluate.json of the stage's metrics folder is absent here: the card says so
    card = json.loads((repo / "models" / "export" / "gan_generator.card.json").read_text())
    assert card["evaluation"] is None
    fp16 = onnx_file.OnnxRunner(repo / "models" / "export" / "gan_generator.fp16.onnx")
    assert fp16.meta["precision"] == "fp16" and fp16(photo(20, 24)).shape == (40, 48, 3)


# -- MLflow -------------------------------------------------------------------------------
CLEAN_PREDICT = textwrap.dedent("""
    import importlib.util, json, sys
    # Not this project: neither the worktree, nor its editable install.
    sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                     and "editable" not in repr(f).lower()]
    for name in ("pipelines", "flows", "tasks"):
        assert importlib.util.find_spec(name) is None, f"{name} is importable"
    import mlflow.pyfunc
    import numpy as np
    model = mlflow.pyfunc.load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    y = model.predict(x)["output"]
    np.save(sys.argv[3], y)
    inputs = model.metadata.get_input_schema().inputs[0]
    print(json.dumps({"shape": list(inputs.shape), "type": str(inputs.type)}))
    assert "pipelines" not in sys.modules and "torch" not in sys.modules
""")


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_mlflow_onnx_model_predicts_in_a_process_without_the_project(store, tmp_path):
    from pipelines.running.tracking import Tracker

    model = tiny_generator(seed=3)
    with Tracker("train_gan", experiment="t") as tracker:
        info = tracker.log_model(model, "gan_generator", registered_model_name="t-gen")
    assert info is not None and tracker.failed_calls == 0
    x = np.random.default_rng(2).random((1, 3, 27, 35), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "predict.py"
    script.write_text(CLEAN_PREDICT)
    clean = tmp_path / "elsewhere"
    clean.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DECRAPPIFY_ROOT")}
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            "models:/t-gen/1",
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        cwd=clean,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    schema = json.loads(proc.stdout.strip().splitlines()[-1])
    assert schema == {"shape": [-1, 3, -1, -1], "type": "float32"}
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = np.load(tmp_path / "y.npy")
    assert got.shape == (1, 3, 54, 70) and np.abs(got - expected).max() <= 1e-3
    # the example and the weights are stored with the model; no pickle anywhere in it
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts("models:/t-gen/1"))
    names = {p.name for p in local.rglob("*")}
    assert "model.onnx" in names and "gan_generator.safetensors" in names
    assert any(n.startswith(("input_example", "serving_input")) for n in names)
    assert not any(n.endswith((".pkl", ".pt", ".pth")) for n in names)


def test_restore_and_export_take_the_mlflow_model(store, tmp_path, capsys, monkeypatch):
    from pipelines.running.tracking import Tracker

    monkeypatch.setenv("DECRAPPIFY_ROOT", str(tmp_path))
    model = tiny_generator(seed=5)
    with Tracker("train_gan", experiment="t") as tracker:
        tracker.log_model(model, "gan_generator", registered_model_name="t-gen")
    src = tmp_path / "a.png"
    write_image(src, photo())
    code = main(["restore", str(src), "--out", str(tmp_path / "out"), "--model", "models:/t-gen/1"])
    assert code == 0, capsys.readouterr().err
    restored = read_rgb(tmp_path / "out" / "a_restored.png").astype(int)
    assert np.abs(restored - restore(model, photo())).max() <= 1
    code = main(
        [
            "export",
            "--model",
            "models:/t-gen/1",
            "--out",
            str(tmp_path / "exp"),
            "--root",
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    again = safetensors_file.load_generator(tmp_path / "exp" / "gan_generator.safetensors")
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)

"""The EMA of the generator weights: the average itself, and exact resume of a stage using it."""

import shutil

import pytest
import torch

from pipelines.core.config import load
from pipelines.networks import build_generator
from pipelines.training import checkpoint
from pipelines.training.ema import ModelEMA
from pipelines.training.loop import RollingCheckpoint


def small():
    return build_generator(kind="srresnet", scale=2, channels=4, blocks=1)


def test_update_is_the_moving_average_with_the_warm_up_cap():
    torch.manual_seed(0)
    model = small()
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # first update: decay capped at 1/10
    for k, v in ema.model.state_dict().items():
        assert torch.allclose(v, 0.1 * start[k] + 0.9 * (start[k] + 1.0), atol=1e-6), k
    ema.updates = 1000
    assert ema.current_decay() == 0.9
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_state_round_trip_and_bad_decay():
    torch.manual_seed(0)
    model = small()
    ema = ModelEMA(model, decay=0.99)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    ema.update(model)
    other = ModelEMA(small(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    for k, v in ema.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[k], v)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)


def test_unet_average_keeps_its_parametrizations():
    model = build_generator(encoder="resnet18", scale=2, hr_channels=8)
    ema = ModelEMA(model, decay=0.5)
    assert ema.model.state_dict().keys() == model.state_dict().keys()
    ema.update(model)


TINY = {
    "base": {"seed": 3, "device": "cpu", "scale": 2, "crop": 32},
    "download": {"source": "sample", "max_images": 6, "valid_fraction": 0.2, "test_fraction": 0.2},
    "crappify": {"workers": 1},
    "pretrain_generator": {
        "model": {"kind": "srresnet", "channels": 8, "blocks": 2},
        "phases": [
            {"steps": 4, "batch_size": 2, "lr": 0.001},
            {"steps": 4, "batch_size": 2, "lr": 0.0005, "crop": 48},
        ],
        "ema": 0.9,
        "valid_crop": 48,
        "eval_every": 3,
        "checkpoint_every": 2,
        "sample_every": 0,
    },
}


def _stage(name: str):
    import importlib

    module = importlib.import_module(f"pipelines.{name}")
    cls = next(
        v
        for k, v in vars(module).items()
        if k.endswith("Config") and k.lower() == name.replace("_", "") + "config"
    )
    return module.run(load(cls, name, TINY))


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ema-data")
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    try:
        _stage("download")
        _stage("crappify")
    finally:
        mp.undo()
    return folder


@pytest.mark.parametrize("crash_at", [2, 6])  # mid first phase; mid second phase
def test_resume_equals_uninterrupted_bitwise(data_dir, tmp_path, monkeypatch, crash_at):
    models = {}
    for name in ("straight", "resumed"):
        work = tmp_path / name
        shutil.copytree(data_dir / "data", work / "data")
        monkeypatch.chdir(work)
        if name == "resumed":
            save = RollingCheckpoint.save

            def crash_after(self, step, save=save, **state):
                save(self, step, **state)
                if step == crash_at:
                    raise Crash

            monkeypatch.setattr(RollingCheckpoint, "save", crash_after)
            with pytest.raises(Crash):
                _stage("pretrain_generator")
            assert not (work / "models/generator.pt").exists()
            saved = checkpoint.load(work / "checkpoints/pretrain_generator/last.pt")
            assert saved["step"] == crash_at and saved["ema"]["updates"] == crash_at
            monkeypatch.setattr(RollingCheckpoint, "save", save)
        metrics = _stage("pretrain_generator")
        assert metrics["steps"] == 8
        models[name] = checkpoint.load(work / "models/generator.pt")
        last = checkpoint.load(work / "checkpoints/pretrain_generator/last.pt")
        # the saved model is the average, not the last weights
        assert any(not torch.equal(last["model"][k], v) for k, v in models[name]["model"].items())
        assert last["ema"]["updates"] == 8
    assert models["straight"]["arch"] == models["resumed"]["arch"]
    for key, value in models["straight"]["model"].items():
        assert torch.equal(value, models["resumed"]["model"][key]), key


def test_gan_phase_average_starts_at_the_pretrained_weights_and_follows_each_generator_step():
    from pipelines.networks import build_critic
    from pipelines.scoring.losses import build_content_loss
    from pipelines.training.gan import Gan
    from pipelines.training.loop import adamw

    torch.manual_seed(0)
    gen, critic = small(), build_critic(nf=8, n_blocks=1)
    start = {k: v.clone() for k, v in gen.state_dict().items()}
    gan = Gan(
        gen,
        critic,
        adamw(gen.parameters(), lr=1e-2),
        adamw(critic.parameters(), lr=1e-2),
        build_content_loss("l1"),
        ema=ModelEMA(gen, decay=0.75, warmup=False),
    )
    assert gan.kept is gan.ema.model
    lr_img, hr_img = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    gan.generator_step(lr_img, hr_img)
    trained = gen.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in start.items())
    # no warm-up cap: the first update already averages at the decay, from the pretrained weights
    for k, v in gan.kept.state_dict().items():
        assert torch.allclose(v, 0.75 * start[k] + 0.25 * trained[k], atol=1e-6), k
    state = gan.state()
    assert state["ema"]["updates"] == 1
    without = Gan(gen, critic, gan.opt_g, gan.opt_d, gan.content)
    assert without.kept is gen and "ema" not in without.state()

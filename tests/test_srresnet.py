"""The residual generator at the input resolution: sizes, contract, arch, restore."""

import numpy as np
import pytest
import torch

from pipelines.core.config import ConfigError, load
from pipelines.imaging.resize import bicubic_upscale
from pipelines.inference.restore import load_generator, restore
from pipelines.networks import (
    SRResNetGenerator,
    build_generator,
    freeze_encoder,
    param_groups,
)
from pipelines.networks.unet import upsample
from pipelines.pretrain_generator import PretrainGeneratorConfig
from pipelines.training import checkpoint


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small(**kw) -> SRResNetGenerator:
    return build_generator(**{"kind": "srresnet", "channels": 8, "blocks": 2, **kw})


def trained_like(model: SRResNetGenerator) -> SRResNetGenerator:
    """Random weights in the last conv too, so the output is not just bicubic."""
    torch.nn.init.normal_(model.to_rgb.weight, std=0.05)
    return model


each_upsampler = pytest.mark.parametrize("upsampler", ["staged", "direct"])


@each_upsampler
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_output_size_for_odd_inputs(scale, upsampler):
    model = small(scale=scale, upsampler=upsampler).eval()
    with torch.no_grad():
        for h, w in [(37, 29), (1, 5), (16, 16)]:
            assert model(torch.rand(2, 3, h, w)).shape == (2, 3, h * scale, w * scale)


def test_default_size_is_the_edsr_baseline():
    model = build_generator(kind="srresnet", scale=4)
    assert 1.4e6 < sum(p.numel() for p in model.parameters()) < 1.6e6
    assert len(model.body) == 16


@each_upsampler
def test_untrained_network_is_bicubic_upsampling(upsampler):
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        out = small(scale=4, upsampler=upsampler)(x)
    assert torch.allclose(out, upsample(x, 4).clamp(0, 1), atol=1e-6)


def test_the_direct_upsampler_has_no_convs_above_the_input_size():
    staged, direct = small(scale=4, channels=16), small(scale=4, channels=16, upsampler="direct")
    assert len(staged.up) == 6 and len(direct.up) == 0
    assert direct.to_rgb.out_channels == 3 * 16
    assert isinstance(direct.shuffle, torch.nn.PixelShuffle)
    assert "upsampler" not in staged.arch and direct.arch["upsampler"] == "direct"
    # a trained-like direct network is not bicubic: its shuffle places the conv's channels
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert not torch.allclose(trained_like(direct)(x), upsample(x, 4).clamp(0, 1))


def test_output_stays_in_range_and_the_clamp_passes_gradients():
    model = trained_like(small(scale=2))
    with torch.no_grad():
        model.to_rgb.bias.fill_(2.0)  # every pixel overshoots 1
    x = torch.rand(1, 3, 12, 12)
    y = model(x)
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(y, torch.ones_like(y))
    # a plain clamp would give zero gradient here; the pull back towards the target survives
    (y - 0.5).abs().mean().backward()
    assert model.to_rgb.bias.grad.abs().min() > 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="scale"):
        small(scale=3)
    with pytest.raises(ValueError, match="channels"):
        small(channels=2)
    with pytest.raises(ValueError, match="kind"):
        build_generator(kind="transformer")
    with pytest.raises(ValueError, match="upsampler: 'nearest' is not one of staged, direct"):
        small(upsampler="nearest")


@each_upsampler
def test_arch_rebuilds_the_network_and_a_model_file_loads(tmp_path, upsampler):
    model = trained_like(small(scale=4, upsampler=upsampler))
    assert model.arch["kind"] == "srresnet"
    path = tmp_path / "generator.pt"
    checkpoint.save(path, checkpoint.model_payload("generator", model.arch, model))
    loaded = load_generator(path)
    assert isinstance(loaded, SRResNetGenerator)
    x = torch.rand(1, 3, 10, 14)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
        # the copy MLflow pickles is rebuilt from arch too
        assert torch.equal(checkpoint.plain_copy(model)(x), loaded(x))


def test_one_parameter_group_for_the_learning_rate_and_no_encoder_to_freeze():
    model = small()
    groups = param_groups(model)
    assert [len(g) for g in groups[:2]] == [0, 0]
    assert len(groups[2]) == len(list(model.parameters()))
    freeze_encoder(model, False)  # unfreezing is a no-op
    with pytest.raises(ValueError, match="no encoder"):
        freeze_encoder(model, True)


@each_upsampler
@pytest.mark.parametrize("h, w", [(37, 101), (9, 7)])
def test_restore_odd_sizes_single_pass_and_tiled(h, w, upsampler):
    model = trained_like(small(scale=2, blocks=1, upsampler=upsampler)).eval()
    lr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    whole = restore(model, lr, tile=64, overlap=16)
    assert whole.shape == (h * 2, w * 2, 3) and whole.dtype == np.uint8
    assert not np.array_equal(whole, bicubic_upscale(lr, 2))
    # receptive radius at most 5.5 LR px (staged: 5 convs at LR size, one at HR; direct: 4 at
    # LR) fits in the tiles' zero margin (overlap / 4 = 6): tiled equals a single pass up to
    # rounding
    tiled = restore(model, lr, tile=48, overlap=24)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_config_builds_the_arch_and_refuses_a_frozen_phase():
    params = {
        "base": {"scale": 2, "crop": 32},
        "crappify": {},
        "pretrain_generator": {"model": {"kind": "srresnet", "channels": 16, "blocks": 3}},
    }
    cfg = load(PretrainGeneratorConfig, "pretrain_generator", params)
    assert cfg.model.arch(2) == {"kind": "srresnet", "scale": 2, "channels": 16, "blocks": 3}
    assert isinstance(build_generator(**cfg.model.arch(2)), SRResNetGenerator)
    unet = load(
        PretrainGeneratorConfig, "pretrain_generator", {**params, "pretrain_generator": {}}
    ).model.arch(2)
    assert "kind" not in unet and unet["encoder"] == "resnet18"
    params["pretrain_generator"]["model"]["upsampler"] = "direct"
    direct = load(PretrainGeneratorConfig, "pretrain_generator", params).model.arch(2)
    assert direct["upsampler"] == "direct" and "upsampler" not in unet
    params["pretrain_generator"]["model"]["upsampler"] = "staged"
    params["pretrain_generator"]["phases"] = [{"steps": 2, "frozen": True}]
    with pytest.raises(ConfigError, match="frozen"):
        load(PretrainGeneratorConfig, "pretrain_generator", params)
    params["pretrain_generator"].update(phases=[{"steps": 2}], clean_resample=["box"])
    with pytest.raises(ConfigError, match="clean_resample"):
        load(PretrainGeneratorConfig, "pretrain_generator", params)


@pytest.mark.parametrize("cell", [2, 4])
def test_an_unshuffled_body_keeps_the_contract_at_odd_sizes(cell):
    model = small(scale=4, upsampler="direct", unshuffle=cell).eval()
    assert model.arch["unshuffle"] == cell and "unshuffle" not in small(upsampler="direct").arch
    assert model.head.in_channels == 3 * cell * cell
    assert model.to_rgb.out_channels == 3 * (4 * cell) ** 2
    x = torch.rand(2, 3, 13, 7)
    with torch.no_grad():
        # untrained: bicubic, whatever padding the cells needed
        assert torch.allclose(model(x), upsample(x, 4).clamp(0, 1), atol=1e-6)
        trained_like(model)
        assert model(x).shape == (2, 3, 52, 28)
        assert not torch.allclose(model(x), upsample(x, 4).clamp(0, 1))
        loaded = build_generator(**model.arch)
        loaded.load_state_dict(model.state_dict())
        assert torch.equal(loaded.eval()(x), model(x))


def test_an_unshuffled_body_exports_to_onnx_for_any_size():
    from pipelines.exporting.onnx_file import to_onnx

    model = trained_like(small(scale=2, upsampler="direct", unshuffle=2)).eval()
    # odd, even and tiny sides: the graph pads to whole cells as PyTorch does
    _, diff = to_onnx(model, {"scale": "2"}, check_sizes=((29, 61), (8, 8), (1, 3)))
    assert diff < 1e-5


def test_an_unshuffled_body_needs_a_restorer_with_the_direct_upsampler():
    with pytest.raises(ValueError, match="unshuffle: 2"):
        small(unshuffle=2)  # staged
    with pytest.raises(ValueError, match="unshuffle: 3"):
        small(upsampler="direct", unshuffle=3)
    with pytest.raises(ValueError, match="unshuffle: 2"):
        small(upsampler="direct", unshuffle=2, task="colorize", scale=1)
    params = {
        "base": {"scale": 2, "crop": 32},
        "crappify": {},
        "pretrain_generator": {"model": {"kind": "srresnet", "unshuffle": 2}},
    }
    with pytest.raises(ConfigError, match="model.unshuffle: 2 needs .* model.upsampler direct"):
        load(PretrainGeneratorConfig, "pretrain_generator", params)
    params["pretrain_generator"]["model"]["unshuffle"] = 3
    with pytest.raises(ConfigError, match="model.unshuffle: 3 is not one of 1, 2, 4"):
        load(PretrainGeneratorConfig, "pretrain_generator", params)

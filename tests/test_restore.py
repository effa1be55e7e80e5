"""Tiled restoration, generator loading and the resampling baselines."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipelines.imaging.resize import bicubic_upscale, imresize_matlab, upscale
from pipelines.inference.restore import edge_ramp, load_generator, restore, tile_starts
from pipelines.training import checkpoint


class TinySR(nn.Module):
    """Two 3x3 convs then x``scale`` pixel shuffle: a receptive radius of 2 LR px."""

    def __init__(self, scale: int = 4, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3 * scale**2, 3, padding=1),
            nn.PixelShuffle(scale),
            nn.Sigmoid(),
        )
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.body(x)


def tiny_builder(scale: int, width: int) -> nn.Module:
    return TinySR(scale, width)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinySR().eval()


@pytest.fixture
def lr():
    return np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)


@pytest.mark.parametrize("tile,overlap", [(16, 8), (20, 8), (24, 12), (30, 10)])
def test_tiled_equals_single_pass_when_the_margin_covers_the_receptive_field(
    model, lr, tile, overlap
):
    whole = restore(model, lr, tile=64, overlap=0)
    model.calls = 0
    tiled = restore(model, lr, tile=tile, overlap=overlap)
    assert model.calls > 2  # tiles in both directions
    assert tiled.shape == whole.shape == (37 * 4, 53 * 4, 3)
    assert np.abs(tiled.astype(int) - whole).max() <= 1  # float rounding at most


def test_blending_hides_seams_of_a_too_narrow_overlap(model, lr):
    whole = restore(model, lr, tile=64, overlap=0).astype(int)
    hard = np.abs(restore(model, lr, tile=16, overlap=0).astype(int) - whole)
    blended = np.abs(restore(model, lr, tile=16, overlap=4).astype(int) - whole)
    # margin 1 LR px < receptive radius 2: some error is left, but far less than butt-joined tiles
    assert blended.mean() < hard.mean() / 3


def test_an_image_within_one_tile_is_one_pass(model, lr):
    out = restore(model, lr, tile=53, overlap=8)
    assert model.calls == 1 and out.dtype == np.uint8


# the square's 8 symmetries as (quarter turns, mirrored first), written out independently of
# the code under test
SYMMETRIES = [(k, m) for m in (False, True) for k in range(4)]


def symmetric(img: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(np.fliplr(img) if mirror else img, turns))


def test_self_ensemble_is_the_mean_of_the_eight_turned_passes(model, lr):
    passes = []
    for turns, mirror in SYMMETRIES:
        out = restore(model, symmetric(lr, turns, mirror), tile=64, overlap=0).astype(float)
        back = np.rot90(out, -turns)
        passes.append(np.fliplr(back) if mirror else back)
    model.calls = 0
    ensemble = restore(model, lr, tile=64, overlap=0, self_ensemble=True)
    assert model.calls == 8 and ensemble.shape == (37 * 4, 53 * 4, 3)
    # each pass here was rounded to uint8 before the mean, the ensemble's only after it
    assert np.abs(ensemble - np.mean(passes, axis=0)).max() <= 1.0


def test_self_ensemble_commutes_with_flips_and_turns_where_one_pass_does_not(model, lr):
    one = restore(model, lr, tile=64, overlap=0).astype(int)
    ens = restore(model, lr, tile=64, overlap=0, self_ensemble=True).astype(int)
    for turns, mirror in SYMMETRIES[1:]:
        turned_in = symmetric(lr, turns, mirror)
        single = restore(model, turned_in, tile=64, overlap=0).astype(int)
        assert np.abs(single - symmetric(one, turns, mirror)).max() > 10
        ensembled = restore(model, turned_in, tile=64, overlap=0, self_ensemble=True)
        assert np.abs(ensembled.astype(int) - symmetric(ens, turns, mirror)).max() <= 1


@pytest.mark.parametrize("tile,overlap", [(20, 8), (40, 16)])
def test_self_ensemble_tiles_a_large_image_as_one_pass(model, lr, tile, overlap):
    """Square tiles (20 px) and tiles cut to 37 x 40 px by the image's height, each turned and
    turned back, are blended where the unturned ones would be."""
    whole = restore(model, lr, tile=64, overlap=0, self_ensemble=True).astype(int)
    tiled = restore(model, lr, tile=tile, overlap=overlap, self_ensemble=True)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() <= 1


def test_self_ensemble_names_a_network_that_does_not_upscale_evenly(lr):
    def stretched(tile: np.ndarray) -> np.ndarray:  # twice as wide as high: no integer scale
        return np.zeros((tile.shape[0] * 2, tile.shape[1] * 4, 3), np.float32)

    with pytest.raises(ValueError, match="not an integer upscaling"):
        restore(stretched, lr, tile=64, overlap=0, self_ensemble=True)


def test_tiles_cover_evenly_and_every_pixel_keeps_weight():
    for length in (17, 40, 97, 256):
        for tile in (16, 24, 64):
            for overlap in (0, 3, 8):
                if 2 * overlap > tile:
                    continue
                starts = tile_starts(length, tile, overlap)
                t = min(tile, length)
                assert starts[0] == 0 and starts[-1] + t == length
                assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
                total = np.zeros(length)
                for k, s in enumerate(starts):
                    total[s : s + t] += edge_ramp(t, overlap, k > 0, k < len(starts) - 1)
                assert total.min() > 0, (length, tile, overlap)


def test_bad_tiling_arguments_are_refused(model, lr):
    with pytest.raises(ValueError, match="overlap"):
        restore(model, lr, tile=16, overlap=9)
    with pytest.raises(ValueError, match="uint8"):
        restore(model, lr.astype(np.float32), tile=16, overlap=4)


def test_bf16_autocast_stays_close_to_fp32(model, lr):
    fp32 = restore(model, lr, tile=64, overlap=0)
    bf16 = restore(model, lr, tile=20, overlap=8, dtype=torch.bfloat16)
    assert np.abs(bf16.astype(int) - fp32).mean() < 2


def test_load_generator_round_trip_and_kind_check(tmp_path, model, lr):
    arch = {"scale": 4, "width": 8}
    path = tmp_path / "generator.pt"
    checkpoint.save(path, checkpoint.model_payload("generator", arch, model))
    loaded = load_generator(path, "cpu", builder=tiny_builder)
    assert not loaded.training
    np.testing.assert_array_equal(restore(loaded, lr, 64, 0), restore(model, lr, 64, 0))
    checkpoint.save(tmp_path / "critic.pt", checkpoint.model_payload("critic", arch, model))
    with pytest.raises(checkpoint.CheckpointError, match="expected a 'generator'"):
        load_generator(tmp_path / "critic.pt", "cpu", builder=tiny_builder)
    with pytest.raises(checkpoint.CheckpointError, match="do not fit"):
        load_generator(path, "cpu", builder=lambda scale, width: TinySR(scale, width * 2))


def test_load_generator_rebuilds_the_unet_which_starts_as_bicubic(tmp_path):
    from pipelines.networks import build_generator

    net = build_generator(encoder="resnet18", scale=4, pretrained="none")
    path = tmp_path / "generator.pt"
    checkpoint.save(path, checkpoint.model_payload("generator", net.arch, net))
    lr = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    out = restore(load_generator(path, "cpu"), lr, tile=64, overlap=0)
    # torch's float bicubic against OpenCV's fixed-point one: equal up to rounding
    assert np.abs(out.astype(int) - bicubic_upscale(lr, 4)).max() <= 2


def test_resampling_baselines():
    lr = np.random.default_rng(2).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    for method in ("nearest", "bilinear", "bicubic", "lanczos", "matlab_bicubic"):
        assert upscale(lr, 3, method).shape == (21, 27, 3)
    np.testing.assert_array_equal(upscale(lr, 2, "nearest")[::2, ::2], lr)
    with pytest.raises(ValueError, match="unknown resampling"):
        upscale(lr, 2, "cubic")


def test_matlab_imresize_antialiases_like_pillow_bicubic():
    hr = np.random.default_rng(3).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    ours = imresize_matlab(hr, (12, 16))
    # Pillow also shrinks with a widened a = -0.5 cubic; it clamps at the borders, MATLAB mirrors.
    pil = np.asarray(Image.fromarray(hr).resize((12, 16), Image.BICUBIC))
    assert np.abs(ours.astype(int) - pil)[2:-2, 2:-2].max() <= 1
    flat = np.full((40, 40, 3), 77, np.uint8)
    np.testing.assert_array_equal(imresize_matlab(flat, (10, 10)), flat[:10, :10])

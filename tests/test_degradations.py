"""Each degradation alone, then their composition ``crappify()`` and its spec."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipelines.core.config import ConfigError, build
from pipelines.imaging.degradations import (
    Degradation,
    Frame,
    crappify,
    downscale,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    make_degrader,
    resize_short_side,
    rng_for,
    to_grayscale,
    watermark,
    watermark_with_mask,
)
from pipelines.imaging.resize import RESAMPLERS


def textured(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus fine texture, like a photo with detail to lose."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 200, y / h * 200, (x + y) / (w + h) * 120 + 60], -1)
    detail = 25 * np.sin(x * 1.3)[..., None] * np.cos(y * 0.9)[..., None]
    noise = np.random.default_rng(seed).normal(0, 8, (h, w, 3))
    return np.clip(base + detail + noise, 0, 255).astype(np.uint8)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.parametrize("method", sorted(RESAMPLERS))
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
@pytest.mark.parametrize("size", [(48, 64), (97, 131)])
def test_downscale_size_is_floor_division(method, scale, size):
    h, w = size
    out = downscale(textured(h, w), scale, method)
    assert out.shape == (h // scale, w // scale, 3) and out.dtype == np.uint8


def test_downscale_area_averages_the_top_left_region():
    hr = textured(97, 131)
    lr = downscale(hr, 4, "area")
    blocks = hr[:96, :128].astype(np.float64).reshape(24, 4, 32, 4, 3).mean(axis=(1, 3))
    assert np.abs(lr - blocks).max() <= 0.5 + 1e-9
    assert np.array_equal(downscale(hr, 1, "area"), hr)


def test_downscale_refuses_an_image_smaller_than_the_scale():
    with pytest.raises(ValueError, match="smaller than the scale"):
        downscale(textured(6, 40), 8)


def test_resize_short_side_keeps_aspect_like_the_recipe():
    assert resize_short_side(textured(97, 131), 96).shape == (96, int(131 * 96 / 97), 3)
    assert resize_short_side(textured(131, 97), 96).shape == (int(131 * 96 / 97), 96, 3)
    assert resize_short_side(textured(40, 30), 96).shape == (128, 96, 3)


def test_jpeg_returns_what_the_bytes_decode_to_with_420_chroma():
    img = textured()
    decoded, data = jpeg(img, 50)
    assert data[:2] == b"\xff\xd8"
    again = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    assert np.array_equal(decoded, again)
    # baseline SOF0: precision, height, width, 3 components, then Y's sampling factors 2x2
    sof = data.index(b"\xff\xc0")
    assert data[sof + 9] == 3 and data[sof + 11] == 0x22


def test_jpeg_higher_quality_means_smaller_error_and_more_bytes():
    img = textured()
    errors, sizes = zip(*[(mse(jpeg(img, q)[0], img), len(jpeg(img, q)[1])) for q in (10, 40, 90)])
    assert errors[0] > errors[1] > errors[2]
    assert sizes[0] < sizes[1] < sizes[2]


def test_gaussian_blur_smooths_and_zero_sigma_is_identity():
    img = textured()
    blurred = gaussian_blur(img, 1.5)
    assert (
        np.abs(np.diff(blurred.astype(int), axis=1)).mean()
        < 0.6 * np.abs(np.diff(img.astype(int), axis=1)).mean()
    )
    assert np.array_equal(gaussian_blur(img, 0), img)


def test_gaussian_noise_has_the_asked_sigma_and_follows_the_generator():
    flat = np.full((64, 64, 3), 128, np.uint8)
    a = gaussian_noise(flat, 6.0, np.random.default_rng(1))
    b = gaussian_noise(flat, 6.0, np.random.default_rng(1))
    assert np.array_equal(a, b)
    assert 5.5 < (a.astype(float) - 128).std() < 6.5
    # clipped, not wrapped around
    bright = gaussian_noise(np.full((32, 32, 3), 250, np.uint8), 20.0, np.random.default_rng(2))
    assert bright.min() > 150 and bright.max() == 255


def test_to_grayscale_is_bt601_luma_on_three_channels():
    img = textured()
    gray = to_grayscale(img)
    assert gray.shape == img.shape
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    luma = img.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray[..., 0] - luma).max() <= 1


@pytest.mark.parametrize("seed", range(8))
def test_watermark_changes_pixels_only_inside_its_box(seed):
    img = np.full((96, 128, 3), 40, np.uint8)
    out, rec = watermark(
        img, "57", rng_for(seed, "wm"), height=(0.1, 0.2), opacity=(0.5, 1.0), color="random"
    )
    x, y, w, h = rec["x"], rec["y"], rec["box_w"], rec["box_h"]
    assert 0 <= x <= 128 // 2 and 0 <= y <= 96 // 2
    assert x + w <= 128 and y + h <= 96
    changed = np.any(out != img, axis=2)
    assert changed[y : y + h, x : x + w].sum() >= 10
    changed[y : y + h, x : x + w] = False
    assert not changed.any()
    # the fully covered stroke pixels take the recorded colour at the recorded opacity
    target = 40 + rec["opacity"] * (np.array(rec["color"]) - 40)
    assert np.abs(out.reshape(-1, 3).astype(float) - target).sum(axis=1).min() <= 3


def test_watermark_edge_cases():
    img = textured()
    same, rec = watermark(img, "", rng_for(0, "x"))
    assert np.array_equal(same, img) and rec["text"] == ""
    clear, _ = watermark(img, "33", rng_for(0, "x"), opacity=(0.0, 0.0))
    assert np.array_equal(clear, img)
    tiny = np.zeros((8, 8, 3), np.uint8)
    out, rec = watermark(tiny, "70", rng_for(0, "x"))
    assert rec["x"] + rec["box_w"] <= 8 and rec["y"] + rec["box_h"] <= 8 and out.any()


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_crappify_sizes_and_what_it_returns(scale):
    hr = textured(97, 131)
    lr, data, rec = crappify(hr, Degradation(scale=scale), rng_for(3, "a.png"))
    assert lr.shape == (97 // scale, 131 // scale, 3) and lr.dtype == np.uint8
    assert (rec["lr_width"], rec["lr_height"]) == (131 // scale, 97 // scale)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(lr, cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))
    assert 10 <= rec["quality"] <= 70 and rec["text"] == str(rec["quality"])


def test_crappify_short_side_mode_and_the_smallest_lr():
    lr, _, _ = crappify(
        textured(97, 131), Degradation(size_mode="short_side", short_side=48), rng_for(0, "k")
    )
    assert lr.shape == (48, int(131 * 48 / 97), 3)
    lr, _, rec = crappify(textured(64, 64), Degradation(scale=8), rng_for(0, "k"))
    assert lr.shape == (8, 8, 3) and rec["text"]


def test_crappify_quality_spans_the_range_and_is_reproducible():
    hr, spec = textured(), Degradation(jpeg_quality=(20, 24))
    qualities = {crappify(hr, spec, rng_for(7, f"0/{i}"))[2]["quality"] for i in range(60)}
    assert qualities == {20, 21, 22, 23, 24}
    a, b = (crappify(hr, spec, rng_for(7, "train/x.png")) for _ in range(2))
    assert a[1] == b[1] and a[2] == b[2]
    assert crappify(hr, spec, rng_for(8, "train/x.png"))[1] != a[1]


def test_crappify_options():
    hr = textured()
    base = crappify(hr, Degradation(), rng_for(1, "k"))
    blurred = crappify(hr, Degradation(blur_prob=1.0, noise_prob=1.0), rng_for(1, "k"))
    # switching blur and noise on leaves the other draws where they were
    assert blurred[2]["quality"] == base[2]["quality"] and blurred[2]["x"] == base[2]["x"]
    assert 0.5 <= blurred[2]["blur_sigma"] <= 1.5 and 2 <= blurred[2]["noise_sigma"] <= 10
    assert base[2]["blur_sigma"] == 0.0 and base[2]["noise_sigma"] == 0.0
    assert crappify(hr, Degradation(watermark="none"), rng_for(1, "k"))[2]["text"] == ""
    fixed = Degradation(watermark="fixed", watermark_text="(c) 2024")
    assert crappify(hr, fixed, rng_for(1, "k"))[2]["text"] == "(c) 2024"
    gray, _, rec = crappify(hr, Degradation(grayscale=True), rng_for(1, "k"))
    assert rec["grayscale"] and np.abs(gray.astype(int) - gray[..., :1]).max() <= 2


def test_make_degrader_gives_crappify_lr():
    hr, spec = textured(), Degradation(scale=2)
    degrade = make_degrader(spec)
    assert np.array_equal(degrade(hr, rng_for(5, "1/2")), crappify(hr, spec, rng_for(5, "1/2"))[0])


def test_rng_for_depends_on_seed_and_key_only():
    assert rng_for(1, "a").integers(1 << 62) == rng_for(1, "a").integers(1 << 62)
    assert rng_for(1, "a").integers(1 << 62) != rng_for(1, "b").integers(1 << 62)
    assert rng_for(1, "a").integers(1 << 62) != rng_for(2, "a").integers(1 << 62)


@pytest.mark.parametrize(
    "section, key, words",
    [
        ({"jpeg_quality": [0, 50]}, "d.jpeg_quality", "out of range"),
        ({"jpeg_quality": [50, 101]}, "d.jpeg_quality", "out of range"),
        ({"jpeg_quality": [70, 10]}, "d.jpeg_quality", "lo > hi"),
        ({"short_side": -5}, "d.short_side", "-5"),
        ({"watermark_opacity": [0.9, 0.2]}, "d.watermark_opacity", "lo > hi"),
        ({"blur_prob": 1.5}, "d.blur_prob", "1.5"),
        ({"watermark": "fixed"}, "d.watermark_text", "must be set"),
        ({"watermark": "fixed", "watermark_text": "café"}, "d.watermark_text", "ASCII"),
        ({"resample": "cubic"}, "d.resample", "cubic"),
    ],
)
def test_spec_errors_name_the_key_and_value(section, key, words):
    with pytest.raises(ConfigError) as err:
        build(Degradation, section, "d")
    assert str(err.value).startswith(key + ":") and words in str(err.value)


def test_watermark_in_a_frame_draws_the_crop_of_the_whole_images_text():
    whole = np.full((120, 160, 3), 40, np.uint8)
    marked, rec, mask = watermark_with_mask(whole, "42", np.random.default_rng(0))
    assert np.array_equal(
        watermark(whole, "42", np.random.default_rng(0), frame=Frame(0, 0, 160, 120))[0], marked
    )
    # a 32 px crop cut through the box: exactly that part of the whole image's text
    y = max(rec["y"] + rec["box_h"] // 2 - 16, 0)
    x = max(rec["x"] + rec["box_w"] // 2 - 16, 0)
    crop = whole[y : y + 32, x : x + 32]
    out, crec, cmask = watermark_with_mask(
        crop, "42", np.random.default_rng(0), frame=Frame(x, y, 160, 120)
    )
    assert np.array_equal(out, marked[y : y + 32, x : x + 32]) and cmask.any()
    assert np.array_equal(cmask, mask[y : y + 32, x : x + 32])
    assert (crec["box_w"], crec["box_h"]) == (rec["box_w"], rec["box_h"])
    # the bottom-right corner lies outside the top-left quadrant where the text goes
    corner = whole[88:, 128:]
    out, _, cmask = watermark_with_mask(
        corner, "42", np.random.default_rng(0), frame=Frame(128, 88, 160, 120)
    )
    assert np.array_equal(out, corner) and not cmask.any()

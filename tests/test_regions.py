"""Regional scores: Y-PSNR inside the watermark's mask, chroma error near edges."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.imaging.degradations import (
    Degradation,
    crappify,
    crappify_with_mask,
    rng_for,
    watermark,
    watermark_with_mask,
)
from pipelines.imaging.images import read_rgb
from pipelines.imaging.resize import upscale
from pipelines.scoring.metrics import PSNR_CAP, psnr_y
from pipelines.scoring.regions import (
    edge_chroma_rmse,
    edge_mask,
    masked_psnr_y,
    regional_scores,
    rgb_to_cbcr,
    watermark_mask_hr,
)

SET5 = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "Set5"


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([40 + x, 60 + y // 2, 90 + (x + y) // 4], -1).clip(0, 255).astype(np.uint8)


def test_the_mask_covers_every_pixel_the_text_changed_and_nothing_else():
    img = gradient(64, 96)
    out, record, mask = watermark_with_mask(img, "42", np.random.default_rng(5))
    changed = (out != img).any(axis=-1)
    assert changed.any() and mask.shape == img.shape[:2] and mask.dtype == np.uint8
    assert not (changed & (mask == 0)).any()  # nothing drawn outside the mask
    assert changed[mask > 128].all()  # the strokes themselves changed
    ys, xs = np.nonzero(mask)
    assert record["x"] <= xs.min() and xs.max() < record["x"] + record["box_w"]
    assert record["y"] <= ys.min() and ys.max() < record["y"] + record["box_h"]
    # the same draws as before: the mask is a by-product, not a change of the image
    again, rec2 = watermark(img, "42", np.random.default_rng(5))
    assert np.array_equal(again, out) and rec2 == record
    empty = watermark_with_mask(img, "", np.random.default_rng(5))[2]
    assert not empty.any()


def test_crappify_with_mask_makes_the_same_bytes_as_crappify():
    hr = read_rgb(SET5 / "bird.png")
    spec = Degradation(scale=4)
    lr, data, record = crappify(hr, spec, rng_for(42, "test/bird.png"))
    lr2, data2, record2, mask = crappify_with_mask(hr, spec, rng_for(42, "test/bird.png"))
    assert data == data2 and record == record2 and np.array_equal(lr, lr2)
    assert mask.shape == lr.shape[:2] and mask.any()


def test_the_hr_mask_is_the_lr_mask_grown_by_one_lr_pixel_and_scaled():
    m = np.zeros((10, 12), np.uint8)
    m[4, 5] = 200
    hr = watermark_mask_hr(m, (41, 50, 3), 4)  # 41x50 HR: a 10x12 LR grid, remainder cropped
    assert hr.shape == (41, 50) and hr.dtype == bool
    assert hr.sum() == 9 * 16 and hr[12:24, 16:28].all()
    short = watermark_mask_hr(
        cv2.resize(m, (24, 20), interpolation=cv2.INTER_NEAREST), (40, 48, 3), 4
    )  # a short-side LR at twice the grid
    assert short.shape == (40, 48) and short[16:20, 20:24].all()


def test_error_inside_the_mask_is_higher_when_the_text_is_left_in():
    hr = read_rgb(SET5 / "baby.png")[:256, :256]
    spec = Degradation(
        scale=4,
        jpeg_quality=(90, 90),
        watermark="fixed",
        watermark_text="27",
        watermark_height=(0.2, 0.2),
    )
    lr, _, _, mask_lr = crappify_with_mask(hr, spec, rng_for(0, "baby"))
    mask = watermark_mask_hr(mask_lr, hr.shape, 4)
    assert 0.005 < mask.mean() < 0.2
    damaged = upscale(lr, 4, "bicubic")  # the text is restored along
    clean_lr = cv2.resize(hr, (64, 64), interpolation=cv2.INTER_AREA)
    clean = upscale(clean_lr, 4, "bicubic")  # what removing it perfectly would give
    inside_damaged = masked_psnr_y(damaged, hr, mask, 4)
    inside_clean = masked_psnr_y(clean, hr, mask, 4)
    assert inside_clean - inside_damaged > 6
    # the whole-image score hides most of it: that is why the mask score exists
    assert psnr_y(clean, hr, 4) - psnr_y(damaged, hr, 4) < (inside_clean - inside_damaged) / 2
    assert masked_psnr_y(hr, hr, mask, 4) == PSNR_CAP
    assert regional_scores(damaged, hr, 4, watermark=mask)["mask_psnr_y"] == inside_damaged


def test_a_mask_inside_the_border_gives_no_score():
    hr = gradient(32, 32)
    mask = np.zeros((32, 32), bool)
    mask[:2, :2] = True
    assert masked_psnr_y(hr, hr, mask, border=4) is None
    assert "mask_psnr_y" not in regional_scores(hr, hr, 4, watermark=mask)
    with pytest.raises(ValueError, match="does not match"):
        masked_psnr_y(hr, hr, mask[:16], 0)


def test_colour_fringes_along_edges_raise_the_chroma_error():
    gray = cv2.cvtColor(
        cv2.cvtColor(read_rgb(SET5 / "butterfly.png"), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB
    )
    np.testing.assert_allclose(rgb_to_cbcr(gray), 128.0, atol=0.02)
    lr = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)
    bicubic = upscale(lr, 4, "bicubic")
    # green/magenta fringes: the green channel moved 2 px, so it parts from red and blue at edges
    fringed = bicubic.copy()
    fringed[..., 1] = np.roll(bicubic[..., 1], 2, axis=1)
    base = edge_chroma_rmse(bicubic, gray, 4, 4)
    worse = edge_chroma_rmse(fringed, gray, 4, 4)
    assert base < 0.05 and worse > 2.0
    # and it is an edge score: the fringe error is denser near edges than over the whole image
    d = np.sqrt(((rgb_to_cbcr(fringed) - rgb_to_cbcr(gray)) ** 2).mean(axis=-1))[4:-4, 4:-4]
    assert worse > np.sqrt((d**2).mean())
    assert regional_scores(fringed, gray, 4, 4) == {"edge_chroma_rmse": worse}


def test_edges_are_strong_outlines_and_a_flat_image_has_none():
    hr = np.full((64, 64, 3), 90, np.uint8)
    assert not edge_mask(hr, 4).any()
    assert edge_chroma_rmse(hr, hr, 4) is None and regional_scores(hr, hr, 4) == {}
    hr[:, 32:] = 200
    m = edge_mask(hr, 2)
    cols = np.nonzero(m.any(axis=0))[0]
    assert m[:, 31].all() and cols.min() >= 28 and cols.max() <= 35

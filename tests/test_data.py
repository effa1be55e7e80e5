"""Datasets: aligned pairs, seeded and index-addressed sampling, exact resume."""

import numpy as np
import pytest
import torch

from pipelines.datasets.pairs import (
    CriticPairs,
    EvalPairs,
    StepBatches,
    TrainPairs,
    aligned_lr,
    center_crop_pair,
    step_loader,
)
from pipelines.imaging.degradations import Degradation, downscale, make_degrader
from pipelines.imaging.images import write_image
from pipelines.imaging.tensors import to_image, to_tensor


def photo(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def hr_files(tmp_path):
    files = []
    for i, (h, w) in enumerate([(70, 90), (64, 64), (81, 77)]):
        f = tmp_path / "hr" / "train" / f"img{i}.png"
        write_image(f, photo(h, w, i))
        files.append(f)
    return files


def test_tensor_round_trip():
    img = photo(9, 7, 0)
    assert np.array_equal(to_image(to_tensor(img)), img)


def test_step_batches_cover_global_batches_per_rank():
    one = list(StepBatches(2, 4, batch_size=4))
    assert one == [[8, 9, 10, 11], [12, 13, 14, 15]]
    r0 = list(StepBatches(2, 4, batch_size=4, rank=0, world=2))
    r1 = list(StepBatches(2, 4, batch_size=4, rank=1, world=2))
    assert [a + b for a, b in zip(r0, r1, strict=True)] == one
    with pytest.raises(ValueError, match="not divisible by 3"):
        StepBatches(0, 1, batch_size=4, world=3)


def test_fresh_pairs_are_aligned_and_deterministic(hr_files):
    spec = Degradation(scale=4, watermark="none", jpeg_quality=(95, 95))
    ds = TrainPairs(hr_files, crop=32, scale=4, seed=3, degrade=make_degrader(spec), lighting=0.0)
    lr, hr = ds[5]
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 32, 32)
    # LR is the downscaled HR crop (high JPEG quality, no watermark): close to area downscale
    expect = downscale(to_image(hr), 4, "area").astype(float)
    err = np.abs(to_image(lr).astype(float) - expect).mean()
    other = downscale(to_image(ds[6][1]), 4, "area").astype(float)
    assert err < 6 and np.abs(to_image(lr).astype(float) - other).mean() > 3 * err
    lr2, hr2 = TrainPairs(hr_files, 32, 4, 3, degrade=make_degrader(spec), lighting=0.0)[5]
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert not torch.equal(ds[6][1], hr)


def test_every_image_once_per_pass(hr_files):
    ds = TrainPairs(hr_files, 32, 4, seed=1, degrade=lambda hr, rng, ref: hr[::4, ::4])
    for epoch in range(3):
        assert sorted(ds.image_index(epoch * 3 + i) for i in range(3)) == [0, 1, 2]


def test_fixed_pairs_crop_the_same_region(tmp_path):
    hr_files, lr_files = [], []
    for i in range(3):
        small = photo(18 + i, 20, i)
        hr_file, lr_file = tmp_path / "hr" / f"{i}.png", tmp_path / "lr" / f"{i}.png"
        # HR made of constant 4x4 blocks: any flip/rotation keeps HR[::4, ::4] == LR
        write_image(hr_file, np.repeat(np.repeat(small, 4, 0), 4, 1))
        write_image(lr_file, small)
        hr_files.append(hr_file)
        lr_files.append(lr_file)
    ds = TrainPairs(hr_files, 32, 4, seed=2, lr_files=lr_files, lighting=0.2)
    for i in range(6):
        lr, hr = ds[i]
        assert torch.equal(hr[:, ::4, ::4], lr)  # same crop, same flips/rotation, same lighting


def test_loader_resumes_exactly(hr_files):
    ds = TrainPairs(hr_files, 16, 4, seed=0, degrade=lambda hr, rng, ref: hr[::4, ::4].copy())
    full = [b[1] for b in step_loader(ds, 0, 6, 2, workers=0)]
    tail = [b[1] for b in step_loader(ds, 3, 6, 2, workers=0)]
    assert len(full) == 6 and len(tail) == 3
    assert all(torch.equal(a, b) for a, b in zip(full[3:], tail, strict=True))


def test_aligned_lr_and_centre_crop():
    hr = photo(70, 90, 0)
    lr, hr_c = aligned_lr(hr[::4, ::4][:17, :22], hr, 4)
    assert lr.shape[:2] == (17, 22) and hr_c.shape[:2] == (68, 88)
    lr_r, _ = aligned_lr(photo(20, 30, 1), hr, 4)  # not an exact 1/scale: resized
    assert lr_r.shape[:2] == (17, 22)
    lr2, hr2 = center_crop_pair(lr, hr_c, 32, 4)
    assert lr2.shape[:2] == (8, 8) and hr2.shape[:2] == (32, 32)


def test_eval_pairs(tmp_path, hr_files):
    for f in hr_files:
        from pipelines.imaging.images import read_rgb

        lr = downscale(read_rgb(f), 4, "area")
        write_image((tmp_path / "lr" / "train" / f.name).with_suffix(".jpg"), lr, jpeg_quality=90)
    pairs = EvalPairs(tmp_path / "hr", tmp_path / "lr", "train", 4)
    lr, hr = pairs[0]
    assert hr.shape[1] == lr.shape[1] * 4 and hr.shape[2] == lr.shape[2] * 4
    with pytest.raises(FileNotFoundError, match="no images"):
        EvalPairs(tmp_path / "hr", tmp_path / "lr", "valid", 4)


def test_eval_pairs_clean_are_the_benchmark_downscale_of_the_centre_crop(tmp_path, hr_files):
    from pipelines.imaging.images import read_rgb
    from pipelines.imaging.resize import benchmark_lr

    # no LR files: clean pairs are made from the HR photos alone
    pairs = EvalPairs(tmp_path / "hr", tmp_path / "lr", "train", 4, crop=48, kind="clean")
    for i, f in enumerate(hr_files):
        lr, hr = pairs[i]
        assert tuple(hr.shape) == (3, 48, 48) and tuple(lr.shape) == (3, 12, 12)
        hr_img = read_rgb(f)
        top = (hr_img.shape[0] - 48) // 2 // 4 * 4
        left = (hr_img.shape[1] - 48) // 2 // 4 * 4
        want_lr, want_hr = benchmark_lr(hr_img[top : top + 48, left : left + 48], 4)
        assert np.array_equal(to_image(hr), want_hr) and np.array_equal(to_image(lr), want_lr)
    whole = EvalPairs(tmp_path / "hr", tmp_path / "lr", "train", 4, kind="clean")
    lr, hr = whole[0]  # 70 x 90: cropped to 68 x 88, as the evaluate stage's clean sets
    assert tuple(hr.shape) == (3, 68, 88) and tuple(lr.shape) == (3, 17, 22)


def test_critic_pairs(tmp_path, hr_files):
    fakes = []
    for f in hr_files:
        from pipelines.imaging.images import read_rgb

        fake = tmp_path / "gen" / f.name
        write_image(fake, read_rgb(f)[:64, :64])
        fakes.append(fake)
    ds = CriticPairs(hr_files, fakes, crop=32, seed=0)
    fake, real = ds[3]
    assert fake.shape == real.shape == (3, 32, 32)
    assert torch.equal(fake, real)  # fakes here are exact crops of the reals: same region


def window_frames(tmp_path, n, **kw) -> list[tuple[int, int, int, int]]:
    """The text frames of the first ``n`` crappy 32 px crops of one 400 x 640 photo (LR 100 x
    160) that ``TrainPairs(**kw)`` draws."""
    f = tmp_path / "hr" / "big.png"
    if not f.exists():
        write_image(f, photo(400, 640, 0))
    frames = []

    def record(hr, rng, frame):
        frames.append(frame)
        return hr[::4, ::4].copy()

    ds = TrainPairs([f], 32, 4, seed=0, degrade=record, **kw)
    for i in range(n):
        ds[i]
    drawn = list(frames)
    assert ds[7][0].shape == (3, 8, 8)
    return drawn


def test_watermark_window_frames_the_crop_in_a_smaller_window_of_its_photo(tmp_path):
    whole = window_frames(tmp_path, 20)
    assert all(fw == 160 and fh == 100 for _, _, fw, fh in whole)
    windowed = window_frames(tmp_path, 200, watermark_window=24)
    shorts = [min(fw, fh) for _, _, fw, fh in windowed]
    for x, y, fw, fh in windowed:
        # the 8 px LR crop lies inside its window, which has the photo's aspect
        assert 0 <= x <= fw - 8 and 0 <= y <= fh - 8
        assert abs(fw / fh - 1.6) < 0.1
    # from the window size to the photo's, over the whole range
    assert min(shorts) >= 24 and max(shorts) <= 100
    assert min(shorts) < 28 and max(shorts) > 85


def test_watermark_focus_places_crops_where_the_window_draws_its_text(tmp_path):
    def in_quadrant(frames):
        # the text's corner lies in the window's top-left quadrant (watermark_with_mask)
        return [x <= fw // 2 and y <= fh // 2 for x, y, fw, fh in frames]

    unfocused = window_frames(tmp_path, 200, watermark_window=24)
    # 0 draws nothing more: the frames the windows gave before the focus existed
    before = [(43, 26, 66, 41), (134, 42, 158, 99), (12, 24, 78, 49), (72, 72, 138, 86)]
    zero = window_frames(tmp_path, 200, watermark_window=24, watermark_focus=0.0)
    assert zero[:4] == unfocused[:4] == before
    assert all(in_quadrant(window_frames(tmp_path, 200, watermark_window=24, watermark_focus=1.0)))
    assert sum(in_quadrant(unfocused)) < 150
    half = in_quadrant(window_frames(tmp_path, 200, watermark_window=24, watermark_focus=0.5))
    assert 0.6 < sum(half) / len(half) < 0.95


def test_focused_crops_carry_text_more_often(tmp_path):
    f = tmp_path / "hr" / "flat.png"
    write_image(f, np.full((512, 768, 3), 80, np.uint8))  # only white text can be bright
    degrade = make_degrader(Degradation())

    def with_text(**kw):
        ds = TrainPairs([f], 128, 4, seed=1, degrade=degrade, watermark_window=64, **kw)
        return sum(bool(ds[i][0].amax() > 0.6) for i in range(200))

    unfocused = with_text()
    assert unfocused > 0
    assert with_text(watermark_focus=1.0) > 1.5 * unfocused


def test_text_weights_cover_the_watermark_and_change_no_sample(tmp_path):
    f = tmp_path / "hr" / "flat.png"
    write_image(f, np.full((512, 768, 3), 80, np.uint8))  # only white text can be bright
    kw = dict(watermark_window=64, watermark_focus=1.0, lighting=0.0, clean_prob=0.25)
    plain = TrainPairs([f], 128, 4, seed=1, degrade=make_degrader(Degradation()), **kw)
    weighted = TrainPairs(
        [f], 128, 4, 1, degrade=make_degrader(Degradation(), with_mask=True), text_weight=3, **kw
    )
    marked = 0
    for i in range(30):
        (lr, hr), (lr_w, hr_w, weights) = plain[i], weighted[i]
        assert torch.equal(lr, lr_w) and torch.equal(hr, hr_w)
        assert weights.shape == (1, 128, 128) and set(weights.unique().tolist()) <= {1.0, 4.0}
        text = torch.nn.functional.interpolate(lr[None], scale_factor=4)[0].amax(0) > 0.6
        assert (weights[0][text] == 4.0).all(), i
        marked += bool(text.any())
        # the mask is the strokes grown by one LR px, not the crop
        assert (weights == 4.0).float().mean() < 0.5
    assert marked >= 5


def test_zoom_cuts_crops_from_the_photo_shrunk(tmp_path):
    # 1 px stripes: any 2x shrink averages each pair of stripes to one gray
    stripes = np.zeros((200, 300, 3), np.uint8)
    stripes[:, ::2] = 255
    f = tmp_path / "hr" / "stripes.png"
    write_image(f, stripes)
    degrade = make_degrader(Degradation(watermark="none", jpeg_quality=(100, 100)))

    def hr_crops(zoom):
        ds = TrainPairs([f], 64, 4, seed=2, degrade=degrade, lighting=0.0, zoom=zoom)
        return [to_image(ds[i][1]).astype(int) for i in range(6)]

    assert all(np.ptp(hr) == 255 for hr in hr_crops((1.0, 1.0)))
    assert all(np.abs(hr - 127.5).max() <= 1 for hr in hr_crops((0.5, 0.5)))
    # seeded by the sample's index, as every other draw
    first = TrainPairs([f], 64, 4, seed=2, degrade=degrade, zoom=(0.3, 1.0))
    again = TrainPairs([f], 64, 4, seed=2, degrade=degrade, zoom=(0.3, 1.0))
    assert all(torch.equal(first[i][1], again[i][1]) for i in range(4))


def test_zoom_sizes_the_text_window_on_the_shrunk_photo(tmp_path):
    # the 400 x 640 photo, LR 100 x 160, shrunk by half: its text is drawn on an LR 50 x 80
    halved = window_frames(tmp_path, 20, zoom=(0.5, 0.5))
    assert all((fw, fh) == (80, 50) for _, _, fw, fh in halved)
    assert all(0 <= x <= 80 - 8 and 0 <= y <= 50 - 8 for x, y, _, _ in halved)
    # a shrink below the crop's size is held at it: a square of the photo's whole height,
    # 400 px, shrunk to the 32 px crop (LR 8 x 12)
    held = window_frames(tmp_path, 20, zoom=(0.01, 0.01))
    assert all((fw, fh) == (12, 8) and y == 0 for _, y, fw, fh in held)
    # crops and windows inside shrunk photos of any size, whatever the rounding
    spread = window_frames(tmp_path, 300, zoom=(0.1, 1.0), watermark_window=12)
    assert all(0 <= x <= fw - 8 and 0 <= y <= fh - 8 for x, y, fw, fh in spread)

"""Image quality metrics: the SR protocol against scikit-image and published Set5 figures."""

from pathlib import Path

import cv2
import numpy as np
import piq
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipelines.imaging.images import list_images, read_rgb
from pipelines.imaging.resize import benchmark_lr, upscale
from pipelines.imaging.tensors import to_tensor
from pipelines.scoring import metrics
from pipelines.scoring.metrics import (
    HIGHER_IS_BETTER,
    PSNR_CAP,
    VggDistance,
    crop_border,
    psnr_y,
    rgb_to_y,
    score,
    ssim_y,
)

# the standard SR benchmark images, in the `shared` folder beside the checkout
SET5 = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "Set5"


@pytest.fixture(scope="module")
def butterfly():
    hr = read_rgb(f"{SET5}/butterfly.png")
    lr = cv2.resize(hr, (hr.shape[1] // 4, hr.shape[0] // 4), interpolation=cv2.INTER_AREA)
    return upscale(lr, 4, "bicubic"), hr


def test_luma_is_bt601_as_matlab():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(rgb)[0], [16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966])


def test_psnr_and_ssim_match_scikit_image(butterfly):
    sr, hr = butterfly
    a, b = crop_border(rgb_to_y(sr), 4), crop_border(rgb_to_y(hr), 4)
    assert psnr_y(sr, hr, 4) == pytest.approx(
        peak_signal_noise_ratio(b, a, data_range=255), abs=1e-9
    )
    expected = structural_similarity(
        b, a, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim_y(sr, hr, 4) == pytest.approx(expected, abs=1e-9)


def test_set5_bicubic_x4_reproduces_the_published_baseline():
    # Published (SRCNN, EDSR, ... tables): bicubic x4 on Set5 = 28.42 dB / 0.8104 on Y.
    psnrs, ssims = [], []
    for f in list_images(SET5):
        lr, hr = benchmark_lr(read_rgb(f), 4)
        sr = upscale(lr, 4, "matlab_bicubic")
        psnrs.append(psnr_y(sr, hr, 4))
        ssims.append(ssim_y(sr, hr, 4))
    assert np.mean(psnrs) == pytest.approx(28.42, abs=0.03)
    assert np.mean(ssims) == pytest.approx(0.8104, abs=0.002)


def test_identical_images_are_perfect_and_json_safe(butterfly):
    _, hr = butterfly
    s = score(hr, hr, 4)
    assert s["psnr_y"] == PSNR_CAP
    assert s["ssim_y"] == pytest.approx(1.0)
    assert s["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert s["gmsd"] == pytest.approx(0.0, abs=1e-6)
    assert s["haarpsi"] == pytest.approx(1.0, abs=1e-5)
    assert all(np.isfinite(v) for v in s.values())


def test_border_crop_removes_edge_errors(butterfly):
    _, hr = butterfly
    sr = hr.copy()
    sr[:4] = 0
    sr[:, -4:] = 255
    assert psnr_y(sr, hr, 0) < 25
    assert psnr_y(sr, hr, 4) == PSNR_CAP
    assert ssim_y(sr, hr, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="nothing left"):
        psnr_y(hr[:8, :8], hr[:8, :8], 4)


def test_every_metric_prefers_the_milder_degradation(butterfly):
    _, hr = butterfly

    def jpeg(q):
        ok, buf = cv2.imencode(".jpg", hr, [cv2.IMWRITE_JPEG_QUALITY, q])
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)

    mild, harsh = score(jpeg(90), hr, 4), score(jpeg(10), hr, 4)
    assert set(mild) == set(harsh) >= {"psnr_y", "ssim_y", "ms_ssim", "gmsd", "haarpsi"}
    for key in mild:
        assert (mild[key] > harsh[key]) == HIGHER_IS_BETTER[key], key


def test_ms_ssim_is_piq_standard_on_large_images_and_reduced_on_small(butterfly):
    sr, hr = butterfly
    x, y = to_tensor(sr)[None], to_tensor(hr)[None]
    assert metrics.ms_ssim(x, y) == pytest.approx(float(piq.multi_scale_ssim(x, y, data_range=1.0)))
    assert metrics.ms_ssim_levels(160, 300) == 4
    assert metrics.ms_ssim_levels(21, 21) == 2
    small = score(sr[:40, :60], hr[:40, :60], 4)  # 32x52 after the border: 2 scales
    assert 0 < small["ms_ssim"] < 1 and "haarpsi" in small
    tiny = score(sr[:20, :20], hr[:20, :20], 4)  # 12x12: SSIM fits, MS-SSIM and HaarPSI do not
    assert set(tiny) == {"psnr_y", "ssim_y", "gmsd"}


def test_no_learned_distance_without_imagenet_weights(tmp_path, monkeypatch, butterfly):
    monkeypatch.setattr(metrics, "vgg_weights_file", lambda: tmp_path / "vgg16_bn.pth")
    metrics._vgg_distance_model.cache_clear()
    try:
        assert not metrics.perceptual_available()
        assert "vgg_distance" not in score(*butterfly, 4)
    finally:
        metrics._vgg_distance_model.cache_clear()


def test_vgg_distance_is_zero_for_identical_and_symmetric():
    torch.manual_seed(0)
    features = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
    )
    dist = VggDistance(features, taps=(1, 3))
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    assert float(dist(x, x)) == pytest.approx(0.0, abs=1e-7)
    assert float(dist(x, y)) == pytest.approx(float(dist(y, x))) and float(dist(x, y)) > 0


def test_vgg_weights_file_in_torchvision_layout_is_loaded(tmp_path, monkeypatch, butterfly):
    # The layout check only: these weights are random, so the distance itself means nothing.
    from torchvision.models.vgg import cfgs, make_layers

    state = {
        f"features.{k}": v for k, v in make_layers(cfgs["D"], batch_norm=True).state_dict().items()
    }
    torch.save(state, tmp_path / "vgg16_bn.pth")
    monkeypatch.setattr(metrics, "vgg_weights_file", lambda: tmp_path / "vgg16_bn.pth")
    metrics._vgg_distance_model.cache_clear()
    try:
        assert metrics.perceptual_available()
        sr, hr = butterfly[0][:48, :48], butterfly[1][:48, :48]
        assert score(hr, hr, 4)["vgg_distance"] == pytest.approx(0.0, abs=1e-6)
        assert score(sr, hr, 4)["vgg_distance"] > 0
    finally:
        metrics._vgg_distance_model.cache_clear()

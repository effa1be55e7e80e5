import math

import pytest
import torch
from torch import nn

from pipelines.networks.colour import luma, with_luminance
from pipelines.networks.pretrained import IMAGENET_STD
from pipelines.scoring.losses import (
    GP_WEIGHT,
    FeatureLoss,
    OnLuminance,
    PixelLoss,
    build_content_loss,
    critic_logit_loss,
    critic_loss,
    generator_adv_loss,
    gradient_penalty,
    gram_matrix,
)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_pixel_losses_by_hand():
    x = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, 1, 2, 2)
    y = torch.zeros(1, 1, 2, 2)
    assert PixelLoss("l1")(x, y).item() == pytest.approx(1.75 / 4)
    assert PixelLoss("mse")(x, y).item() == pytest.approx(1.3125 / 4)
    assert PixelLoss("mse", weight=2.0)(x, y).item() == pytest.approx(1.3125 / 2)
    assert isinstance(build_content_loss("l1"), PixelLoss)
    with pytest.raises(ValueError, match="'huber'"):
        build_content_loss("huber")


def test_pixel_weights_scale_each_pixels_term():
    x = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, 1, 2, 2)
    y = torch.zeros(1, 1, 2, 2)
    w = torch.tensor([1.0, 1.0, 4.0, 1.0]).view(1, 1, 2, 2)
    assert PixelLoss("l1")(x, y, w).item() == pytest.approx((0.5 + 4.0 + 0.25) / 4)
    assert PixelLoss("mse")(x, y, w).item() == pytest.approx((0.25 + 4.0 + 0.0625) / 4)
    charbonnier = PixelLoss("charbonnier")
    assert charbonnier(x, y, w).item() == pytest.approx((0.5 + 4.0 + 0.25) / 4, abs=1e-3)
    # ones weigh nothing: the unweighted loss
    for kind in ("l1", "mse", "charbonnier"):
        loss = PixelLoss(kind)
        assert loss(x, y, torch.ones_like(w)).item() == pytest.approx(loss(x, y).item())
    # through the luminance and the perceptual term, the weights reach the pixel loss
    rgb, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    weights = torch.ones(2, 1, 8, 8)
    weights[:, :, :4] = 3.0
    on_luma = build_content_loss("l1", luminance=True)
    assert on_luma(rgb, target, weights).item() == pytest.approx(
        PixelLoss("l1")(luma(rgb), luma(target), weights).item(), rel=1e-5
    )
    assert on_luma(rgb, target, weights).item() > on_luma(rgb, target).item()


def test_gram_matrix_by_hand():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # c=2, h=1, w=2
    expected = torch.tensor([[5.0, 11.0], [11.0, 25.0]]) / 4
    torch.testing.assert_close(gram_matrix(f)[0], expected)


def test_bce_labels_every_patch():
    real = torch.full((2, 3), 2.0)  # 2 images, 3 patches each
    fake = torch.full((2, 3), -1.0)
    expected = 0.5 * (softplus(-2.0) + softplus(-1.0))
    assert critic_logit_loss("bce", real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert generator_adv_loss("bce", fake).item() == pytest.approx(softplus(1.0), rel=1e-6)
    zeros = torch.zeros(4, 25)
    assert critic_logit_loss("bce", zeros, zeros).item() == pytest.approx(math.log(2), rel=1e-6)


def test_wasserstein_losses_by_hand():
    real = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    fake = torch.tensor([[0.0, -2.0], [1.0, 1.0]])
    assert critic_logit_loss("wgan-gp", real, fake).item() == pytest.approx(0.0 - 2.0)
    assert generator_adv_loss("wgan-gp", fake).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="'wgan'"):
        generator_adv_loss("wgan", fake)


class LinearCritic(nn.Module):
    """D(x) = <w, x> in both of its 2 patches: grad_x of the patch mean is w, ||w|| = 3."""

    def __init__(self):
        super().__init__()
        w = torch.zeros(3, 4, 4)
        w[0, 0, 0], w[1, 2, 3], w[2, 1, 1] = 2.0, 2.0, 1.0
        self.w = nn.Parameter(w)

    def forward(self, x):
        score = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([score, score], dim=1)


def test_gradient_penalty_on_a_linear_critic():
    critic = LinearCritic()
    real, fake = torch.rand(5, 3, 4, 4), torch.rand(5, 3, 4, 4)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx((3.0 - 1.0) ** 2, rel=1e-5)
    # the penalty trains the critic: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    gp.backward()
    torch.testing.assert_close(critic.w.grad, 2 * 2 / 3 * critic.w.detach())
    loss = critic_loss("wgan-gp", critic, real, fake)
    by_hand = ((fake - real) * critic.w).sum(dim=(1, 2, 3)).mean() + GP_WEIGHT * 4.0
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_critic_loss_runs_the_critic_on_detached_fakes():
    critic = LinearCritic()
    fake = torch.rand(2, 3, 4, 4, requires_grad=True)
    loss = critic_loss("bce", critic, torch.rand(2, 3, 4, 4), fake)
    loss.backward()
    assert fake.grad is None and critic.w.grad is not None


@pytest.fixture(scope="module")
def random_vgg_loss():
    torch.manual_seed(0)
    return FeatureLoss(pretrained="none")


def test_feature_loss_vgg_is_frozen_and_stays_in_eval(random_vgg_loss):
    loss = random_vgg_loss.train()
    assert not loss.vgg.training
    assert not any(p.requires_grad for p in loss.vgg.parameters())
    taps = [loss.vgg[i] for i in (22, 32, 42)]
    assert all(isinstance(t, nn.ReLU) for t in taps) and isinstance(loss.vgg[21], nn.BatchNorm2d)
    assert [loss.vgg[i - 2].out_channels for i in (22, 32, 42)] == [256, 512, 512]


def test_feature_loss_pixel_term_is_on_normalised_pixels():
    loss = build_content_loss("feature", layer_weights=(0.0, 0.0, 0.0), pretrained="none")
    y = torch.rand(1, 3, 32, 32) * 0.8
    expected = 0.1 * sum(1 / s for s in IMAGENET_STD) / 3
    assert loss(y + 0.1, y).item() == pytest.approx(expected, rel=1e-5)


def test_feature_loss_matches_the_formula(random_vgg_loss):
    loss = random_vgg_loss
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, requires_grad=True), torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    nx, ny = (x - mean) / std, (y - mean) / std
    expected = (nx - ny).abs().mean()
    for w, end in zip((5.0, 15.0, 2.0), (23, 33, 43)):
        fx, fy = loss.vgg[:end](nx), loss.vgg[:end](ny)
        expected = expected + w * (fx - fy).abs().mean()
        gx = torch.einsum("nchw,ndhw->ncd", fx, fx) / fx[0].numel()
        gy = torch.einsum("nchw,ndhw->ncd", fy, fy) / fy[0].numel()
        expected = expected + w**2 * 5e3 * (gx - gy).abs().mean()
    value = loss(x, y)
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)
    assert loss(y, y).item() == 0.0
    value.backward()
    assert x.grad.abs().sum() > 0


def test_feature_loss_refuses_pixel_weights(random_vgg_loss):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="pixel weights only weigh a pixel loss"):
        random_vgg_loss(x, x, torch.ones(1, 1, 32, 32))


def test_feature_loss_without_gram_and_with_a_weight(random_vgg_loss):
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with_gram = random_vgg_loss(x, y).item()
    random_vgg_loss.gram, random_vgg_loss.weight = False, 2.0
    try:
        without = random_vgg_loss(x, y).item()
        random_vgg_loss.weight = 1.0
        assert 2 * random_vgg_loss(x, y).item() == pytest.approx(without)
    finally:
        random_vgg_loss.gram, random_vgg_loss.weight = True, 1.0
    assert without / 2 < with_gram


def test_a_luminance_loss_ignores_chroma():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 8, 8) * 0.6 + 0.2
    other_colour = with_luminance(torch.rand(2, 3, 8, 8), luma(target))
    loss = build_content_loss("l1", luminance=True)
    assert isinstance(loss, OnLuminance)
    assert loss(other_colour, target).item() == pytest.approx(0.0, abs=1e-6)
    assert build_content_loss("l1")(other_colour, target).item() > 0.01


def test_with_the_input_chroma_only_the_luminance_loss_is_least_at_the_true_luminance():
    # one pixel whose output chroma (the input's) is off: R far too high, G and B a bit low
    target = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    wrong_chroma = target + torch.tensor([0.2, -0.05, -0.05]).view(1, 3, 1, 1)
    offsets = torch.linspace(-0.1, 0.1, 201)

    def best(loss):
        values = [loss(with_luminance(wrong_chroma, luma(target) + d), target) for d in offsets]
        return offsets[int(torch.stack(values).argmin())].item()

    assert best(build_content_loss("l1", luminance=True)) == pytest.approx(0.0, abs=1e-3)
    assert abs(best(build_content_loss("l1"))) > 0.01  # over RGB the chroma pulls it off

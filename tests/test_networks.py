import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from pipelines.networks import build_critic, build_generator, freeze_encoder, param_groups, upsample
from pipelines.networks.layers import Blur, PixelShuffleICNR, SelfAttention
from pipelines.networks.unet import EPS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_generator(**kw) -> nn.Module:
    return build_generator(**{"encoder": "resnet18", **kw})


@pytest.fixture(scope="module")
def generator():
    """The default generator on resnet18, for tests that only inspect it."""
    torch.manual_seed(0)
    return small_generator()


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_generator_output_size_for_odd_inputs(scale):
    model = small_generator(scale=scale).eval()
    with torch.no_grad():
        for h, w in [(37, 29), (16, 16)]:
            y = model(torch.rand(1, 3, h, w))
            assert y.shape == (1, 3, h * scale, w * scale)


def test_generator_rejects_tiny_inputs_and_unknown_scales():
    with pytest.raises(ValueError, match="15x40"):
        small_generator(scale=2)(torch.rand(1, 3, 15, 40))
    with pytest.raises(ValueError, match="scale"):
        small_generator(scale=3)


def test_untrained_generator_is_bicubic_upsampling():
    model = small_generator(scale=4).train()
    x = torch.rand(2, 3, 21, 18)
    x[0, :, :4] = 0.0  # flat black and white areas, where bicubic is clamped
    x[1, :, -4:] = 1.0
    y = model(x)
    expected = upsample(x, 4).clamp(EPS, 1 - EPS)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    assert y.min() > 0 and y.max() < 1


def test_encoder_stem_gets_gradient_through_the_skips():
    model = small_generator(scale=1).train()
    nn.init.normal_(model.to_residual.weight, std=0.1)  # zero-initialised: would block all grads
    # Cut the main path after layer1: the stem and layer1 now reach the output only through
    # their skip connections, so a detached skip leaves them without gradient.
    model.encoder.layer2.register_forward_hook(lambda m, inp, out: out.detach())
    model(torch.rand(2, 3, 32, 32)).square().mean().backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.encoder.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert model.encoder.layer2[0].conv1.weight.grad is None  # the cut holds


@pytest.mark.parametrize("norm", ["weight", "spectral", "none"])
def test_icnr_starts_as_nearest_upsampling(norm):
    up = PixelShuffleICNR(8, 4, blur=False, norm=norm).eval()  # eval: spectral norm stays put
    x = torch.randn(2, 8, 5, 6)
    y = up(x)
    assert y.shape == (2, 4, 10, 12) and y.abs().sum() > 0
    # every 2x2 block holds one value: the four sub-pixel filters of a channel are one filter
    for dy, dx in [(0, 1), (1, 0), (1, 1)]:
        torch.testing.assert_close(y[..., dy::2, dx::2], y[..., 0::2, 0::2], atol=0, rtol=0)
    # ... and that value is the 1x1 conv by the shared filter, upsampled nearest
    w, b = up.conv.weight.detach(), up.conv.bias.detach()
    low = F.relu(F.conv2d(x, w[0::4], b[0::4]))
    torch.testing.assert_close(y, F.interpolate(low, scale_factor=2, mode="nearest"))


def test_icnr_survives_weight_norm():
    up = PixelShuffleICNR(8, 4, norm="weight")
    g = up.conv.parametrizations.weight.original0
    v = up.conv.parametrizations.weight.original1
    torch.testing.assert_close(g.flatten(), v.flatten(1).norm(dim=1))
    torch.testing.assert_close(up.conv.weight, v)


def test_blur_flag_switches_the_blur(generator):
    assert isinstance(PixelShuffleICNR(8, blur=True).blur, Blur)
    assert isinstance(PixelShuffleICNR(8, blur=False).blur, nn.Identity)
    x = torch.rand(2, 3, 7, 9)
    reference = nn.Sequential(nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, stride=1))
    torch.testing.assert_close(Blur()(x), reference(x))

    def blurs(model):
        return [isinstance(up.blur, Blur) for up in list(model.up) + [b.shuf for b in model.blocks]]

    assert not any(blurs(small_generator(blur=False)))
    assert all(blurs(generator))
    no_final = small_generator(blur=True, blur_final=False)
    assert (
        not isinstance(no_final.up[-1].blur, Blur)
        and sum(blurs(no_final)) == len(blurs(no_final)) - 1
    )


def test_self_attention_starts_as_identity_and_matches_sagan():
    sa = SelfAttention(16).eval()
    assert sa.gamma.item() == 0
    x = torch.randn(2, 16, 5, 3)
    torch.testing.assert_close(sa(x), x)
    with torch.no_grad():
        sa.gamma.fill_(0.5)
    flat = x.flatten(2)
    f, g, h = sa.query(flat), sa.key(flat), sa.value(flat)
    beta = torch.softmax(torch.bmm(f.transpose(1, 2), g), dim=1)
    expected = (0.5 * torch.bmm(h, beta) + flat).view_as(x)
    torch.testing.assert_close(sa(x), expected, atol=1e-5, rtol=1e-5)


def test_self_attention_sits_in_the_third_from_last_block(generator):
    model = generator
    has = [any(isinstance(m, SelfAttention) for m in b.modules()) for b in model.blocks]
    assert has == [False, True, False, False]
    assert not any(
        isinstance(m, SelfAttention) for m in small_generator(self_attention=False).modules()
    )


@pytest.mark.parametrize("norm", ["weight", "spectral", "none"])
def test_arch_rebuilds_the_network(norm):
    model = small_generator(scale=1, norm=norm, blur_final=False)
    arch = json.loads(json.dumps(model.arch))
    rebuilt = build_generator(**arch)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        nn.init.normal_(model.to_residual.weight, std=0.1)
        rebuilt.load_state_dict(model.state_dict())
        torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_freeze_encoder_keeps_batchnorm_trainable(generator):
    model = generator
    freeze_encoder(model)
    enc = model.encoder
    assert not enc.conv1.weight.requires_grad and not enc.layer4[1].conv2.weight.requires_grad
    assert enc.bn1.weight.requires_grad and enc.layer3[0].bn1.bias.requires_grad
    decoder = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    assert all(p.requires_grad for p in decoder)
    freeze_encoder(model, False)
    assert all(p.requires_grad for p in model.parameters())


def test_param_groups_cover_every_parameter_once(generator):
    model = generator
    groups = param_groups(model)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    assert names[id(model.encoder.conv1.weight)] in {names[id(p)] for p in groups[0]}
    assert all(names[id(p)].startswith(("encoder.layer3", "encoder.layer4")) for p in groups[1])
    assert not any(names[id(p)].startswith("encoder.") for p in groups[2])


def test_critic_convs_are_all_spectral_normed_without_batchnorm():
    critic = build_critic(nf=16)
    convs = [m for m in critic.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert len(convs) >= 9
    for m in convs:
        assert parametrize.is_parametrized(m, "weight")
        assert "spectral" in type(m.parametrizations.weight[0]).__name__.lower()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    assert critic.final.bias is None


def test_critic_patch_logits():
    critic = build_critic(nf=16).eval()
    with torch.no_grad():
        assert critic(torch.rand(2, 3, 128, 128)).shape == (2, 25)
        assert critic(torch.rand(2, 3, 64, 64)).shape == (2, 1)
        assert critic(torch.rand(2, 3, 32, 48)).shape[1] >= 1
    with pytest.raises(ValueError, match="31x64"):
        critic(torch.rand(1, 3, 31, 64))
    assert build_critic(nf=8, n_blocks=2)(torch.rand(1, 3, 16, 16)).shape == (1, 1)


# the two generator kinds, small
each_restorer = pytest.mark.parametrize(
    "arch",
    [{"encoder": "resnet18"}, {"kind": "srresnet", "channels": 8, "blocks": 2}],
    ids=["unet", "srresnet"],
)


@each_restorer
def test_a_restorer_returns_a_gray_photo_gray_and_a_colour_one_in_colour(arch):
    torch.manual_seed(0)
    net = build_generator(scale=2, **arch).eval()
    for p in net.parameters():  # trained-like: the untrained output is plain bicubic
        torch.nn.init.normal_(p, std=0.05)
    colour = torch.rand(1, 3, 32, 32)
    # a JPEG round trip leaves a gray photo's channels a level apart
    gray = colour.mean(1, keepdim=True).repeat(1, 3, 1, 1)
    gray[:, 0] += 1 / 255
    with torch.no_grad():
        out_gray, out_colour, both = net(gray), net(colour), net(torch.cat([gray, colour]))
    assert (out_gray.amax(1) - out_gray.amin(1)).max() < 1e-6
    assert (out_colour.amax(1) - out_colour.amin(1)).mean() > 0.05
    # decided per image: a colour photo in the batch leaves the gray one gray
    assert torch.allclose(both, torch.cat([out_gray, out_colour]), atol=1e-5)


def test_restored_keeps_the_luminance_and_leaves_colour_inputs_alone():
    from pipelines.networks.colour import GRAY_SPREAD, luma, restored

    torch.manual_seed(0)
    out = torch.rand(2, 3, 8, 8)
    seen = torch.rand(2, 3, 4, 4)
    seen[0] = seen[0, :1] + torch.tensor([0.0, GRAY_SPREAD / 2, 0.0]).view(3, 1, 1)
    got = restored(out, seen, upsample(seen, 2))
    assert torch.allclose(luma(got), luma(out), atol=1e-6)
    assert torch.equal(got[0], luma(out[:1])[0].expand(3, -1, -1))
    assert torch.equal(got[1], out[1])


def test_with_chroma_keeps_the_colour_exactly_and_moves_the_luminance_into_range():
    from pipelines.networks.colour import luma, with_chroma

    torch.manual_seed(1)
    rgb = torch.rand(2, 3, 16, 16)
    # luminance from far below 0 to far above 1: most pixels cannot keep it
    y = torch.linspace(-0.5, 1.5, 16 * 16).view(1, 1, 16, 16).expand(2, -1, -1, -1)
    got = with_chroma(rgb, y)
    assert got.min() >= -1e-6 and got.max() <= 1 + 1e-6
    assert torch.allclose(got - luma(got), rgb - luma(rgb), atol=1e-6)
    # where luminance plus chroma fits, the luminance is y's
    chroma = rgb - luma(rgb)
    fits = ((y + chroma >= 0) & (y + chroma <= 1)).all(dim=1, keepdim=True)
    assert fits.any() and (~fits).any()
    assert torch.allclose(luma(got)[fits], y[fits], atol=1e-6)
    # elsewhere it is the nearest luminance that fits: one channel sits at 0 or 1
    edge = (got <= 1e-6) | (got >= 1 - 1e-6)
    assert edge.any(dim=1, keepdim=True)[~fits].all()


@each_restorer
def test_a_restorer_with_input_chroma_restores_the_luminance_on_the_inputs_colour(arch):
    from pipelines.networks.colour import luma

    torch.manual_seed(0)
    net = build_generator(scale=2, chroma="input", **arch).eval()
    ours = build_generator(scale=2, **arch).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    ours.load_state_dict(net.state_dict())
    # mid-range colours, so luminance plus chroma stays inside [0, 1]
    x = 0.35 + 0.3 * F.avg_pool2d(torch.rand(2, 3, 34, 34), 3, stride=1)
    with torch.no_grad():
        got, own = net(x), ours(x)
    base = upsample(x, 2)
    # the luminance is the network's, the chroma the bicubic input's
    assert torch.allclose(luma(got), luma(own).clamp(0, 1), atol=1e-5)
    assert torch.allclose(got - luma(got), base - luma(base), atol=1e-5)
    assert not torch.allclose(own - luma(own), base - luma(base), atol=1e-3)
    assert net.arch["chroma"] == "input" and "chroma" not in ours.arch
    again = build_generator(**net.arch).eval()
    again.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x), got)


def test_input_chroma_is_a_restorers_only():
    with pytest.raises(ValueError, match="chroma: 'input' is a restorer's"):
        build_generator(kind="srresnet", channels=8, blocks=1, task="colorize", chroma="input")
    with pytest.raises(ValueError, match="chroma: 'inputs' is not one of network, input"):
        build_generator(kind="srresnet", channels=8, blocks=1, chroma="inputs")

import logging

import pytest
import torch
import torchvision

from pipelines.networks import build_generator, pretrained
from pipelines.networks.pretrained import PretrainedError, imagenet_file
from pipelines.networks.unet import ResNetEncoder
from pipelines.scoring.losses import FeatureLoss


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, downloads not allowed, and no warning given yet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(pretrained.ALLOW_DOWNLOAD_ENV, raising=False)
    monkeypatch.setattr(pretrained, "_warned", set())


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(3)
    return torchvision.models.resnet18(weights=None).state_dict()


def assert_encoder_holds(encoder, state):
    own = encoder.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for key, value in own.items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0)


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_encoder_weights_from_a_file(tmp_path, resnet18_state, wrap):
    path = tmp_path / "encoder.pth"
    torch.save(resnet18_state if wrap is None else {wrap: resnet18_state, "step": 3}, path)
    assert_encoder_holds(ResNetEncoder("resnet18", pretrained=str(path)), resnet18_state)


def test_imagenet_weights_come_from_the_hub_cache(resnet18_state):
    url, path = imagenet_file("resnet18")
    assert path.name == "resnet18-f37072fd.pth" and url.endswith(path.name)
    assert str(path).startswith(torch.hub.get_dir())
    path.parent.mkdir(parents=True)
    torch.save(resnet18_state, path)
    assert_encoder_holds(
        build_generator(encoder="resnet18", pretrained="imagenet").encoder, resnet18_state
    )


def test_missing_imagenet_weights_warn_once_per_network(caplog):
    caplog.set_level(logging.WARNING, logger="pipelines.networks.pretrained")
    for _ in range(2):
        assert pretrained.state_dict_for("resnet18", "imagenet") is None
    FeatureLoss(pretrained="imagenet")
    FeatureLoss(pretrained="imagenet")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "ImageNet weights for resnet18 not found at" in messages[0]
    assert str(imagenet_file("resnet18")[1]) in messages[0]
    assert "random initialisation" in messages[0] and "vgg16_bn" in messages[1]


def test_vgg_weights_skip_the_classifier(tmp_path):
    torch.manual_seed(4)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    loaded = FeatureLoss(pretrained=str(path))
    for key, value in loaded.vgg.state_dict().items():
        torch.testing.assert_close(value, state[f"features.{key}"], atol=0, rtol=0)


class Planted:
    """Unpickling this would call a function of the file's choosing."""

    def __reduce__(self):
        return (print, ("code run while loading weights",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Planted()}, path)
    with pytest.raises(PretrainedError, match="refused"):
        ResNetEncoder("resnet18", pretrained=str(path))
    assert "code run" not in capsys.readouterr().out
    torch.save({"conv1.weight": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(PretrainedError, match="non-tensor entries: note"):
        ResNetEncoder("resnet18", pretrained=str(path))


def test_weights_that_do_not_fit_are_named(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedError) as err:
        ResNetEncoder("resnet18", pretrained=str(path))
    message = str(err.value)
    assert "missing keys: layer4.1.bn2.weight" in message
    assert "unexpected keys: extra.weight" in message
    assert "conv1.weight (64, 3, 3, 3) vs (64, 3, 7, 7)" in message
    with pytest.raises(PretrainedError, match="not found"):
        ResNetEncoder("resnet18", pretrained=str(tmp_path / "absent.pth"))

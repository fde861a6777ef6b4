"""The model registry: six architectures, heads, preprocessing, Grad-CAM targets, weights offline."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from her2scope.errors import ConfigError, WeightsError
from her2scope.models import (
    cam_target,
    create_model,
    get_spec,
    list_models,
    model_preprocessing,
    register_model,
    split_outputs,
)
from her2scope.models.registry import _REGISTRY, INCEPTION_AUX_WEIGHT, torchvision_cache_file
from tests.slow import models_marked


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test here may download: empty caches and a download function that fails."""

    def no_download(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"offline test: refused to download {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    import huggingface_hub.constants

    # read at import time by huggingface_hub, so set the constant too (timm downloads through it)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", models_marked(list_models()))
def test_builds_and_takes_a_training_step_at_its_minimum_size(name: str) -> None:
    torch.manual_seed(0)
    px = get_spec(name).min_input_px
    model = create_model(name, 3, pretrained=False, input_px=px)
    layer, reshape = cam_target(model, name)
    assert any(m is layer for m in model.modules())
    acts: list[torch.Tensor] = []
    layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    x = torch.rand(2, 3, px, px)
    y = torch.tensor([0, 2])
    model.train()
    logits, aux = split_outputs(model(x))
    assert logits.shape == (2, 3)
    assert aux is None  # inception's auxiliary head is dropped below 299 px
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert changed > 0
    # the Grad-CAM target gives a [B, C, h, w] map once reshaped
    cam = reshape(acts[0]) if reshape is not None else acts[0]
    assert cam.ndim == 4 and cam.shape[0] == 2
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_swin_cam_reshape_is_nhwc_to_nchw() -> None:
    model = create_model("swin_t", 4, input_px=64).eval()
    layer, reshape = cam_target(model, "swin_t")
    acts: list[torch.Tensor] = []
    layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    assert acts[0].shape == (1, 2, 2, 768)  # 64 px / 32 = 2 tokens a side, 768 channels last
    assert reshape is not None
    torch.testing.assert_close(reshape(acts[0])[0, :, 1, 0], acts[0][0, 1, 0, :])


@pytest.mark.slow
def test_inception_aux_logits_in_training_at_full_size() -> None:
    model = create_model("inception_v3", 3, input_px=299)
    model.train()
    logits, aux = split_outputs(model(torch.rand(2, 3, 299, 299)))
    assert logits.shape == (2, 3) and aux is not None and aux.shape == (2, 3)
    assert 0 < INCEPTION_AUX_WEIGHT < 1  # the auxiliary loss is a minor term
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 299, 299))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3)


def test_timm_model_and_its_preprocessing() -> None:
    model = create_model("timm:test_resnet", 5)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 5)
    layer, reshape = cam_target(model, "timm:test_resnet")
    assert any(m is layer for m in model.modules()) and reshape is None
    # preprocessing is read from the weights' metadata, not a constant
    mean, std = model_preprocessing("timm:vit_base_patch16_224.augreg_in21k")
    np.testing.assert_allclose(mean, (0.5, 0.5, 0.5))
    np.testing.assert_allclose(std, (0.5, 0.5, 0.5))
    mean, std = model_preprocessing("resnet34")
    np.testing.assert_allclose(mean, (0.485, 0.456, 0.406))
    np.testing.assert_allclose(std, (0.229, 0.224, 0.225))


def test_bad_names_and_sizes() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet35'; choose one of alexnet"):
        create_model("resnet35", 3)
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_net'"):
        create_model("timm:no_such_net", 3)
    with pytest.raises(ConfigError, match="inception_v3' needs input_px >= 75, got 64"):
        create_model("inception_v3", 3, input_px=64)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        create_model("resnet34", 1)


def test_pretrained_offline_without_cache_names_the_file(tmp_path: Path) -> None:
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    assert torchvision_cache_file("resnet34") == expected
    with pytest.raises(WeightsError) as exc:
        create_model("resnet34", 3, pretrained=True)
    msg = str(exc.value)
    assert f"Expected file: {expected}" in msg
    assert "TORCH_HOME" in msg and "train.pretrained=false" in msg
    with pytest.raises(WeightsError, match="pretrained weights for 'timm:test_resnet'"):
        create_model("timm:test_resnet", 3, pretrained="true")


def test_pretrained_auto_falls_back_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="her2scope.models.registry"):
        model = create_model("resnet34", 3, pretrained="auto")
    assert model.fc.out_features == 3
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "using random initialisation" in notices[0]
    assert "resnet34-b627a593.pth" in notices[0]


@pytest.mark.slow
def test_pretrained_from_cache_and_from_local_file(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(3)
    imagenet = torchvision.models.densenet121(weights=None)  # stands in for the real weights
    state = imagenet.state_dict()
    cache = torchvision_cache_file("densenet121")
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)
    model = create_model("densenet121", 3, pretrained=True)
    torch.testing.assert_close(
        model.features.conv0.weight, state["features.conv0.weight"], rtol=0, atol=0
    )
    assert model.classifier.weight.shape == (3, 1024)  # new head, not the 1000-class one

    local = tmp_path / "my_weights.pt"
    torch.save({"model_state": create_model("densenet121", 3).state_dict()}, local)
    from_file = create_model("densenet121", 3, pretrained=str(local))
    saved = torch.load(local, weights_only=True)["model_state"]
    for key in ("features.denseblock1.denselayer1.conv1.weight", "classifier.weight"):
        torch.testing.assert_close(from_file.state_dict()[key], saved[key], rtol=0, atol=0)

    with pytest.raises(
        WeightsError, match=r"weights file '.*resnet.pt' does not fit model 'densenet121'"
    ):
        torch.save(create_model("resnet34", 3).state_dict(), tmp_path / "resnet.pt")
        create_model("densenet121", 3, pretrained=tmp_path / "resnet.pt")
    with pytest.raises(WeightsError, match="not found"):
        create_model("densenet121", 3, pretrained=tmp_path / "absent.pt")


@pytest.mark.parametrize("name", list_models())
def test_below_the_minimum_size_is_refused_before_building(name: str) -> None:
    px = get_spec(name).min_input_px - 1
    with pytest.raises(ConfigError, match=f"model '{name}' needs input_px >= {px + 1}, got {px}"):
        create_model(name, 3, input_px=px)


@pytest.mark.parametrize("name", models_marked(["alexnet", "vgg16"]))
def test_plain_cnn_cam_layer_is_the_relu_after_the_last_conv(name: str) -> None:
    model = create_model(name, 3)
    layer, reshape = cam_target(model, name)
    features = list(model.features)
    last_conv = max(i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d))
    assert layer is features[last_conv + 1] and isinstance(layer, torch.nn.ReLU)
    assert reshape is None


def test_preprocessing_comes_with_the_record() -> None:
    from her2scope.models import preprocessing

    pre = preprocessing("inception_v3")
    assert pre.input_px == 299  # its weights' crop size
    assert (pre.mean, pre.std) == model_preprocessing("inception_v3")
    assert preprocessing("swin_t").input_px == 224


def test_cli_model_lists_are_the_registry() -> None:
    from her2scope.cli.run import parse_models
    from her2scope.engine.config import TrainConfig

    assert list_models() == (
        "alexnet",
        "vgg16",
        "resnet34",
        "densenet121",
        "inception_v3",
        "swin_t",
    )  # the study's six, in the paper's order
    assert parse_models("all") == list(list_models())
    assert TrainConfig(models=list_models(), input_px=75).problems() == []


def test_adding_a_model_is_one_decorated_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model registered in one place is built, gets its head replaced, has a CAM layer and is
    offered by ``--models all`` without any other edit."""
    from torch import nn

    from her2scope.cli.run import parse_models

    monkeypatch.setattr("her2scope.models.registry._REGISTRY", dict(_REGISTRY))

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(4, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x).mean(dim=(2, 3)))

    @register_model(heads=("head",), cam_layer="body.1", min_input_px=8)
    def toy_net(weights: object, input_px: int | None) -> nn.Module:
        return Toy()

    model = create_model("toy_net", 3, input_px=8)
    assert model.head.out_features == 3 and model(torch.rand(2, 3, 8, 8)).shape == (2, 3)
    layer, reshape = cam_target(model, "toy_net")
    assert layer is model.body[1] and reshape is None
    assert parse_models("all")[-1] == "toy_net"
    with pytest.raises(ValueError, match="'toy_net' is registered twice"):
        register_model(heads=("head",), cam_layer="body.1")(toy_net)
    with pytest.raises(ConfigError, match="needs input_px >= 8, got 7"):
        create_model("toy_net", 3, input_px=7)


@pytest.mark.parametrize("name,objective", [("alexnet", "softmax"), ("resnet34", "ordinal")])
def test_loading_weights_without_random_init_gives_the_same_model(
    name: str, objective: str
) -> None:
    """engine.checkpoint._model_holding (meta device, then the state copied into empty memory)
    equals building randomly and loading the state: every tensor, BatchNorm buffers included,
    and the outputs; a state that does not cover every tensor is left to the general way."""
    from types import SimpleNamespace

    from her2scope.engine.checkpoint import _model_holding

    torch.manual_seed(0)
    ref = create_model(name, 3, input_px=64, objective=objective).eval()
    with torch.no_grad():  # non-default buffers, so a stale running mean/var would show
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    meta = SimpleNamespace(
        model_name=name,
        classes=("1+", "2+", "3+"),
        input_px=64,
        config=SimpleNamespace(train=SimpleNamespace(objective=objective)),
    )
    got = _model_holding(meta, state)  # type: ignore[arg-type]
    assert got is not None
    got.eval()
    for (k, a), (k2, b) in zip(ref.state_dict().items(), got.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert all(p.requires_grad and p.device.type == "cpu" for p in got.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(got(x), ref(x), rtol=0, atol=0)
    partial = dict(state)
    partial.pop(next(iter(partial)))
    assert _model_holding(meta, partial) is None  # missing a tensor: not built this way

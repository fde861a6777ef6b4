"""Grad-CAM: exact values on a hand-built model, and a valid map for each of the six architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from her2scope.explain.gradcam import cam_for_layer, grad_cam, overlay
from her2scope.explain.stitch import stitch_cams
from tests.slow import models_marked


class _Probe(nn.Module):
    """x → A = red channel (1×1 conv) → global mean → logits (A, -A)."""

    def __init__(self, channels_last: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
        self.channels_last = channels_last
        self.layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        if self.channels_last:
            a = self.layer(a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            a = self.layer(a)
        m = a.mean(dim=(1, 2, 3))
        return torch.stack([m, -m], dim=1)


def test_cam_values_on_a_known_model() -> None:
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, :4, :] = 2.0  # top half positive
    x[0, 0, 4:, :] = -1.0  # bottom half negative
    model = _Probe()
    cam0 = cam_for_layer(model, model.layer, x, target=0)[0]
    cam1 = cam_for_layer(model, model.layer, x, target=1)[0]
    # class 0 weights A positively: CAM = relu(A) / max = 1 on top, 0 below
    np.testing.assert_allclose(cam0[:3], 1.0, atol=1e-6)
    np.testing.assert_allclose(cam0[5:], 0.0, atol=1e-6)
    # class 1 weights A negatively: evidence is the negative bottom half
    np.testing.assert_allclose(cam1[:3], 0.0, atol=1e-6)
    np.testing.assert_allclose(cam1[5:], 1.0, atol=1e-6)


def test_channels_last_layer_needs_and_gets_the_reshape() -> None:
    from her2scope.models.registry import nhwc_to_nchw

    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, :, :4] = 1.0  # left half
    model = _Probe(channels_last=True)
    cam = cam_for_layer(model, model.layer, x, target=0, reshape=nhwc_to_nchw)[0]
    np.testing.assert_allclose(cam[:, :3], 1.0, atol=1e-6)
    np.testing.assert_allclose(cam[:, 5:], 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="target class out of range"):
        cam_for_layer(model, model.layer, x, target=5, reshape=nhwc_to_nchw)


# Inputs: small but large enough that the CAM layer has more than one position
# (inception_v3's Mixed_7c is 1×1 below ~107 px; 128 px gives 2×2).
SIZES = {
    "alexnet": 64,
    "vgg16": 64,
    "resnet34": 64,
    "densenet121": 64,
    "inception_v3": 128,
    "swin_t": 64,
}


@pytest.mark.parametrize("name", models_marked(list(SIZES)))
def test_cam_for_each_architecture(name: str) -> None:
    from her2scope.models import create_model

    px = SIZES[name]
    # Random weights; seed fixed because a random network may hold no positive evidence for a
    # class at all, and an all-zero map is then the correct Grad-CAM answer.
    torch.manual_seed(1)
    model = create_model(name, 3, pretrained=False, input_px=px)
    model.train()
    x = torch.randn(2, 3, px, px, generator=torch.Generator().manual_seed(2))
    cam = grad_cam(model, name, x)
    assert model.training  # mode restored
    assert cam.shape == (2, px, px)
    assert cam.dtype == np.float32
    assert np.all(np.isfinite(cam))
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    for m in cam:
        assert m.std() > 0.01, f"{name}: CAM is constant"
        assert m.max() == pytest.approx(1.0)
    # explaining a given class per image also works
    cam_t = grad_cam(model, name, x, target=[0, 2])
    assert cam_t.shape == (2, px, px)


@pytest.mark.parametrize("name", models_marked(["resnet34", "swin_t"]))
def test_matches_pytorch_grad_cam(name: str) -> None:
    """pytorch-grad-cam (the reference implementation, a dev dependency) gives the same maps on
    the registry's CAM layer and reshape. It rescales by min-max where we divide by the maximum,
    so both are compared min-max rescaled (the same affine family of one map)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from her2scope.models import cam_target, create_model

    torch.manual_seed(1)  # seeds of test_cam_for_each_architecture: maps with evidence
    model = create_model(name, 3, input_px=96).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        targets = model(x).argmax(dim=1).tolist()
    ours = grad_cam(model, name, x, target=targets)
    layer, reshape = cam_target(model, name)
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as ref:
        theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])

    def minmax(m: np.ndarray) -> np.ndarray:
        return (m - m.min()) / (m.max() - m.min())

    for a, b in zip(ours, theirs, strict=True):
        assert a.max() - a.min() > 0.1  # a map with structure, not a constant
        np.testing.assert_allclose(minmax(a), minmax(b), atol=1e-5)


def test_overlay_and_stitch() -> None:
    rgb = np.full((4, 4, 3), 200, np.uint8)
    out = overlay(rgb, np.zeros((4, 4)), alpha=0.5)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    cams = np.stack([np.full((8, 8), 1.0), np.full((8, 8), 0.5)]).astype(np.float32)
    xy = np.array([[0, 0], [16, 0]])  # level-0 px; tiles 32 px wide, overlapping by 16
    m = stitch_cams(cams, xy, 32, (4, 8), downsample=8.0)
    np.testing.assert_allclose(m[:, 0:2], 1.0)
    np.testing.assert_allclose(m[:, 2:4], 0.75)  # overlap averages
    np.testing.assert_allclose(m[:, 4:6], 0.5)
    assert np.isnan(m[:, 6:]).all()  # no tile there

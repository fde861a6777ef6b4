"""Grad-CAM for every registry model, with the target layer and reshape from ``cam_target``.

A small own implementation (forward hook + ``torch.autograd.grad``) rather than pytorch-grad-cam:
it handles layers whose output is modified in place afterwards (DenseNet's final ReLU, the
AlexNet/VGG in-place ReLUs) and Swin's channels-last ``[B, H, W, C]`` token maps, where the
package's defaults need per-model workarounds. The package is the reference in the tests
(``tests/unit/test_gradcam.py``: same maps on the registry's CAM layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn


def _target_index(logits: Any, target: Any) -> Any:
    """Class index per batch item: the arg-max (``None``), one class for all (int), or one each.

    Raises ``ValueError`` for a wrong number of targets or a class out of range.
    """
    import torch

    b = logits.shape[0]
    if target is None:
        idx = logits.argmax(dim=1)
    elif isinstance(target, int):
        idx = torch.full((b,), int(target), dtype=torch.long, device=logits.device)
    else:
        idx = torch.as_tensor(list(target), dtype=torch.long, device=logits.device)
        if idx.numel() != b:
            raise ValueError(f"{idx.numel()} targets for a batch of {b}")
    if int(idx.min()) < 0 or int(idx.max()) >= logits.shape[1]:
        raise ValueError(f"target class out of range 0..{logits.shape[1] - 1}")
    return idx


def grad_cam(
    model: nn.Module,
    model_name: str,
    x: torch.Tensor,
    target: int | Sequence[int] | None = None,
) -> np.ndarray:
    """Grad-CAM maps ``[B, H, W]`` (float32 in [0, 1], the input's H × W) for input batch ``x``.

    ``x`` is the model input ([B, 3, H, W], already normalised). ``target`` is the class explained
    (one int for all, one per image, or ``None`` for each image's predicted class). Each map is
    ReLU(Σ_c w_c A_c) upsampled bilinearly and divided by its maximum; a map with no positive
    evidence stays all zeros. The model is run in eval mode and left in the mode it had.
    """
    from her2scope.models import cam_target, split_outputs

    layer, reshape = cam_target(model, model_name)
    return cam_for_layer(model, layer, x, target, reshape, split_outputs)


def cam_for_layer(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | None = None,
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
    split: Callable[[object], tuple[torch.Tensor, object]] | None = None,
) -> np.ndarray:
    """Grad-CAM on an explicit ``layer`` (see :func:`grad_cam`)."""
    import torch
    import torch.nn.functional as F

    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        store["act"] = out

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(False)
            out = model(x)
            logits = split(out)[0] if split is not None else out
            idx = _target_index(logits, target)
            act = store["act"]
            score = logits.gather(1, idx.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = act.detach(), grad.detach()
    if reshape is not None:
        act, grad = reshape(act), reshape(grad)
    if act.ndim != 4:
        raise ValueError(
            f"CAM layer output must be [B, C, H, W] after reshape, got {tuple(act.shape)}"
        )
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act.float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    cam = torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam))
    return cam.clamp_(0, 1).cpu().numpy().astype(np.float32)


#: Explanation methods: ``gradcam`` (last block, coarse: one value per 8-32 input px) and
#: ``input_x_gradient`` (per input pixel, resolves membranes; see docs/explain.md).
CAM_METHODS: tuple[str, ...] = ("gradcam", "input_x_gradient")


def input_x_gradient(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | None = None,
    baseline: torch.Tensor | None = None,
    smooth_px: float = 1.0,
) -> np.ndarray:
    """Per-pixel evidence ``ReLU(Σ_c (x − baseline)_c · ∂y_target/∂x_c)`` for ``x`` ([B, 3, H, W]).

    Computed on the model input itself (no upsampling), so a structure one or two input pixels
    wide (a membrane at the model's µm/px) can stand out. ``baseline`` (broadcastable to ``x``,
    in the same normalised space; None: zeros, the model's mean colour) is what "no evidence"
    looks like: :func:`explain_maps` passes white, i.e. unstained glass, so a pixel's value is what
    its stain contributes to the class. A Gaussian of ``smooth_px`` (0: none) tames
    pixel-to-pixel gradient noise. Returns ``[B, H, W]`` float32 >= 0, **not** normalised:
    normalise per slide with :func:`normalise_per_slide` so that tiles stay comparable.
    """
    import torch

    from her2scope.models import split_outputs

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            logits = split_outputs(model(xi))[0]
            idx = _target_index(logits, target)
            (grad,) = torch.autograd.grad(logits.gather(1, idx.view(-1, 1)).sum(), xi)
    finally:
        model.train(was_training)
    delta = xi.detach() if baseline is None else xi.detach() - baseline.to(xi.device)
    amap = torch.relu((grad * delta).sum(dim=1)).float().cpu().numpy()
    if smooth_px > 0:
        import cv2

        amap = np.stack([cv2.GaussianBlur(m, (0, 0), float(smooth_px)) for m in amap])
    return amap.astype(np.float32)


def normalise_per_slide(maps: np.ndarray, quantile: float = 99.0) -> np.ndarray:
    """Divide all maps of one slide by their common ``quantile`` (percent) and clip to [0, 1].

    One scale per slide keeps a tile with little evidence dark instead of stretching its noise to
    full brightness (what a per-tile maximum does). All-zero maps stay zero.
    """
    maps = np.asarray(maps, np.float32)
    if maps.size == 0:
        return maps
    scale = float(np.percentile(maps, quantile))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(maps.max())
    if scale <= 0:
        return np.zeros_like(maps)
    return np.clip(maps / scale, 0.0, 1.0).astype(np.float32)


def explain_maps(
    model: nn.Module,
    model_name: str,
    x: torch.Tensor,
    target: int | Sequence[int] | None,
    method: str,
    white: torch.Tensor | None = None,
) -> np.ndarray:
    """``[B, H, W]`` maps of ``method`` (one of :data:`CAM_METHODS`); Grad-CAM maps come per-tile
    normalised to [0, 1], input × gradient maps unnormalised (normalise them per slide).

    ``white``: the model input of a white pixel (``(1 − mean) / std``, shape [1, 3, 1, 1]), the
    baseline of input × gradient.
    """
    if method == "gradcam":
        return grad_cam(model, model_name, x, target)
    if method == "input_x_gradient":
        return input_x_gradient(model, x, target, baseline=white)
    raise ValueError(f"explanation method must be one of {', '.join(CAM_METHODS)}, not {method!r}")


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The tile (uint8 RGB) blended with the CAM in the 'jet' colormap; uint8 RGB of the tile's size."""
    import matplotlib

    heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255.0
    out = (1 - alpha) * rgb.astype(np.float64) + alpha * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

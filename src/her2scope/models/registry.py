"""The model registry: the study's six torchvision models plus any timm model.

Each architecture is one :class:`ModelSpec` record, made by the :func:`register_model` decorator
on its builder: classifier-head paths, Grad-CAM layer and reshape, minimum input size.
Preprocessing (mean, std, input size) is read from the weights' metadata. Adding a model is one
decorated builder below; the config check, the CLI's ``--models all`` and Grad-CAM read the
registry (:func:`list_models`, :func:`get_spec`).

``create_model(name, num_classes, pretrained)`` builds a model with its classifier head replaced for
``num_classes`` classes; ``model_preprocessing`` / ``preprocessing`` give its input normalisation
and ``cam_target`` the layer Grad-CAM hooks.

Names: ``alexnet``, ``vgg16``, ``resnet34``, ``densenet121``, ``inception_v3``, ``swin_t`` and
``timm:<timm model name>`` (e.g. ``timm:convnext_tiny``).

Pretrained weights (``pretrained``):

- ``False`` / ``"false"``: random initialisation.
- ``True`` / ``"true"``: the library's ImageNet weights from its cache (torchvision: the torch hub
  cache, ``$TORCH_HOME/hub/checkpoints``; timm: the Hugging Face cache) or by download. When neither
  works, :class:`~her2scope.errors.WeightsError` names the expected cache file and how to provide it.
- a path to a local weights file (a state dict, or a her2scope checkpoint): loaded into the model;
  classifier-head tensors whose shape does not fit ``num_classes`` are skipped, any other mismatch
  is an error.
- ``"auto"``: like ``True`` but falls back to random initialisation with a one-line logged notice
  (demo use only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from her2scope.errors import ConfigError, WeightsError, describe_exception

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: Weight of inception_v3's auxiliary loss in training (the usual value).
INCEPTION_AUX_WEIGHT = 0.4

#: inception_v3's auxiliary head needs a 17×17 Mixed_6e map, i.e. inputs of at least this size;
#: below it the auxiliary head is dropped (training then uses the main logits only).
INCEPTION_AUX_MIN_PX = 299

CamReshape = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Preprocessing:
    """What a model's weights expect: per-channel ``mean``/``std`` for inputs scaled to [0, 1], and
    ``input_px``, the square side they were trained at (a reference; her2scope feeds its own)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_px: int


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: everything her2scope needs to know about it, in one record.

    ``builder(weights, input_px)`` returns the model with its ImageNet head (``weights``: the
    torchvision weights enum member, or None for random initialisation). ``heads`` are the dotted
    paths of the Linear classifier layers replaced for K classes, the main head first (a path
    whose parent the builder removed, e.g. a dropped auxiliary head, is skipped). ``cam_layer`` is
    the dotted path Grad-CAM hooks and ``cam_reshape`` turns its output into [B, C, H, W] (None:
    it already is). ``aux_head`` names a sub-module the builder may drop (its tensors in a weights
    file are then ignored).
    """

    name: str
    builder: Callable[[Any, int | None], nn.Module]
    heads: tuple[str, ...]
    cam_layer: str
    cam_reshape: CamReshape | None = None
    min_input_px: int = 32
    aux_head: str | None = None

    def preprocessing(self) -> Preprocessing:
        """Read from the default weights' metadata (torchvision's transforms), not restated."""
        import torchvision

        tf = torchvision.models.get_model_weights(self.name).DEFAULT.transforms()
        return Preprocessing(
            tuple(float(v) for v in tf.mean),
            tuple(float(v) for v in tf.std),
            int(tf.crop_size[0]),
        )


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    *,
    heads: tuple[str, ...],
    cam_layer: str,
    cam_reshape: CamReshape | None = None,
    min_input_px: int = 32,
    aux_head: str | None = None,
) -> Callable[[Callable[[Any, int | None], nn.Module]], Callable[[Any, int | None], nn.Module]]:
    """Decorator: register the builder it wraps under the function's name (see :class:`ModelSpec`)."""

    def wrap(
        builder: Callable[[Any, int | None], nn.Module],
    ) -> Callable[[Any, int | None], nn.Module]:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelSpec(
            name, builder, heads, cam_layer, cam_reshape, min_input_px, aux_head
        )
        return builder

    return wrap


def nhwc_to_nchw(t: torch.Tensor) -> torch.Tensor:
    """Grad-CAM reshape for channels-last token maps [B, H, W, C] (Swin) → [B, C, H, W]."""
    return t.permute(0, 3, 1, 2)


# The study's six architectures (torchvision). Adding one: a builder here, nothing elsewhere.
# CNN CAM layers are the last convolutional block's output ([B, C, H, W]).


@register_model(heads=("classifier.6",), cam_layer="features.11", min_input_px=63)
def alexnet(weights: Any, input_px: int | None) -> nn.Module:
    """CAM layer: the ReLU after the last convolution; below 63 px a max-pool has nothing left."""
    import torchvision

    return torchvision.models.alexnet(weights=weights)


@register_model(heads=("classifier.6",), cam_layer="features.29")  # ReLU after last conv
def vgg16(weights: Any, input_px: int | None) -> nn.Module:
    import torchvision

    return torchvision.models.vgg16(weights=weights)


@register_model(heads=("fc",), cam_layer="layer4.2")  # the last residual block
def resnet34(weights: Any, input_px: int | None) -> nn.Module:
    import torchvision

    return torchvision.models.resnet34(weights=weights)


@register_model(heads=("classifier",), cam_layer="features.norm5")  # ReLU is applied after it
def densenet121(weights: Any, input_px: int | None) -> nn.Module:
    import torchvision

    return torchvision.models.densenet121(weights=weights)


@register_model(
    heads=("fc", "AuxLogits.fc"), cam_layer="Mixed_7c", min_input_px=75, aux_head="AuxLogits"
)
def inception_v3(weights: Any, input_px: int | None) -> nn.Module:
    """The stem needs 75 px; below :data:`INCEPTION_AUX_MIN_PX` the auxiliary head is dropped."""
    import torchvision

    # ImageNet-normalised input either way; the pretrained weights set these themselves.
    extra = {"aux_logits": True, "init_weights": True, "transform_input": True}
    model = torchvision.models.inception_v3(weights=weights, **(extra if weights is None else {}))
    if input_px is not None and input_px < INCEPTION_AUX_MIN_PX:
        model.aux_logits = False
        model.AuxLogits = None
    return model


@register_model(heads=("head",), cam_layer="norm", cam_reshape=nhwc_to_nchw)  # [B, H, W, C]
def swin_t(weights: Any, input_px: int | None) -> nn.Module:
    import torchvision

    return torchvision.models.swin_t(weights=weights)


def list_models() -> tuple[str, ...]:
    """The registered names, in registration order; any ``timm:<name>`` is accepted too."""
    return tuple(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The record of registered model ``name``; ``ConfigError`` listing the choices otherwise."""
    _check_name(name)
    if name.startswith("timm:"):
        raise ConfigError(f"'{name}' is a timm model; it has no her2scope record")
    return _REGISTRY[name]


def _check_name(name: str) -> None:
    if name.startswith("timm:"):
        if not name[5:]:
            raise ConfigError("model 'timm:' needs a timm model name, e.g. 'timm:convnext_tiny'")
        return
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model '{name}'; choose one of {', '.join(_REGISTRY)} "
            "or 'timm:<name>' for any timm model"
        )


def _parse_pretrained(pretrained: bool | str | Path) -> bool | str | Path:
    """Normalise config spellings: "true"/"false"/"auto" strings, else a path."""
    if isinstance(pretrained, bool):
        return pretrained
    if isinstance(pretrained, Path):
        return pretrained
    low = str(pretrained).strip().lower()
    if low in ("true", "yes", "imagenet"):
        return True
    if low in ("false", "no", "none", ""):
        return False
    if low == "auto":
        return "auto"
    return Path(pretrained).expanduser()


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool | str | Path = False,
    input_px: int | None = None,
    objective: str = "softmax",
) -> nn.Module:
    """Build model ``name`` with a ``num_classes``-way head.

    ``input_px`` (square side the model will see) only matters for ``inception_v3``: below
    :data:`INCEPTION_AUX_MIN_PX` its auxiliary head cannot run and is dropped. ``objective``
    ``"ordinal"`` replaces the main head with a cumulative-link head (one score, ordered
    thresholds; :mod:`her2scope.models.ordinal`) whose outputs are log class probabilities, so
    softmax, cross-entropy and everything downstream stay as for ``"softmax"``. Raises
    ``ConfigError`` for an unknown name or too small an input, ``WeightsError`` when asked-for
    weights cannot be found or do not fit.
    """
    _check_name(name)
    if num_classes < 2:
        raise ConfigError(f"model '{name}': need at least 2 classes, got {num_classes}")
    min_px = 32 if name.startswith("timm:") else _REGISTRY[name].min_input_px
    if input_px is not None and input_px < min_px:
        raise ConfigError(
            f"model '{name}' needs input_px >= {min_px}, got {input_px}; raise train.input_px"
        )
    mode = _parse_pretrained(pretrained)
    if name.startswith("timm:"):
        model = _create_timm(name[5:], num_classes, mode)
    else:
        model = _create_registered(_REGISTRY[name], num_classes, mode, input_px)
    if isinstance(mode, Path):
        _load_local_weights(model, name, mode)
    if objective == "ordinal":
        from her2scope.models.ordinal import make_ordinal

        make_ordinal(model, _head_prefixes(model, name)[0].rstrip("."))
    elif objective != "softmax":
        raise ConfigError(f"train.objective must be softmax or ordinal, not '{objective}'")
    return model


def _create_registered(
    spec: ModelSpec, num_classes: int, mode: bool | str | Path, input_px: int | None
) -> nn.Module:
    import torchvision

    model: nn.Module | None = None
    if mode is True or mode == "auto":
        weights = torchvision.models.get_model_weights(spec.name).DEFAULT
        try:
            model = spec.builder(weights, input_px)
        except Exception as exc:
            cache = torchvision_cache_file(spec.name)
            if mode == "auto":
                log.warning(
                    "no pretrained weights for %s (%s not cached, download failed); "
                    "using random initialisation",
                    spec.name,
                    cache,
                )
            else:
                raise WeightsError(
                    f"pretrained weights for '{spec.name}' are not cached and could not be "
                    f"downloaded ({describe_exception(exc)}). Expected file: {cache}. "
                    f"Copy it there from a machine with internet ({weights.url}), set TORCH_HOME "
                    "to a folder holding hub/checkpoints/, give train.pretrained=<path to the "
                    "file>, or use train.pretrained=false"
                ) from None
    if model is None:
        model = spec.builder(None, input_px)
    _replace_heads(model, spec, num_classes)
    return model


def _submodule_or_none(model: nn.Module, path: str) -> nn.Module | None:
    """The sub-module at dotted ``path``, or None where a step of it is None (a dropped head)."""
    m: Any = model
    for part in path.split("."):
        m = getattr(m, part, None)
        if m is None:
            return None
    return m


def _replace_heads(model: nn.Module, spec: ModelSpec, num_classes: int) -> None:
    """Swap each of ``spec.heads`` for a fresh ``num_classes``-way Linear of the same width."""
    from torch import nn

    for path in spec.heads:
        old = _submodule_or_none(model, path)
        if old is None and path != spec.heads[0]:
            continue  # an optional head the builder dropped
        if not isinstance(old, nn.Linear):
            raise ConfigError(
                f"model '{spec.name}': head '{path}' is {type(old).__name__}, not a Linear "
                "layer; fix its heads= in models/registry.py"
            )
        model.set_submodule(path, nn.Linear(old.in_features, num_classes))


def torchvision_cache_file(name: str) -> Path:
    """Where torchvision looks for (and downloads) ``name``'s default weights."""
    import torch.hub
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _create_timm(arch: str, num_classes: int, mode: bool | str | Path) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        raise ConfigError(
            f"unknown timm model '{arch}'; list them with python -c \"import timm; "
            f"print(timm.list_models('*{arch[:6]}*'))\""
        )
    if mode is True or mode == "auto":
        try:
            return timm.create_model(arch, pretrained=True, num_classes=num_classes)
        except Exception as exc:
            if mode == "auto":
                log.warning(
                    "no pretrained weights for timm:%s (%s); using random initialisation",
                    arch,
                    describe_exception(exc),
                )
            else:
                hub = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
                raise WeightsError(
                    f"pretrained weights for 'timm:{arch}' are not cached and could not be "
                    f"downloaded ({describe_exception(exc)}). timm looks in the Hugging Face "
                    f"cache under {hub}/hub; download them there on a machine with internet, or "
                    "give train.pretrained=<path to a weights file>, or use "
                    "train.pretrained=false"
                ) from None
    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def _head_prefixes(model: nn.Module, name: str) -> tuple[str, ...]:
    if name.startswith("timm:"):
        cfg = getattr(model, "pretrained_cfg", None) or {}
        heads = cfg.get("classifier") or "head"
        if isinstance(heads, str):
            heads = (heads,)
        return tuple(f"{h}." for h in heads)
    return tuple(f"{h}." for h in _REGISTRY[name].heads)


def _load_local_weights(model: nn.Module, name: str, path: Path) -> None:
    """Load a local state dict (or a her2scope checkpoint's model state) into ``model``."""
    import torch

    if not path.is_file():
        raise WeightsError(
            f"weights file '{path}' not found; give train.pretrained=true|false|auto or an "
            "existing file"
        )
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise WeightsError(
                f"weights file '{path}' was refused as unsafe: it holds pickled Python objects, "
                "which could run code when loaded. Give a plain state dict of tensors (e.g. "
                "torch.save(model.state_dict(), path))"
            ) from None
        raise WeightsError(
            f"weights file '{path}' could not be read as a PyTorch state dict (damaged or "
            "not a PyTorch file)"
        ) from None
    except Exception as exc:
        from her2scope.errors import reason_of

        why = reason_of(exc, "damaged, truncated or not a PyTorch file")
        raise WeightsError(
            f"weights file '{path}' could not be read as a PyTorch state dict ({why})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model_state"), dict):
        obj = obj["model_state"]  # a her2scope checkpoint
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file '{path}' does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    own = model.state_dict()
    heads = _head_prefixes(model, name)
    aux = _REGISTRY[name].aux_head if name in _REGISTRY else None
    droppable = (*heads, f"{aux}.") if aux else heads
    skipped, problems = [], []
    for key in list(state):
        if key not in own:
            if key.startswith(droppable):
                del state[key]
                continue
            problems.append(f"unexpected tensor '{key}'")
        elif tuple(state[key].shape) != tuple(own[key].shape):
            if key.startswith(heads):
                skipped.append(key)
                del state[key]
            else:
                problems.append(
                    f"'{key}' has shape {tuple(state[key].shape)}, model needs "
                    f"{tuple(own[key].shape)}"
                )
    missing = [k for k in own if k not in state and not k.startswith(heads)]
    problems += [f"missing tensor '{k}'" for k in missing[:10]]
    if problems:
        more = "" if len(problems) <= 10 else f" (and {len(problems) - 10} more)"
        raise WeightsError(
            f"weights file '{path}' does not fit model '{name}': " + "; ".join(problems[:10]) + more
        )
    model.load_state_dict(state, strict=False)
    if skipped:
        log.info("weights %s: kept the new %d-key classifier head for %s", path, len(skipped), name)


def preprocessing(name: str) -> Preprocessing:
    """Mean, std and training input size of model ``name``'s weights, from their metadata."""
    _check_name(name)
    if not name.startswith("timm:"):
        return _REGISTRY[name].preprocessing()
    import timm

    cfg = timm.get_pretrained_cfg(name[5:])
    if cfg is None:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return Preprocessing(tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), 224)
    return Preprocessing(
        tuple(float(v) for v in cfg.mean),
        tuple(float(v) for v in cfg.std),
        int(cfg.input_size[-1]),
    )


def model_preprocessing(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) for inputs scaled to [0, 1], from the weights' metadata."""
    pre = preprocessing(name)
    return pre.mean, pre.std


def split_outputs(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main logits, auxiliary logits or None) from a model's forward output.

    inception_v3 returns ``InceptionOutputs(logits, aux_logits)`` in training; every other model
    (and inception in eval mode) returns the logits tensor.
    """
    if hasattr(out, "logits") and hasattr(out, "aux_logits"):
        return out.logits, out.aux_logits
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


class TokensToMap:
    """Grad-CAM reshape for ViT-style tokens [B, N, C]: drop prefix tokens, fold to a square."""

    def __init__(self, num_prefix_tokens: int) -> None:
        self.num_prefix_tokens = num_prefix_tokens

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        tokens = t[:, self.num_prefix_tokens :, :]
        side = round(tokens.shape[1] ** 0.5)
        if side * side != tokens.shape[1]:
            raise ValueError(f"cannot fold {tokens.shape[1]} tokens into a square map")
        return tokens.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)


def cam_target(
    model: nn.Module, name: str
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The layer Grad-CAM should hook for ``name`` and the reshape its activations need (or None).

    Registered models: their record's ``cam_layer`` and ``cam_reshape``; timm models: the last
    feature stage (or a ViT's last block).
    """
    _check_name(name)
    m: Any = model.module if hasattr(model, "module") else model  # unwrap DDP
    if name.startswith("timm:"):
        return _timm_cam_target(m, name)
    spec = _REGISTRY[name]
    return m.get_submodule(spec.cam_layer), spec.cam_reshape


def _timm_cam_target(
    m: Any, name: str
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    arch = name[5:]
    if hasattr(m, "patch_embed") and hasattr(m, "num_prefix_tokens") and hasattr(m, "blocks"):
        return m.blocks[-1].norm1, TokensToMap(int(m.num_prefix_tokens))
    info = getattr(m, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
        layer = m.get_submodule(last["module"])
        reshape = nhwc_to_nchw if "swin" in arch else None
        return layer, reshape
    raise ConfigError(f"no Grad-CAM target layer known for '{name}'")

"""The model registry: the study's six torchvision models plus any timm model.

``create_model(name, num_classes, pretrained)`` builds a model with its classifier head replaced for
``num_classes`` classes. Input normalisation (``model_preprocessing``) comes from the weights'
metadata, and ``cam_target`` names the layer Grad-CAM hooks for each architecture.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from her2scope.errors import ConfigError, WeightsError, describe_exception

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: The study's six architectures (torchvision names).
TORCHVISION_MODELS: tuple[str, ...] = (
    "alexnet",
    "vgg16",
    "resnet34",
    "densenet121",
    "inception_v3",
    "swin_t",
)

#: Smallest square input each torchvision model accepts (inception_v3's stem needs 75 px).
MIN_INPUT_PX: dict[str, int] = {"inception_v3": 75}

#: inception_v3's auxiliary head needs a 17×17 Mixed_6e map, i.e. inputs of at least this size;
#: below it the auxiliary head is dropped (training then uses the main logits only).
INCEPTION_AUX_MIN_PX = 299

#: Weight of inception_v3's auxiliary loss in training (the usual value).
INCEPTION_AUX_WEIGHT = 0.4

# Classifier-head parameter prefixes per torchvision model (replaced for K classes).
_HEADS: dict[str, tuple[str, ...]] = {
    "alexnet": ("classifier.6.",),
    "vgg16": ("classifier.6.",),
    "resnet34": ("fc.",),
    "densenet121": ("classifier.",),
    "inception_v3": ("fc.", "AuxLogits.fc."),
    "swin_t": ("head.",),
}


def available_models() -> tuple[str, ...]:
    """The built-in names; any ``timm:<name>`` is accepted too."""
    return TORCHVISION_MODELS


def _check_name(name: str) -> None:
    if name.startswith("timm:"):
        if not name[5:]:
            raise ConfigError("model 'timm:' needs a timm model name, e.g. 'timm:convnext_tiny'")
        return
    if name not in TORCHVISION_MODELS:
        raise ConfigError(
            f"unknown model '{name}'; choose one of {', '.join(TORCHVISION_MODELS)} "
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
    min_px = MIN_INPUT_PX.get(name, 32)
    if input_px is not None and input_px < min_px:
        raise ConfigError(
            f"model '{name}' needs input_px >= {min_px}, got {input_px}; raise train.input_px"
        )
    mode = _parse_pretrained(pretrained)
    if name.startswith("timm:"):
        model = _create_timm(name[5:], num_classes, mode)
    else:
        model = _create_torchvision(name, num_classes, mode, input_px)
    if isinstance(mode, Path):
        _load_local_weights(model, name, mode)
    if objective == "ordinal":
        from her2scope.models.ordinal import make_ordinal

        make_ordinal(model, _head_prefixes(model, name)[0].rstrip("."))
    elif objective != "softmax":
        raise ConfigError(f"train.objective must be softmax or ordinal, not '{objective}'")
    return model


def _create_torchvision(
    name: str, num_classes: int, mode: bool | str | Path, input_px: int | None
) -> nn.Module:
    import torchvision

    model: nn.Module | None = None
    if mode is True or mode == "auto":
        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model = torchvision.models.get_model(name, weights=weights)
        except Exception as exc:
            cache = torchvision_cache_file(name)
            if mode == "auto":
                log.warning(
                    "no pretrained weights for %s (%s not cached, download failed); "
                    "using random initialisation",
                    name,
                    cache,
                )
            else:
                raise WeightsError(
                    f"pretrained weights for '{name}' are not cached and could not be "
                    f"downloaded ({describe_exception(exc)}). Expected file: {cache}. "
                    f"Copy it there from a machine with internet ({weights.url}), set TORCH_HOME "
                    "to a folder holding hub/checkpoints/, give train.pretrained=<path to the "
                    "file>, or use train.pretrained=false"
                ) from None
    if model is None:
        kwargs: dict[str, Any] = {"weights": None}
        if name == "inception_v3":
            # ImageNet-normalised input in both cases; the pretrained weights expect this too.
            kwargs.update(aux_logits=True, init_weights=True, transform_input=True)
        model = torchvision.models.get_model(name, **kwargs)
    _replace_head(model, name, num_classes)
    if name == "inception_v3" and input_px is not None and input_px < INCEPTION_AUX_MIN_PX:
        model.aux_logits = False  # type: ignore[assignment]
        model.AuxLogits = None  # type: ignore[assignment]
    return model


def _replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    from torch import nn

    def linear(old: nn.Module) -> nn.Linear:
        assert isinstance(old, nn.Linear)
        return nn.Linear(old.in_features, num_classes)

    m: Any = model
    if name in ("alexnet", "vgg16"):
        m.classifier[6] = linear(m.classifier[6])
    elif name == "resnet34":
        m.fc = linear(m.fc)
    elif name == "densenet121":
        m.classifier = linear(m.classifier)
    elif name == "inception_v3":
        m.fc = linear(m.fc)
        if m.AuxLogits is not None:
            m.AuxLogits.fc = linear(m.AuxLogits.fc)
    elif name == "swin_t":
        m.head = linear(m.head)
    else:  # pragma: no cover - guarded by _check_name
        raise ConfigError(f"no head rule for '{name}'")


def torchvision_cache_file(name: str) -> Path:
    """Where torchvision looks for (and downloads) ``name``'s default weights."""
    import torch.hub
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _create_timm(arch: str, num_classes: int, mode: bool | str | Path) -> nn.Module:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        raise ConfigError("timm models need the 'timm' package: pip install timm") from None
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
    return _HEADS[name]


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
    skipped, problems = [], []
    for key in list(state):
        if key not in own:
            if key.startswith(heads) or key.startswith("AuxLogits."):
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


def model_preprocessing(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) for inputs scaled to [0, 1], from the weights' metadata."""
    _check_name(name)
    if name.startswith("timm:"):
        import timm

        cfg = timm.get_pretrained_cfg(name[5:])
        if cfg is None:
            from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

            return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
        return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    import torchvision

    tf = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    return tuple(float(v) for v in tf.mean), tuple(float(v) for v in tf.std)


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


def nhwc_to_nchw(t: torch.Tensor) -> torch.Tensor:
    """Grad-CAM reshape for channels-last token maps [B, H, W, C] (Swin) → [B, C, H, W]."""
    return t.permute(0, 3, 1, 2)


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

    CNNs: the last convolutional block's output ([B, C, H, W]). Swin: the final norm, whose output
    is [B, H, W, C] and needs :func:`nhwc_to_nchw`.
    """
    _check_name(name)
    m: Any = model.module if hasattr(model, "module") else model  # unwrap DDP
    if name in ("alexnet", "vgg16"):
        convs = [i for i, layer in enumerate(m.features) if layer.__class__.__name__ == "Conv2d"]
        # the ReLU after the last convolution
        return m.features[convs[-1] + 1], None
    if name == "resnet34":
        return m.layer4[-1], None
    if name == "densenet121":
        return m.features[-1], None  # norm5; the model applies ReLU after it
    if name == "inception_v3":
        return m.Mixed_7c, None
    if name == "swin_t":
        return m.norm, nhwc_to_nchw
    return _timm_cam_target(m, name)


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

"""Model registry: the study's six torchvision models and any timm model (see ``registry``)."""

from __future__ import annotations

from her2scope.models.registry import (
    INCEPTION_AUX_WEIGHT,
    TORCHVISION_MODELS,
    cam_target,
    create_model,
    model_preprocessing,
    split_outputs,
)

__all__ = [
    "INCEPTION_AUX_WEIGHT",
    "TORCHVISION_MODELS",
    "cam_target",
    "create_model",
    "model_preprocessing",
    "split_outputs",
]

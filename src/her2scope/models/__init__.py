"""Model registry: the study's six torchvision models and any timm model (see ``registry``)."""

from __future__ import annotations

from her2scope.models.registry import (
    INCEPTION_AUX_WEIGHT,
    ModelSpec,
    Preprocessing,
    cam_target,
    create_model,
    get_spec,
    list_models,
    model_preprocessing,
    preprocessing,
    register_model,
    split_outputs,
)

__all__ = [
    "INCEPTION_AUX_WEIGHT",
    "ModelSpec",
    "Preprocessing",
    "cam_target",
    "create_model",
    "get_spec",
    "list_models",
    "model_preprocessing",
    "preprocessing",
    "register_model",
    "split_outputs",
]

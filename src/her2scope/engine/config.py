"""Settings of the training stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    models: tuple[str, ...] = ("alexnet",)
    pretrained: bool | str = "auto"  # true, false, "auto" or a path to a weights file
    input_px: int = 512  # tiles are resized to this before the model
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    balance: Literal["none", "sampler", "loss"] = "none"
    grad_accum: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    early_stop_patience: int = 5
    workers: int = 2
    deterministic: bool = False
    augment: bool = True
    max_tiles_per_slide: int | None = None

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
    # issue 11 (docs/generalisation.md): ordinal head; assay (DAB) and resolution augmentation
    objective: Literal["softmax", "ordinal"] = "softmax"
    assay_dab_range: tuple[float, ...] = ()  # per-tile DAB factor (lo, hi), log-uniform; () off
    zoom_range: tuple[float, ...] = ()  # per-tile zoom (lo, hi), log-uniform; () off

    def problems(self) -> list[str]:
        """Every out-of-range setting as one line each (empty when all are fine).

        Model names are checked against the model registry and a ``pretrained`` path must be a
        PyTorch weights file (read: its first bytes only). Cheap: no torch import.
        """
        from her2scope.config import check_range
        from her2scope.models.registry import MIN_INPUT_PX, TORCHVISION_MODELS

        out: list[str] = []
        if not self.models:
            out.append("train.models is empty; list at least one model (e.g. alexnet)")
        for m in self.models:
            if m.startswith("timm:"):
                if not m[5:].strip():
                    out.append("train.models: 'timm:' needs a timm model name (timm:convnext_tiny)")
            elif m not in TORCHVISION_MODELS:
                out.append(
                    f"train.models: unknown model {m!r}; choose from "
                    f"{', '.join(TORCHVISION_MODELS)} or timm:<name>"
                )
        out += _pretrained_problems(self.pretrained)
        check_range(out, "train.input_px", self.input_px, 32, 2048, hint="pixels per side")
        for m in self.models:
            need = MIN_INPUT_PX.get(m)
            if need is not None and 32 <= self.input_px < need:
                out.append(f"train.input_px = {self.input_px}: model {m!r} needs at least {need}")
        check_range(out, "train.epochs", self.epochs, 1, 100_000)
        check_range(out, "train.batch_size", self.batch_size, 1, 65536)
        check_range(out, "train.lr", self.lr, 0, 10, lo_open=True, hint="the learning rate")
        check_range(out, "train.weight_decay", self.weight_decay, 0, 10)
        check_range(out, "train.warmup_epochs", self.warmup_epochs, 0, 100_000)
        check_range(out, "train.label_smoothing", self.label_smoothing, 0, 1, hi_open=True)
        check_range(out, "train.grad_accum", self.grad_accum, 1, 4096)
        check_range(out, "train.early_stop_patience", self.early_stop_patience, 1)
        check_range(
            out, "train.workers", self.workers, 0, 256, hint="data-loading processes; 0: none"
        )
        check_range(out, "train.max_tiles_per_slide", self.max_tiles_per_slide, 1)
        for name in ("assay_dab_range", "zoom_range"):
            problem = factor_range_problem(name, getattr(self, name))
            if problem:
                out.append(problem)
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem of :meth:`problems`."""
        from her2scope.errors import ConfigError

        if problems := self.problems():
            raise ConfigError("; ".join(problems))


def factor_range_problem(name: str, value: tuple[float, ...]) -> str | None:
    """``train.<name>``: ``()`` (off) or two positive finite factors ``lo <= hi``; else a message."""
    import math

    if not value:
        return None
    ok = (
        len(value) == 2
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        and 0 < value[0] <= value[1]
    )
    if ok:
        return None
    return (
        f"train.{name} = {list(value)}: give two positive factors lo <= hi, e.g. [0.3, 1.5], "
        "or [] to turn it off"
    )


#: First bytes of the files ``torch.save`` writes: a zip archive, or a pickle (legacy format).
_WEIGHTS_MAGIC = (b"PK\x03\x04", b"\x80")


def _pretrained_problems(value: bool | str) -> list[str]:
    """``train.pretrained``: true, false, auto, or an existing PyTorch weights file."""
    from pathlib import Path

    if isinstance(value, bool):
        return []
    low = value.strip().lower()
    if low in ("true", "yes", "imagenet", "false", "no", "none", "", "auto"):
        return []
    path = Path(value).expanduser()
    if not path.is_file():
        return [
            f"train.pretrained = {value!r}: no such weights file; give true, false, auto or the "
            "path of a .pth file"
        ]
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return [f"train.pretrained = {value!r}: cannot be read ({exc.strerror or exc})"]
    if not head.startswith(_WEIGHTS_MAGIC):
        return [
            f"train.pretrained = {value!r}: not a PyTorch weights file (expected a .pth/.pt "
            "written by torch.save, e.g. alexnet-owt-7be5be79.pth)"
        ]
    return []

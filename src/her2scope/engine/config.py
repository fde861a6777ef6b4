"""Settings of the training stage."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from her2scope._configbase import Names, Problem, _fspath, config_section, problems_error


@config_section("train")
class TrainConfig:
    models: Annotated[
        Names, Field(description="models to train: the registry's names or timm:NAME")
    ] = ("alexnet",)
    pretrained: Annotated[
        bool | str,
        BeforeValidator(_fspath),
        Field(description="true, false, auto or the path of a PyTorch weights file"),
    ] = "auto"
    input_px: Annotated[
        int, Field(ge=32, le=2048, description="pixels per side; tiles are resized to this")
    ] = 512
    epochs: Annotated[
        int, Field(ge=1, le=100_000, description="passes over the training tiles")
    ] = 10
    batch_size: Annotated[int, Field(ge=1, le=65536, description="tiles per training step")] = 16
    lr: Annotated[float, Field(gt=0, le=10, description="the learning rate")] = 1e-4
    weight_decay: Annotated[
        float, Field(ge=0, le=10, description="the optimiser's weight decay")
    ] = 1e-4
    optimizer: Annotated[
        Literal["adamw", "sgd"], Field(description="AdamW, or SGD with Nesterov momentum 0.9")
    ] = "adamw"
    warmup_epochs: Annotated[
        int, Field(ge=0, le=100_000, description="epochs of linear warm-up before cosine decay")
    ] = 1
    label_smoothing: Annotated[
        float, Field(ge=0, lt=1, description="label smoothing of the cross-entropy loss")
    ] = 0.0
    balance: Annotated[
        Literal["none", "sampler", "loss"],
        Field(description="class balance: none, a weighted sampler, or a weighted loss"),
    ] = "none"
    grad_accum: Annotated[
        int, Field(ge=1, le=4096, description="batches accumulated per optimiser step")
    ] = 1
    precision: Annotated[
        Literal["auto", "fp32", "bf16", "fp16"],
        Field(description="CUDA autocast; auto: bf16 where supported, else fp16"),
    ] = "auto"
    channels_last: Annotated[bool, Field(description="channels-last memory format on CUDA")] = True
    early_stop_patience: Annotated[
        int, Field(ge=1, description="epochs without a better validation score before stopping")
    ] = 5
    workers: Annotated[int, Field(ge=0, le=256, description="data-loading processes; 0: none")] = 2
    deterministic: Annotated[
        bool, Field(description="deterministic algorithms (slower on GPU)")
    ] = False
    augment: Annotated[
        bool, Field(description="flips/rot90, H-DAB jitter and brightness/contrast per tile")
    ] = True
    max_tiles_per_slide: (
        Annotated[int, Field(ge=1, description="tiles sampled per slide per epoch; null: all")]
        | None
    ) = None
    # issue 11 (docs/generalisation.md): ordinal head; assay (DAB) and resolution augmentation
    objective: Annotated[
        Literal["softmax", "ordinal"],
        Field(description="softmax head (the study's) or a cumulative-link ordinal head"),
    ] = "softmax"
    assay_dab_range: Annotated[
        tuple[float, ...], Field(description="per-tile DAB factor (lo, hi), log-uniform; [] off")
    ] = ()
    zoom_range: Annotated[
        tuple[float, ...], Field(description="per-tile zoom (lo, hi), log-uniform; [] off")
    ] = ()
    dab_order_weight: Annotated[
        float,
        Field(
            ge=0, le=100, description="weight of the DAB-order loss (docs/generalisation.md); 0 off"
        ),
    ] = 0.0
    dab_order_range: Annotated[
        tuple[float, ...],
        Field(
            description="DAB factor of the order loss's copies: lo..hi or its inverse, 1 < lo <= hi"
        ),
    ] = (1.25, 4.0)

    @model_validator(mode="after")
    def _rules(self) -> TrainConfig:
        out: list[Problem] = []
        if not self.models:
            out.append(
                ("train.models", "train.models is empty; list at least one model (e.g. alexnet)")
            )
        if any(m.startswith("timm:") and not m[5:].strip() for m in self.models):
            out.append(
                (
                    "train.models",
                    "train.models: 'timm:' needs a timm model name (timm:convnext_tiny)",
                )
            )
        for name in ("assay_dab_range", "zoom_range"):
            message = factor_range_problem(name, getattr(self, name))
            if message:
                out.append((f"train.{name}", message))
        message = order_range_problem(self.dab_order_range)
        if message:
            out.append(("train.dab_order_range", message))
        if out:
            raise problems_error(out)
        return self

    def problems(self) -> list[Problem]:
        """Model names known to the model registry; a ``pretrained`` path that is a weights file.

        Cheap: the registry's names only (no torch import), and a weights file's first bytes.
        """
        from her2scope.models.registry import get_spec, list_models

        known = list_models()
        out: list[Problem] = []
        for m in self.models:
            if not m.startswith("timm:") and m not in known:
                out.append(
                    (
                        "train.models",
                        f"train.models: unknown model {m!r}; choose from {', '.join(known)} or "
                        "timm:<name>",
                    )
                )
        out += [("train.pretrained", p) for p in _pretrained_problems(self.pretrained)]
        for m in self.models:
            need = get_spec(m).min_input_px if m in known else None
            if need is not None and self.input_px < need:
                out.append(
                    (
                        "train.input_px",
                        f"train.input_px={self.input_px}: model {m!r} needs at least {need}",
                    )
                )
        return out


def factor_range_problem(name: str, value: tuple[float, ...]) -> str | None:
    """``train.<name>``: ``()`` (off) or two positive finite factors ``lo <= hi``; else a message."""
    if not value:
        return None
    ok = len(value) == 2 and all(math.isfinite(v) for v in value) and 0 < value[0] <= value[1]
    if ok:
        return None
    return (
        f"train.{name}={list(value)}: give two positive factors lo <= hi, e.g. [0.3, 1.5], "
        "or [] to turn it off"
    )


def order_range_problem(value: tuple[float, ...]) -> str | None:
    """``train.dab_order_range``: two finite factors ``1 < lo <= hi``; else a message."""
    if len(value) == 2 and all(math.isfinite(v) for v in value) and 1 < value[0] <= value[1]:
        return None
    return (
        f"train.dab_order_range={list(value)}: give two factors 1 < lo <= hi (the copy's DAB is "
        "scaled by lo..hi or its inverse), e.g. [1.25, 4]"
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
            f"train.pretrained={value!r}: no such weights file; give true, false, auto or the "
            "path of a .pth file"
        ]
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return [f"train.pretrained={value!r}: cannot be read ({exc.strerror or exc})"]
    if not head.startswith(_WEIGHTS_MAGIC):
        return [
            f"train.pretrained={value!r}: not a PyTorch weights file (expected a .pth/.pt "
            "written by torch.save, e.g. alexnet-owt-7be5be79.pth)"
        ]
    return []

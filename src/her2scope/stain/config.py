"""Settings of the stain stage (normalisation and augmentation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class StainConfig:
    mode: Literal["preserve_dab", "standard", "none"] = "preserve_dab"
    reference: str | None = None  # JSON written by fit_reference; None: the packaged default
    fit_tiles: int = 64  # tiles sampled per slide to fit its stain matrix

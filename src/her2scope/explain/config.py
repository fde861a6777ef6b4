"""Settings of the explain stage (Grad-CAM)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExplainConfig:
    n_tiles: int = 16  # tiles per class in the gallery
    heatmap_max_px: int = 1024

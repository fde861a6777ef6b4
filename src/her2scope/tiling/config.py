"""Settings of the tiling stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TilingConfig:
    """How slides are cut into tiles. Coordinates are level-0 pixels, top-left origin."""

    tile_px: int = 512
    target_mpp: float | None = None  # µm/px of the tiles; None: the slide's own level-0 µm/px
    max_white: float = 0.60  # drop a tile whose white fraction is above this (the study's rule)
    white_level: int = 220  # a pixel is "white" when R, G and B are all above this
    roi_rule: Literal["centre", "coverage"] = "centre"
    min_roi_cover: float = 0.5  # used by roi_rule="coverage"
    roi_classes: tuple[str, ...] | None = None  # e.g. ("Tumor",); None keeps every ROI
    reader: Literal["auto", "openslide", "tiffslide", "image"] = "auto"

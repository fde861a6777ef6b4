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

    def problems(self) -> list[str]:
        """Every out-of-range setting as one line each (empty when all are fine)."""
        from her2scope.config import check_range

        out: list[str] = []
        check_range(out, "tiling.tile_px", self.tile_px, 8, 8192, hint="output pixels per side")
        check_range(
            out, "tiling.target_mpp", self.target_mpp, 0.05, 1000, hint="µm per pixel of the tiles"
        )
        check_range(out, "tiling.max_white", self.max_white, 0, 1)
        check_range(out, "tiling.white_level", self.white_level, 0, 255)
        check_range(out, "tiling.min_roi_cover", self.min_roi_cover, 0, 1, lo_open=True)
        if self.roi_classes is not None and not all(c.strip() for c in self.roi_classes):
            out.append(f"tiling.roi_classes = {list(self.roi_classes)!r}: a class name is empty")
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem of :meth:`problems`."""
        from her2scope.errors import ConfigError

        if problems := self.problems():
            raise ConfigError("; ".join(problems))

"""Settings of the tiling stage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from her2scope._configbase import Names, config_section, problem


@config_section("tiling")
class TilingConfig:
    """How slides are cut into tiles. Coordinates are level-0 pixels, top-left origin."""

    tile_px: Annotated[int, Field(ge=8, le=8192, description="output pixels per side")] = 512
    target_mpp: (
        Annotated[
            float,
            Field(
                ge=0.05,
                le=1000,
                description="µm per pixel of the tiles; null: each slide's own level-0 µm/px",
            ),
        ]
        | None
    ) = None
    max_white: Annotated[
        float,
        Field(ge=0, le=1, description="drop a tile whose white fraction is above this"),
    ] = 0.60
    white_level: Annotated[
        int,
        Field(ge=0, le=255, description="a pixel is white when R, G and B are all above this"),
    ] = 220
    roi_rule: Annotated[
        Literal["centre", "coverage"],
        Field(description="keep a tile whose centre is in an ROI, or that an ROI covers enough"),
    ] = "centre"
    min_roi_cover: Annotated[
        float,
        Field(gt=0, le=1, description="share of a tile an ROI must cover (roi_rule coverage)"),
    ] = 0.5
    roi_classes: Annotated[
        Names | None, Field(description="only ROIs of these classes, e.g. [Tumor]; null: every ROI")
    ] = None
    reader: Annotated[
        Literal["auto", "openslide", "tiffslide", "image"],
        Field(description="slide reader; auto picks one by file type"),
    ] = "auto"

    @model_validator(mode="after")
    def _names(self) -> TilingConfig:
        if self.roi_classes is not None and not all(c.strip() for c in self.roi_classes):
            raise problem(
                "tiling.roi_classes",
                f"tiling.roi_classes={list(self.roi_classes)!r}: a class name is empty",
            )
        return self

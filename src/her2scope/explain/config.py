"""Settings of the explain stage (Grad-CAM)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from her2scope._configbase import config_section


@config_section("explain")
class ExplainConfig:
    n_tiles: Annotated[int, Field(ge=1, le=1000, description="tiles per class in the gallery")] = 16
    heatmap_max_px: Annotated[
        int, Field(ge=64, le=16384, description="longest side of a slide heatmap, in pixels")
    ] = 1024

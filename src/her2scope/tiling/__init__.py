"""Tiling: cut slides (within their ROIs or tissue) into tiles stored as coordinates.

``tile_slide`` tiles one slide, ``tile_cohort`` a manifest; see ``docs/tiling.md``. Attributes are
imported lazily so that reading a config does not import pandas.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "TILE_COLUMNS",
    "TilingConfig",
    "TilingReport",
    "tile_cohort",
    "tile_slide",
    "white_fraction",
]


def __getattr__(name: str) -> Any:
    if name == "TilingConfig":
        from her2scope.tiling.config import TilingConfig

        return TilingConfig
    if name == "white_fraction":
        from her2scope.tiling.background import white_fraction

        return white_fraction
    if name in ("TILE_COLUMNS", "TilingReport", "tile_cohort", "tile_slide"):
        from her2scope.tiling import extract

        return getattr(extract, name)
    raise AttributeError(f"module 'her2scope.tiling' has no attribute {name!r}")

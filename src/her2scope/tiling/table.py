"""The tile table (``tiles.parquet``): its columns, in one place.

A tile is a row of coordinates, not an image: its pixels are
``open_slide(slide_path).read_tile((x, y), level, read_px, tile_px)``. Tiling writes every column
of :data:`TILE_COLUMNS`; readers check only the columns they use (:data:`PIXEL_COLUMNS` to read
pixels, :data:`LABEL_COLUMNS` in addition to train), so a table written by an older version or by
hand needs no more than that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: Every column of ``tiles.parquet`` in its order, with its dtype.
TILE_DTYPES: dict[str, type] = {
    "slide_id": str,
    "patient_id": str,
    "center": str,
    "label": str,
    "slide_path": str,
    "x": np.int64,
    "y": np.int64,
    "level": np.int64,
    "read_px": np.int64,
    "tile_px": np.int64,
    "mpp": np.float64,
    "white_frac": np.float64,
    "roi_cover": np.float64,
}
#: Column order of ``tiles.parquet``.
TILE_COLUMNS: tuple[str, ...] = tuple(TILE_DTYPES)
#: The columns that locate a tile's pixels (what a dataset needs to read it).
PIXEL_COLUMNS: tuple[str, ...] = ("slide_id", "slide_path", "x", "y", "level", "read_px", "tile_px")
#: Columns copied from the manifest into every row of a slide (empty strings when unknown).
COPIED_COLUMNS: tuple[str, ...] = ("patient_id", "center", "label")
#: What training needs besides the pixels: whose tile it is and its label.
LABEL_COLUMNS: tuple[str, ...] = COPIED_COLUMNS


def empty_tile_table() -> pd.DataFrame:
    """A tile table with no rows and the right column types."""
    import pandas as pd

    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in TILE_DTYPES.items()})

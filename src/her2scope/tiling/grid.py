"""Pure grid maths: which pyramid level to read, how many pixels, and where the tiles are.

Everything is in level-0 pixels with the origin at the top-left. The grid is anchored at (0, 0)
and its step equals the tile's level-0 footprint, so tiles never overlap and a tile's position
does not depend on the ROI. Only whole tiles are placed: a partial strip at the right or bottom
edge is not tiled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Relative slack when matching a pyramid level to the wanted downsample.
LEVEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class TileGeometry:
    """How one tile of a slide is read: ``read_px`` square at ``level``, resized to ``tile_px``."""

    level: int
    read_px: int  # side read at ``level`` (level px)
    tile_px: int  # side after resizing (output px)
    level0_px: int  # side of the tile's footprint in level-0 px (the grid step)
    mpp: float  # µm/px of the output tile
    downsample: float  # of ``level`` relative to level 0


#: The most a tile may be upsampled from level 0 (``target_mpp >= slide_mpp / MAX_UPSAMPLE``):
#: beyond it a tile's footprint is a handful of real pixels (``--target-mpp 0.0001`` once gave
#: 227,848 one-pixel tiles).
MAX_UPSAMPLE = 4.0


def plan_geometry(
    level0_mpp: float,
    level_downsamples: Sequence[float],
    tile_px: int,
    target_mpp: float | None = None,
) -> TileGeometry:
    """Pick the level and read size for tiles of ``tile_px`` at ``target_mpp`` µm/px.

    Without ``target_mpp`` tiles are level-0 pixels as they are. With it, the deepest level that
    is not coarser than the target (within 1 %) is read and
    ``read_px = round(tile_px * target_mpp / level_mpp)`` pixels are resized to ``tile_px``.
    A target more than :data:`MAX_UPSAMPLE` times finer than level 0 raises ``ConfigError``.
    """
    if tile_px < 1:
        raise ValueError(f"tile_px must be positive, got {tile_px}")
    if target_mpp is None:
        return TileGeometry(0, tile_px, tile_px, tile_px, float(level0_mpp), 1.0)
    if not target_mpp > 0:
        raise ValueError(f"target_mpp must be positive, got {target_mpp}")
    want_ds = target_mpp / level0_mpp
    if want_ds < 1.0 / MAX_UPSAMPLE:
        from her2scope.errors import ConfigError

        raise ConfigError(
            f"target µm/px {target_mpp:g} is {1 / want_ds:.1f}× finer than this slide's "
            f"{level0_mpp:g} µm/px: tiles would be mostly invented pixels (at most "
            f"{MAX_UPSAMPLE:g}× upsampling); use a target of at least "
            f"{level0_mpp / MAX_UPSAMPLE:.3g} µm/px, or none"
        )
    level = 0
    for i, ds in enumerate(level_downsamples):
        # a level up to 1% coarser still counts: real pyramids have downsamples like 4.0005
        if ds <= want_ds * (1 + LEVEL_TOLERANCE):
            level = i
    ds = float(level_downsamples[level])
    level_mpp = level0_mpp * ds
    read_px = max(1, round(tile_px * target_mpp / level_mpp))
    level0_px = max(1, round(read_px * ds))
    return TileGeometry(level, read_px, tile_px, level0_px, float(target_mpp), ds)


def grid_origins(
    width: int, height: int, step: int, bbox: tuple[float, float, float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left ``(x, y)`` of every whole tile of side ``step`` in a ``width×height`` slide.

    With ``bbox = (minx, miny, maxx, maxy)`` only tiles that touch the box are returned (the
    grid stays anchored at the origin). Returns two int64 arrays in row-major order.
    """
    nx, ny = width // step, height // step
    ix0, iy0, ix1, iy1 = 0, 0, nx, ny
    if bbox is not None:
        minx, miny, maxx, maxy = bbox
        ix0 = max(0, int(np.floor(minx / step)))
        iy0 = max(0, int(np.floor(miny / step)))
        ix1 = min(nx, int(np.ceil(maxx / step)))
        iy1 = min(ny, int(np.ceil(maxy / step)))
    if ix1 <= ix0 or iy1 <= iy0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    ys, xs = np.mgrid[iy0:iy1, ix0:ix1]
    return (xs.ravel() * step).astype(np.int64), (ys.ravel() * step).astype(np.int64)


def n_grid(width: int, height: int, step: int) -> int:
    """Number of whole grid positions in the slide."""
    return (width // step) * (height // step)

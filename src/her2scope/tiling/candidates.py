"""Which grid positions of a slide are read: those in the ROI (or on the tissue mask) that the
thumbnail does not show as glass.

**Region.** With an ROI, a position belongs to it by ``roi_rule`` (its centre inside, or a covered
share of at least ``min_roi_cover``). Without one, by the tissue mask: the thumbnail's non-white
pixels dilated by one pixel (:func:`~her2scope.tiling.background.tissue_mask`), a position counts
when any mask pixel touches it. Positions outside the region are ``n_dropped_roi``.

**Glass pre-filter.** A kept tile has at most ``max_white`` white pixels, so at least
``1 - max_white`` of it is not white. Each position's non-white share is estimated on the
thumbnail (undilated mask, the tile's footprint rounded outwards to whole thumbnail pixels); a
position whose estimate is below ``TISSUE_MARGIN × (1 - max_white)`` is counted as dropped for
white (``n_dropped_white``) without being read. The margin (half the share a kept tile needs)
absorbs the thumbnail's averaging at tissue edges; ``max_white = 1`` (keep white tiles) turns the
pre-filter off. Tests check on tiled test slides that the kept tiles are the same as when every
position of the region is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from her2scope.tiling.background import box_coverage, tissue_mask
from her2scope.tiling.grid import grid_origins

#: A position is read when the thumbnail shows at least this share of the non-white fraction a
#: kept tile needs (``1 - max_white``); 0 reads every position of the region.
TISSUE_MARGIN = 0.5


@dataclass(frozen=True)
class Candidates:
    """The positions to read (level-0 top-left ``xs``, ``ys``) and their region cover."""

    xs: np.ndarray
    ys: np.ndarray
    cover: np.ndarray  # share of the tile in the ROI (tissue mode: on the dilated mask)
    n_region: int  # positions in the ROI / on the tissue mask, read or not
    n_glass: int  # of those, not read: the thumbnail shows them as glass


def thumb_px(w0: int, h0: int, step: int) -> int:
    """Thumbnail size: at least 4 px per tile, between 1024 and 4096 px on the long side."""
    return int(min(4096, max(1024, 4 * math.ceil(max(w0, h0) / step))))


def min_tissue_estimate(max_white: float) -> float:
    """The thumbnail estimate of non-white share below which a position is not read."""
    return TISSUE_MARGIN * (1.0 - max_white)


def tissue_candidates(
    thumb: np.ndarray, w0: int, h0: int, step: int, white_level: int, max_white: float
) -> Candidates:
    """Positions on the tissue mask of ``thumb``, less those it shows as glass."""
    xs, ys = grid_origins(w0, h0, step)
    scale = (thumb.shape[1] / w0, thumb.shape[0] / h0)
    cover = box_coverage(tissue_mask(thumb, white_level), scale, xs, ys, step)
    on = cover > 0
    return _drop_glass(thumb, scale, xs[on], ys[on], cover[on], step, white_level, max_white)


def roi_candidates(
    roi: Any,
    thumb: np.ndarray,
    w0: int,
    h0: int,
    step: int,
    cfg: Any,
) -> Candidates:
    """Positions kept by ``cfg.roi_rule`` in ``roi`` (a shapely geometry, level-0 px), less
    those the thumbnail shows as glass."""
    xs, ys, cover = roi_positions(roi, w0, h0, step, cfg.roi_rule, cfg.min_roi_cover)
    scale = (thumb.shape[1] / w0, thumb.shape[0] / h0)
    return _drop_glass(thumb, scale, xs, ys, cover, step, cfg.white_level, cfg.max_white)


def roi_positions(
    roi: Any, w0: int, h0: int, step: int, roi_rule: str, min_roi_cover: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid positions kept by the ROI rule, with the fraction of each tile the ROI covers."""
    import shapely

    empty = np.zeros(0, np.int64)
    if roi is None:
        return empty, empty, np.zeros(0)
    xs, ys = grid_origins(w0, h0, step, roi.bounds)
    if len(xs) == 0:
        return empty, empty, np.zeros(0)
    boxes = shapely.box(xs, ys, xs + step, ys + step)
    shapely.prepare(roi)
    touch = shapely.intersects(roi, boxes)
    inside = shapely.contains_properly(roi, boxes)
    cover = np.where(inside, 1.0, 0.0)
    edge = touch & ~inside
    if edge.any():
        cover[edge] = shapely.area(shapely.intersection(boxes[edge], roi)) / float(step * step)
    cover = np.clip(cover, 0.0, 1.0)
    if roi_rule == "centre":
        keep = shapely.contains_xy(roi, xs + step / 2, ys + step / 2)
    else:
        keep = cover >= min_roi_cover - 1e-12
    return xs[keep], ys[keep], cover[keep]


def _drop_glass(
    thumb: np.ndarray,
    scale: tuple[float, float],
    xs: np.ndarray,
    ys: np.ndarray,
    cover: np.ndarray,
    step: int,
    white_level: int,
    max_white: float,
) -> Candidates:
    need = min_tissue_estimate(max_white)
    if need <= 0 or len(xs) == 0:
        return Candidates(xs, ys, cover, len(xs), 0)
    estimate = box_coverage(tissue_mask(thumb, white_level, dilate_px=0), scale, xs, ys, step)
    read = estimate >= need
    return Candidates(xs[read], ys[read], cover[read], len(xs), int((~read).sum()))

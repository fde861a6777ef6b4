"""Tile-value maps over the slide thumbnail: rasterise per-tile values, draw them with a legend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from her2scope._io import atomic_path


def tile_boxes(
    level0_xy: np.ndarray,
    tile_level0_px: np.ndarray | float,
    downsample: float,
) -> np.ndarray:
    """The map pixels each tile paints, as ``[N, 4]`` int rows ``(r0, r1, c0, c1)`` (half-open,
    not clipped to the map): the one tile-to-map rule of her2scope.

    Map pixel ``(r, c)`` covers level-0 ``[c·d, (c+1)·d) × [r·d, (r+1)·d)`` for ``d = downsample``.
    A tile ``[x, x+s) × [y, y+s)`` paints the map pixels whose **centre** lies inside it, so tiles
    of a grid paint the map without gaps or double-painted seams whatever ``d``; a tile smaller than
    a pixel that holds no pixel centre paints the one pixel holding its own centre.
    """
    xy = np.asarray(level0_xy, dtype=np.float64).reshape(-1, 2)
    side = np.broadcast_to(np.asarray(tile_level0_px, dtype=np.float64), (len(xy),))
    lo = np.ceil(xy / downsample - 0.5)
    hi = np.ceil((xy + side[:, None]) / downsample - 0.5)
    own = np.floor((xy + side[:, None] / 2) / downsample)  # the pixel holding the tile centre
    empty = hi <= lo
    lo = np.where(empty, own, lo)
    hi = np.where(empty, own + 1, hi)
    return np.stack([lo[:, 1], hi[:, 1], lo[:, 0], hi[:, 0]], axis=1).astype(np.int64)


def paint_tiles(
    boxes: np.ndarray,
    map_shape: tuple[int, int],
    patch: Callable[[int, int, int], np.ndarray | float],
) -> np.ndarray:
    """Average per-tile patches into a ``map_shape`` float map; NaN where no tile paints.

    ``boxes`` are :func:`tile_boxes` rows; ``patch(i, rows, cols)`` is tile ``i``'s value (a
    number, or an array of its whole box's shape). Boxes are clipped to the map.
    """
    h, w = map_shape
    acc = np.zeros((h, w), dtype=np.float64)
    cnt = np.zeros((h, w), dtype=np.float64)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        if rr1 <= rr0 or cc1 <= cc0:
            continue
        value = patch(i, int(r1 - r0), int(c1 - c0))
        if isinstance(value, np.ndarray):
            value = value[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
        acc[rr0:rr1, cc0:cc1] += value
        cnt[rr0:rr1, cc0:cc1] += 1
    out = np.full((h, w), np.nan)
    np.divide(acc, cnt, out=out, where=cnt > 0)
    return out


def tile_value_map(
    level0_xy: np.ndarray,
    tile_level0_px: np.ndarray | float,
    values: np.ndarray,
    map_shape: tuple[int, int],
    downsample: float,
) -> np.ndarray:
    """Rasterise one value per tile into a ``map_shape`` (rows, cols) float map; NaN where no tile.

    Each tile paints the pixels :func:`tile_boxes` gives it; overlapping tiles are averaged. Tiles
    outside the map are clipped.
    """
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    boxes = tile_boxes(level0_xy, tile_level0_px, downsample)
    if len(vals) != len(boxes):
        raise ValueError(f"{len(vals)} values for {len(boxes)} tiles")
    return paint_tiles(boxes, map_shape, lambda i, rows, cols: float(vals[i]))


def _roi_rings(geom: Any) -> list[np.ndarray]:
    if geom is None or geom.is_empty:
        return []
    polys = getattr(geom, "geoms", [geom])
    rings = []
    for p in polys:
        if p.geom_type == "Polygon":
            rings.append(np.asarray(p.exterior.coords))
            rings += [np.asarray(r.coords) for r in p.interiors]
        else:
            rings += _roi_rings(p)
    return rings


def draw_heatmap(
    path: str | Path,
    thumbnail: np.ndarray,
    value_map: np.ndarray,
    downsample: float,
    classes: Sequence[str],
    title: str,
    roi: Any = None,
    alpha: float = 0.55,
) -> Path:
    """Write a PNG: ``thumbnail`` with the expected-score ``value_map`` (0 … K-1, NaN = no tile;
    it covers the whole thumbnail, each value a block) over it, the ROI outline (shapely geometry
    in level-0 px) and a colour bar labelled by class.

    The picture is blended here at the size it takes in the PNG (one image for matplotlib to
    place, not two full-size ones to resample and composite: half the time of a heatmap).
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # object API: no pyplot state, no backend switch

    k = len(classes)
    h, w = thumbnail.shape[:2]
    cmap, norm = colormaps["RdYlBu_r"], Normalize(vmin=0, vmax=k - 1)
    fig = Figure(figsize=(8, 8 * h / max(w, 1) + 0.6), dpi=100)
    ax = fig.subplots()
    for ring in _roi_rings(roi):
        ax.plot(ring[:, 0] / downsample, ring[:, 1] / downsample, color="lime", lw=1.2)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    cbar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04, pad=0.02, ticks=list(range(k)),
        alpha=alpha,
    )  # fmt: skip
    cbar.ax.set_yticklabels(list(classes))
    cbar.set_label("expected score (tile)")
    fig.tight_layout()
    ax.apply_aspect()
    box = ax.get_window_extent()
    size = (max(1, round(box.width)), max(1, round(box.height)))
    picture = blend_value_map(thumbnail, value_map, size, cmap, norm, alpha)
    ax.imshow(picture, extent=(0, w, h, 0), interpolation="nearest", zorder=0)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def blend_value_map(
    thumbnail: np.ndarray,
    value_map: np.ndarray,
    size: tuple[int, int],
    cmap: Any,
    norm: Any,
    alpha: float,
) -> np.ndarray:
    """``thumbnail`` resized to ``size`` (width, height) with ``value_map`` in ``cmap`` laid over
    it at opacity ``alpha`` where it is not NaN (each value-map pixel a block: no smoothing
    across tiles); uint8 RGB."""
    import cv2

    th, tw = thumbnail.shape[:2]
    shrink = size[0] < tw or size[1] < th
    base = cv2.resize(
        np.ascontiguousarray(thumbnail[..., :3]), size,
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    ).astype(np.float32)  # fmt: skip
    values = cv2.resize(value_map.astype(np.float32), size, interpolation=cv2.INTER_NEAREST)
    painted = ~np.isnan(values)
    colour = cmap(norm(np.where(painted, values, 0.0)), bytes=True)[..., :3].astype(np.float32)
    a = np.where(painted, np.float32(alpha), np.float32(0.0))[..., None]
    out = base * (1.0 - a) + colour * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

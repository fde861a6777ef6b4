"""Tile-value maps over the slide thumbnail: rasterise per-tile values, draw them with a legend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from her2scope._io import atomic_path


def tile_value_map(
    level0_xy: np.ndarray,
    tile_level0_px: np.ndarray | float,
    values: np.ndarray,
    map_shape: tuple[int, int],
    downsample: float,
) -> np.ndarray:
    """Rasterise one value per tile into a ``map_shape`` (rows, cols) float map; NaN where no tile.

    A map pixel covers ``downsample`` level-0 pixels; overlapping tiles are averaged. Tiles outside
    the map are clipped.
    """
    xy = np.asarray(level0_xy, dtype=np.float64).reshape(-1, 2)
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(vals) != len(xy):
        raise ValueError(f"{len(vals)} values for {len(xy)} tiles")
    side = np.broadcast_to(np.asarray(tile_level0_px, dtype=np.float64), (len(xy),))
    h, w = map_shape
    acc = np.zeros((h, w), dtype=np.float64)
    cnt = np.zeros((h, w), dtype=np.float64)
    for (x, y), s, v in zip(xy, side, vals, strict=True):
        c0, r0 = int(np.floor(x / downsample)), int(np.floor(y / downsample))
        c1 = max(int(np.ceil((x + s) / downsample)), c0 + 1)
        r1 = max(int(np.ceil((y + s) / downsample)), r0 + 1)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        if c1 > c0 and r1 > r0:
            acc[r0:r1, c0:c1] += v
            cnt[r0:r1, c0:c1] += 1
    out = np.full((h, w), np.nan)
    np.divide(acc, cnt, out=out, where=cnt > 0)
    return out


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
    """Write a PNG: ``thumbnail`` with the expected-score ``value_map`` (0 … K-1, NaN = no tile)
    over it, the ROI outline (shapely geometry in level-0 px) and a colour bar labelled by class.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = len(classes)
    h, w = thumbnail.shape[:2]
    fig, ax = plt.subplots(figsize=(8, 8 * h / max(w, 1) + 0.6), dpi=100)
    ax.imshow(thumbnail, extent=(0, w, h, 0))
    masked = np.ma.masked_invalid(value_map)
    mh, mw = value_map.shape
    im = ax.imshow(
        masked,
        cmap="RdYlBu_r",
        vmin=0,
        vmax=k - 1,
        alpha=alpha,
        extent=(0, mw, mh, 0),
        interpolation="nearest",
    )
    for ring in _roi_rings(roi):
        ax.plot(ring[:, 0] / downsample, ring[:, 1] / downsample, color="lime", lw=1.2)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, ticks=list(range(k)))
    cbar.ax.set_yticklabels(list(classes))
    cbar.set_label("expected score (tile)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path

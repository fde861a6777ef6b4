"""The QC picture of a tiled slide: its thumbnail with the kept tiles and the ROI outline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from her2scope._io import atomic_path


def draw_qc(
    path: str | Path,
    thumb: np.ndarray,
    level0_size: tuple[int, int],
    roi: Any,
    xs: np.ndarray,
    ys: np.ndarray,
    step: int,
) -> None:
    """Write the thumbnail with kept tiles (green boxes) and the ROI outline (blue) as PNG."""
    import cv2

    img = np.ascontiguousarray(thumb.copy())
    sx = img.shape[1] / level0_size[0]
    sy = img.shape[0] / level0_size[1]
    boxes = _boxes(np.asarray(xs), np.asarray(ys), step, sx, sy)
    overlay = img.copy()
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(overlay, (x0, y0), (x1, y1), (0, 170, 0), -1)
    img = cv2.addWeighted(overlay, 0.35, img, 0.65, 0)
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 140, 0), 1)
    if roi is not None:
        for ring in _rings(roi):
            pts = np.round(np.asarray(ring)[:, :2] * [sx, sy]).astype(np.int32)
            cv2.polylines(img, [pts], True, (30, 60, 220), max(1, img.shape[1] // 500))
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write the QC picture {path}")


def _boxes(xs: np.ndarray, ys: np.ndarray, step: int, sx: float, sy: float) -> list[list[int]]:
    """Each tile's box in thumbnail px, ``[x0, y0, x1, y1]`` inclusive, at least 2 px wide.

    Rounded half to even, as Python's ``round`` (numpy's ``rint`` does the same).
    """
    x0 = np.rint(xs * sx)
    y0 = np.rint(ys * sy)
    x1 = np.maximum(x0 + 1, np.rint((xs + step) * sx) - 1)
    y1 = np.maximum(y0 + 1, np.rint((ys + step) * sy) - 1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64).tolist()


def _rings(geom: Any) -> list[Any]:
    polys = getattr(geom, "geoms", [geom])
    out = []
    for p in polys:
        if hasattr(p, "exterior"):
            out.append(p.exterior.coords)
            out.extend(r.coords for r in p.interiors)
    return out

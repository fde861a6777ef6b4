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
    overlay = img.copy()
    for x, y in zip(xs, ys, strict=True):
        p0 = (round(x * sx), round(y * sy))
        p1 = (
            max(p0[0] + 1, round((x + step) * sx) - 1),
            max(p0[1] + 1, round((y + step) * sy) - 1),
        )
        cv2.rectangle(overlay, p0, p1, (0, 170, 0), -1)
    img = cv2.addWeighted(overlay, 0.35, img, 0.65, 0)
    for x, y in zip(xs, ys, strict=True):
        p0 = (round(x * sx), round(y * sy))
        p1 = (
            max(p0[0] + 1, round((x + step) * sx) - 1),
            max(p0[1] + 1, round((y + step) * sy) - 1),
        )
        cv2.rectangle(img, p0, p1, (0, 140, 0), 1)
    if roi is not None:
        for ring in _rings(roi):
            pts = np.round(np.asarray(ring)[:, :2] * [sx, sy]).astype(np.int32)
            cv2.polylines(img, [pts], True, (30, 60, 220), max(1, img.shape[1] // 500))
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write the QC picture {path}")


def _rings(geom: Any) -> list[Any]:
    polys = getattr(geom, "geoms", [geom])
    out = []
    for p in polys:
        if hasattr(p, "exterior"):
            out.append(p.exterior.coords)
            out.extend(r.coords for r in p.interiors)
    return out

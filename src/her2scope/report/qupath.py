"""QuPath GeoJSON export of tile predictions.

QuPath (0.3+) imports a GeoJSON ``FeatureCollection`` by drag-and-drop or *File → Import objects*.
Each tile is a ``Feature`` with a square ``Polygon`` in level-0 pixel coordinates (top-left origin,
the frame QuPath uses) and ``properties``:

- ``objectType``: ``"detection"`` (or ``"tile"``),
- ``classification``: ``{"name": <predicted class>, "color": [r, g, b]}``,
- ``measurements``: ``{"prob_<class>": p, ..., "expected_score": e}`` (shown in QuPath's
  measurement table and *Measure → Show measurement maps*).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from her2scope._io import write_json

#: Class colours (RGB 0-255), ordinal from cool to hot.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "0": (120, 120, 120),
    "1+": (44, 123, 182),
    "low": (44, 123, 182),
    "2+": (253, 174, 97),
    "3+": (215, 25, 28),
    "positive": (215, 25, 28),
}


def class_colour(name: str, index: int, n: int) -> tuple[int, int, int]:
    """The colour of class ``name`` (a fixed palette for HER2 scores, a colormap otherwise)."""
    if name in CLASS_COLOURS:
        return CLASS_COLOURS[name]
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["viridis"](index / max(n - 1, 1))
    return (round(r * 255), round(g * 255), round(b * 255))


def tiles_to_geojson(
    level0_xy: np.ndarray,
    tile_level0_px: np.ndarray | Sequence[float] | float,
    probabilities: np.ndarray,
    classes: Sequence[str],
    object_type: Literal["detection", "tile"] = "detection",
) -> dict[str, Any]:
    """A QuPath-importable FeatureCollection of square tiles.

    ``level0_xy`` [N, 2] holds each tile's top-left corner and ``tile_level0_px`` its side (scalar
    or [N]) in level-0 pixels; ``probabilities`` [N, K] are in ``classes`` order. Raises
    ``ValueError`` when the shapes disagree.
    """
    xy = np.asarray(level0_xy, dtype=np.float64).reshape(-1, 2)
    probs = np.asarray(probabilities, dtype=np.float64)
    n, k = len(xy), len(classes)
    if probs.shape != (n, k):
        raise ValueError(f"probabilities have shape {probs.shape}, expected ({n}, {k})")
    side = np.broadcast_to(np.asarray(tile_level0_px, dtype=np.float64), (n,))
    colours = [list(class_colour(c, i, k)) for i, c in enumerate(classes)]
    expected = probs @ np.arange(k, dtype=np.float64) if k else np.zeros(n)
    features = []
    for i in range(n):
        x0, y0, s = float(xy[i, 0]), float(xy[i, 1]), float(side[i])
        pred = int(np.argmax(probs[i]))
        ring = [[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s], [x0, y0]]
        measurements = {f"prob_{c}": round(float(probs[i, j]), 6) for j, c in enumerate(classes)}
        measurements["expected_score"] = round(float(expected[i]), 6)
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.UUID(int=i + 1)),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": object_type,
                    "classification": {"name": classes[pred], "color": colours[pred]},
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_qupath_geojson(
    path: str | Path,
    level0_xy: np.ndarray,
    tile_level0_px: np.ndarray | Sequence[float] | float,
    probabilities: np.ndarray,
    classes: Sequence[str],
    object_type: Literal["detection", "tile"] = "detection",
) -> Path:
    """Write :func:`tiles_to_geojson` atomically to ``path`` (compact JSON) and return the path."""
    path = Path(path)
    write_json(
        path,
        tiles_to_geojson(level0_xy, tile_level0_px, probabilities, classes, object_type),
        indent=None,  # type: ignore[arg-type]
    )
    return path

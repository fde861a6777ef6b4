"""Output files of the cell stage: cell table (Parquet), QuPath cell GeoJSON, overlay PNG.

Every file is written atomically through :mod:`her2scope._io`.

QuPath GeoJSON of cells (QuPath 0.4+ reads it with *File → Import objects* or drag-and-drop): a
``FeatureCollection`` whose features have ``geometry`` = the cell outline (Polygon, level-0 px,
origin top-left), ``nucleusGeometry`` = the nucleus outline, and ``properties``:
``objectType: "cell"``, ``classification: {"name", "color"}`` (the ASCO/CAP pattern) and
``measurements`` (a name → number map).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from her2scope._io import atomic_path, write_json
from her2scope.cells.classify import INTENSITY_CLASSES, PATTERN_COLOURS, PATTERNS

if TYPE_CHECKING:
    import pandas as pd

#: Columns of ``<slide_id>.cells.parquet``, in order.
CELL_COLUMNS: tuple[str, ...] = (
    "x",
    "y",
    "nucleus_area_um2",
    "nucleus_h_od",
    "membrane_od_mean",
    "membrane_od_p90",
    "completeness",
    "intensity_class",
    "class",
)


def cells_frame(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """The cell table from per-cell arrays (``intensity_idx`` and ``pattern_idx`` as indices)."""
    import pandas as pd

    inten = np.asarray(INTENSITY_CLASSES)
    pats = np.asarray(PATTERNS)
    return pd.DataFrame(
        {
            "x": arrays["x"].astype(np.float32),
            "y": arrays["y"].astype(np.float32),
            "nucleus_area_um2": arrays["nucleus_area_um2"].astype(np.float32),
            "nucleus_h_od": arrays["nucleus_h_od"].astype(np.float32),
            "membrane_od_mean": arrays["membrane_od_mean"].astype(np.float32),
            "membrane_od_p90": arrays["membrane_od_p90"].astype(np.float32),
            "completeness": arrays["completeness"].astype(np.float32),
            "intensity_class": pd.Categorical(
                inten[arrays["intensity_idx"].astype(np.int64)],
                categories=list(INTENSITY_CLASSES),
                ordered=True,
            ),
            "class": pd.Categorical(
                pats[arrays["pattern_idx"].astype(np.int64)],
                categories=list(PATTERNS),
                ordered=True,
            ),
        }
    )


def write_cells_parquet(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, compression="zstd")


def _ring(poly: np.ndarray) -> list[list[float]]:
    pts = [[round(float(x), 1), round(float(y), 1)] for x, y in poly]
    pts.append(pts[0])
    return pts


def cells_geojson(
    df: pd.DataFrame, cell_polys: Sequence[np.ndarray], nucleus_polys: Sequence[np.ndarray]
) -> dict[str, Any]:
    """A QuPath-importable FeatureCollection of cells (see the module docstring).

    ``cell_polys`` / ``nucleus_polys`` hold one (k, 2) level-0 (x, y) outline per row of ``df``.
    """
    if not len(df) == len(cell_polys) == len(nucleus_polys):
        raise ValueError("one cell and one nucleus outline per row of the cell table are needed")
    feats = []
    meas_cols = (
        "nucleus_area_um2",
        "nucleus_h_od",
        "membrane_od_mean",
        "membrane_od_p90",
        "completeness",
    )
    cols = {c: df[c].to_numpy() for c in meas_cols}
    classes = df["class"].astype(str).to_numpy()
    inten = df["intensity_class"].cat.codes.to_numpy()
    for i in range(len(df)):
        name = str(classes[i])
        meas = {c: round(float(cols[c][i]), 4) for c in meas_cols}
        meas["intensity_class"] = int(inten[i])
        feats.append(
            {
                "type": "Feature",
                "id": str(uuid.UUID(int=i + 1)),
                "geometry": {"type": "Polygon", "coordinates": [_ring(cell_polys[i])]},
                "nucleusGeometry": {"type": "Polygon", "coordinates": [_ring(nucleus_polys[i])]},
                "properties": {
                    "objectType": "cell",
                    "classification": {"name": name, "color": list(PATTERN_COLOURS[name])},
                    "measurements": meas,
                },
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def write_cells_geojson(
    path: str | Path,
    df: pd.DataFrame,
    cell_polys: Sequence[np.ndarray],
    nucleus_polys: Sequence[np.ndarray],
) -> None:
    write_json(path, cells_geojson(df, cell_polys, nucleus_polys), indent=None)  # type: ignore[arg-type]


def draw_overlay(
    image: np.ndarray,
    xy: np.ndarray,
    pattern_idx: np.ndarray,
    radius_px: float,
    roi_rings: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """``image`` (RGB uint8, copied) with a ring per cell coloured by pattern and the ROI outline.

    ``xy`` and ``roi_rings`` are in ``image`` pixels.
    """
    import cv2

    out = np.ascontiguousarray(image.copy())
    r = max(1, round(radius_px))
    thick = 1 if r < 4 else 2
    for (x, y), p in zip(np.asarray(xy), np.asarray(pattern_idx), strict=True):
        colour = PATTERN_COLOURS[PATTERNS[int(p)]]
        cv2.circle(out, (round(float(x)), round(float(y))), r, colour, thick, cv2.LINE_AA)
    for ring in roi_rings:
        pts = np.round(np.asarray(ring)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], True, (0, 160, 0), 2, cv2.LINE_AA)
    return out


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[..., ::-1])):
            raise OSError(f"could not write {path}")  # pragma: no cover

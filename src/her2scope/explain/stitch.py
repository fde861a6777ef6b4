"""Stitch per-tile CAMs into one slide-level map at thumbnail resolution."""

from __future__ import annotations

import numpy as np


def stitch_cams(
    cams: np.ndarray,
    level0_xy: np.ndarray,
    tile_level0_px: np.ndarray | float,
    map_shape: tuple[int, int],
    downsample: float,
) -> np.ndarray:
    """Place each tile's CAM ([N, h, w], values in [0, 1]) at its position in a ``map_shape`` map.

    A map pixel covers ``downsample`` level-0 pixels; each CAM is resized (area averaging) to the
    map pixels its tile paints (:func:`her2scope.scoring.heatmap.tile_boxes`, the same rule as
    the expected-score map); overlaps are averaged; pixels no tile covers are NaN.
    """
    import cv2

    from her2scope.scoring.heatmap import paint_tiles, tile_boxes

    cams = np.asarray(cams, dtype=np.float32)
    boxes = tile_boxes(level0_xy, tile_level0_px, downsample)
    if cams.ndim != 3 or len(cams) != len(boxes):
        raise ValueError(f"need [N, h, w] CAMs for {len(boxes)} tiles, got shape {cams.shape}")
    return paint_tiles(
        boxes,
        map_shape,
        lambda i, rows, cols: cv2.resize(cams[i], (cols, rows), interpolation=cv2.INTER_AREA),
    )


def mean_cam_by_label(
    cams: np.ndarray,
    level0_xy: np.ndarray,
    tile_level0_px: np.ndarray | float,
    label_mask: np.ndarray,
    labels: dict[str, tuple[int, ...]],
) -> dict[str, float]:
    """Mean CAM value over the pixels of each label group, pooled over tiles.

    ``label_mask`` is a level-0 label image (rows, cols) of the slide; each tile's CAM is resized
    to its level-0 footprint and compared with the mask there. ``labels`` maps a group name to the
    label values in it, e.g. ``{"membrane": (3,), "stroma/glass": (0, 1)}``. A group with no
    pixel gives NaN.
    """
    import cv2

    cams = np.asarray(cams, dtype=np.float32)
    xy = np.asarray(level0_xy, dtype=np.int64).reshape(-1, 2)
    side = np.broadcast_to(np.asarray(tile_level0_px, dtype=np.float64), (len(xy),))
    sums = dict.fromkeys(labels, 0.0)
    counts = dict.fromkeys(labels, 0)
    h, w = label_mask.shape[:2]
    for cam, (x, y), s in zip(cams, xy, side, strict=True):
        s_i = round(float(s))
        x1, y1 = min(x + s_i, w), min(y + s_i, h)
        if x1 <= x or y1 <= y:
            continue
        full = cv2.resize(cam, (s_i, s_i), interpolation=cv2.INTER_LINEAR)[: y1 - y, : x1 - x]
        lab = label_mask[y:y1, x:x1]
        for name, values in labels.items():
            sel = np.isin(lab, values)
            sums[name] += float(full[sel].sum())
            counts[name] += int(sel.sum())
    return {k: (sums[k] / counts[k] if counts[k] else float("nan")) for k in labels}

"""What counts as background: the white fraction of a tile and a thumbnail tissue mask.

**White.** A pixel is *white* when its red, green and blue values are all strictly above
``white_level`` (default 220 of 255, i.e. an optical density below 0.064 in every channel).
``white_frac`` is the fraction of a tile's pixels that are white; the study drops a tile when it
is above 0.60. Glass, dust-free background and washed-out areas are white; hematoxylin (even pale,
as on HER2 IHC counterstains), DAB, eosin and pen ink are not.

**Tissue mask.** Computed on a thumbnail with the same rule: a thumbnail pixel is tissue when it is
not white, dilated by one thumbnail pixel so that tissue at a tile's edge is not lost to the
thumbnail's averaging. It works on IHC (pale blue hematoxylin, brown DAB) and H&E alike because it
uses no stain-specific colour. Undilated, it estimates each position's non-white share, so glass is not read
(:mod:`her2scope.tiling.candidates`). It only decides which grid positions are worth reading; the
white rule on full-resolution pixels decides which tiles are kept.
"""

from __future__ import annotations

import numpy as np


def white_fraction(rgb: np.ndarray, white_level: int = 220) -> float:
    """Fraction of pixels of an ``H×W×3`` uint8 RGB array whose R, G and B are all > ``white_level``.

    Exactly :func:`white_fraction_numpy`, in about 0.17 ms for a 512-px tile instead of 0.2-0.3 ms
    with ``cv2.inRange`` (3.9 ms with numpy): each channel value is thresholded to 0 or 255, and the
    grey level of a pixel is then 255 only when all three of its channels are (one channel at 0
    takes at least 0.114 × 255 from it; OpenCV's RGB→grey weights are fixed-point and sum to 1).
    """
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    n = rgb.shape[0] * rgb.shape[1]
    if n == 0:
        return 1.0
    if white_level >= 255:
        return 0.0
    above = cv2.threshold(np.ascontiguousarray(rgb), white_level, 255, cv2.THRESH_BINARY)[1]
    grey = cv2.cvtColor(above, cv2.COLOR_RGB2GRAY)
    all_above = cv2.threshold(grey, 254, 255, cv2.THRESH_BINARY)[1]
    return float(cv2.countNonZero(all_above)) / n


def white_fraction_numpy(rgb: np.ndarray, white_level: int = 220) -> float:
    """Reference implementation of :func:`white_fraction` (numpy; slower)."""
    return float((rgb > white_level).all(axis=2).mean()) if rgb.size else 1.0


def tissue_mask(thumb: np.ndarray, white_level: int = 220, dilate_px: int = 1) -> np.ndarray:
    """Boolean tissue mask of a thumbnail: not white (see module docstring), dilated."""
    import cv2

    non_white = cv2.inRange(np.ascontiguousarray(thumb), (white_level + 1,) * 3, (255,) * 3) == 0
    mask = non_white.astype(np.uint8)
    if dilate_px > 0:
        k = 2 * dilate_px + 1
        mask = cv2.dilate(mask, np.ones((k, k), np.uint8))
    return mask.astype(bool)


def box_coverage(
    mask: np.ndarray, scale: tuple[float, float], xs: np.ndarray, ys: np.ndarray, step: int
) -> np.ndarray:
    """Fraction of each level-0 box ``(x, y, step, step)`` that is set in ``mask``.

    ``scale = (sx, sy)`` maps level-0 px to mask px (mask = level0 * scale). Boxes are rounded
    outwards to whole mask pixels (a box smaller than a pixel covers that pixel).
    """
    import cv2

    if len(xs) == 0:
        return np.zeros(0, float)
    h, w = mask.shape
    integral = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_64F)
    sx, sy = scale
    x0 = np.clip(np.floor(xs * sx).astype(np.int64), 0, w)
    y0 = np.clip(np.floor(ys * sy).astype(np.int64), 0, h)
    x1 = np.clip(np.ceil((xs + step) * sx).astype(np.int64), 0, w)
    y1 = np.clip(np.ceil((ys + step) * sy).astype(np.int64), 0, h)
    x1 = np.maximum(x1, np.minimum(x0 + 1, w))
    y1 = np.maximum(y1, np.minimum(y0 + 1, h))
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return total / area

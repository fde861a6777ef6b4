"""Write pyramidal, tiled, JPEG-compressed TIFF slides that OpenSlide and tiffslide open.

Used by the synthetic cohort, the benchmarks and the tests. The file is a generic tiled TIFF: one
page per pyramid level (each half the size of the one before), resolution tags in centimetres so
that OpenSlide reports ``openslide.mpp-x``/``-y``, and an ImageDescription saying the slide is
synthetic when asked to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from her2scope._io import atomic_path


def pyramid_levels(image: np.ndarray, min_px: int = 256) -> list[np.ndarray]:
    """Level 0 and its 2× reductions (area filter) until the longer side is below ``min_px``."""
    import cv2

    levels = [image]
    while max(levels[-1].shape[:2]) >= 2 * min_px:
        prev = levels[-1]
        h, w = prev.shape[:2]
        levels.append(cv2.resize(prev, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return levels


def write_pyramidal_tiff(
    path: str | Path,
    image: np.ndarray,
    mpp: float,
    *,
    tile_px: int = 256,
    quality: int = 90,
    description: str = "",
    min_level_px: int = 256,
) -> Path:
    """Write ``image`` (H×W×3 uint8 RGB) as a pyramidal JPEG TIFF at ``mpp`` µm/px, atomically.

    Pixels are written tile by tile; the same input always gives the same bytes.
    """
    import tifffile

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 uint8 image, got {image.shape} {image.dtype}")
    path = Path(path)
    px_per_cm = 1e4 / float(mpp)
    levels = pyramid_levels(image, min_level_px)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tw:
        for i, lev in enumerate(levels):
            tw.write(
                _tiles(lev, tile_px),
                shape=lev.shape,
                **_level_options(i, tile_px, px_per_cm, quality, description),
            )
    return path


def _level_options(
    level: int,
    tile_px: int,
    px_per_cm: float,
    quality: int,
    description: str,
    jpeg_rgb: bool = False,
) -> dict:
    """tifffile options of pyramid level ``level`` (each level halves the one before)."""
    res = px_per_cm / 2**level
    return {
        "dtype": np.uint8,
        "tile": (tile_px, tile_px),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality, **({"outcolorspace": 2} if jpeg_rgb else {})},
        "resolution": (res, res),
        "resolutionunit": "CENTIMETER",
        "description": description if level == 0 else None,
        "subfiletype": 0 if level == 0 else 1,
        "metadata": None,
        "software": False,
    }


def _tiles(image: np.ndarray, tile_px: int) -> Iterator[np.ndarray]:
    """Row-major tiles, padded with white at the right and bottom edges."""
    h, w = image.shape[:2]
    for y in range(0, h, tile_px):
        for x in range(0, w, tile_px):
            t = image[y : y + tile_px, x : x + tile_px]
            if t.shape[0] != tile_px or t.shape[1] != tile_px:
                pad = np.full((tile_px, tile_px, 3), 255, np.uint8)
                pad[: t.shape[0], : t.shape[1]] = t
                t = pad
            yield np.ascontiguousarray(t)


def write_pyramidal_tiff_lazy(
    path: str | Path,
    size: tuple[int, int],
    mpp: float,
    render: Callable[[int, int, int, int, int], np.ndarray],
    *,
    tile_px: int = 256,
    quality: int = 90,
    description: str = "",
    min_level_px: int = 256,
    jpeg_rgb: bool = False,
) -> Path:
    """Write a pyramidal JPEG TIFF whose pixels come from ``render``, one tile at a time.

    ``size = (width, height)`` of level 0. ``render(level, x, y, w, h)`` returns the ``h×w×3``
    uint8 RGB pixels of ``level`` (downsample ``2**level``) with top-left ``(x, y)`` in that
    level's pixels. Memory stays at a few tiles whatever the slide size, so this writes slides of
    tens of gigapixels (benchmarks); levels are rendered, not downsampled from level 0.
    ``jpeg_rgb`` stores JPEG in RGB without chroma subsampling (as Aperio scanners do) instead of
    subsampled YCbCr; such tiles are larger and slower to decode.
    """
    import tifffile

    width, height = int(size[0]), int(size[1])
    path = Path(path)
    px_per_cm = 1e4 / float(mpp)
    dims = [(width, height)]
    while max(dims[-1]) >= 2 * min_level_px:
        w, h = dims[-1]
        dims.append((w // 2, h // 2))
    big = width * height * 3 > 2**31
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=big) as tw:
        for i, (w, h) in enumerate(dims):
            tw.write(
                _rendered_tiles(render, i, w, h, tile_px),
                shape=(h, w, 3),
                subsampling=(1, 1) if jpeg_rgb else None,
                **_level_options(i, tile_px, px_per_cm, quality, description, jpeg_rgb),
            )
    return path


def _rendered_tiles(
    render: Callable[[int, int, int, int, int], np.ndarray],
    level: int,
    w: int,
    h: int,
    tile_px: int,
) -> Iterator[np.ndarray]:
    for y in range(0, h, tile_px):
        for x in range(0, w, tile_px):
            tw, th = min(tile_px, w - x), min(tile_px, h - y)
            t = np.asarray(render(level, x, y, tw, th), dtype=np.uint8)
            if t.shape != (th, tw, 3):
                raise ValueError(f"render returned {t.shape}, expected {(th, tw, 3)}")
            if (tw, th) != (tile_px, tile_px):
                pad = np.full((tile_px, tile_px, 3), 255, np.uint8)
                pad[:th, :tw] = t
                t = pad
            yield np.ascontiguousarray(t)

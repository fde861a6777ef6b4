"""The one tile-to-map rule (scoring.heatmap.tile_boxes), used by the score map and the stitched
explanation map alike, on tiny grids with exact expectations."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2scope.explain.stitch import stitch_cams
from her2scope.scoring.heatmap import tile_boxes, tile_value_map


def test_tiles_of_a_grid_paint_the_map_without_gaps_or_seams() -> None:
    # 10 px tiles on a map of 4 px pixels: pixel centres at 2, 6, 10, 14, ...
    boxes = tile_boxes(np.array([[0, 0], [10, 0], [20, 0]]), 10, downsample=4.0)
    np.testing.assert_array_equal(boxes[:, 2:], [[0, 2], [2, 5], [5, 7]])  # columns
    np.testing.assert_array_equal(boxes[:, :2], [[0, 2], [0, 2], [0, 2]])  # rows
    m = tile_value_map(np.array([[0, 0], [10, 0], [20, 0]]), 10, [1.0, 2.0, 3.0], (2, 8), 4.0)
    np.testing.assert_array_equal(m[0, :7], [1, 1, 2, 2, 2, 3, 3])  # no averaged seam pixel
    assert np.isnan(m[:, 7]).all()  # centre 30 is outside every tile
    np.testing.assert_array_equal(m[1], m[0])


def test_a_pixel_centre_on_a_tile_edge_belongs_to_the_tile_that_starts_there() -> None:
    # pixel 1 of an 8 px map has its centre at 12: the tile [12, 28) paints it, [-4, 12) does not
    # (boxes are not clipped: [-4, 12) also holds the centre -4 of pixel -1)
    boxes = tile_boxes(np.array([[-4, 0], [12, 0]]), 16, downsample=8.0)
    np.testing.assert_array_equal(boxes[:, 2:], [[-1, 1], [1, 3]])


def test_a_tile_smaller_than_a_pixel_paints_the_pixel_holding_its_centre() -> None:
    boxes = tile_boxes(np.array([[4, 9]]), 1, downsample=4.0)  # centre (4.5, 9.5): pixel (2, 1)
    np.testing.assert_array_equal(boxes, [[2, 3, 1, 2]])


def test_maps_are_clipped_and_overlaps_averaged() -> None:
    m = tile_value_map(np.array([[-8, 0], [0, 0]]), 16, [4.0, 2.0], (1, 3), 8.0)
    np.testing.assert_array_equal(m[0, :1], [3.0])  # both tiles paint pixel 0
    np.testing.assert_array_equal(m[0, 1:2], [2.0])
    assert np.isnan(m[0, 2])


def test_stitched_cams_and_value_maps_paint_the_same_pixels() -> None:
    xy = np.array([[0, 0], [10, 0], [20, 6]])
    cams = np.ones((3, 5, 5), np.float32)
    stitched = stitch_cams(cams, xy, 10, (9, 9), downsample=4.0)
    values = tile_value_map(xy, 10, np.ones(3), (9, 9), downsample=4.0)
    np.testing.assert_array_equal(np.isnan(stitched), np.isnan(values))
    assert (~np.isnan(values)).sum() == 2 * 2 + 2 * 3 + 2 * 3  # rows x columns per tile


def test_the_value_map_is_blended_over_the_thumbnail_where_tiles_were_scored() -> None:
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    from her2scope.scoring.heatmap import blend_value_map

    thumb = np.full((40, 60, 3), (200, 180, 220), np.uint8)
    vmap = np.full((40, 60), np.nan)
    vmap[:20, :30] = 2.0  # 3+ tiles in the top-left quarter
    vmap[20:, 30:] = 0.0  # 1+ tiles bottom-right
    cmap, norm = colormaps["RdYlBu_r"], Normalize(0, 2)
    out = blend_value_map(thumb, vmap, (30, 20), cmap, norm, 0.55)  # half size
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    red = np.array(cmap(1.0, bytes=True)[:3], float)
    blue = np.array(cmap(0.0, bytes=True)[:3], float)
    base = np.array([200, 180, 220], float)
    np.testing.assert_allclose(out[2, 2], 0.45 * base + 0.55 * red, atol=1)
    np.testing.assert_allclose(out[17, 27], 0.45 * base + 0.55 * blue, atol=1)
    np.testing.assert_array_equal(out[2, 27], base)  # no tile: the thumbnail as it is
    np.testing.assert_array_equal(out[17, 2], base)


def test_heatmap_png_shows_the_blend_over_the_whole_thumbnail(tmp_path: Path) -> None:
    from matplotlib import colormaps
    from PIL import Image

    from her2scope.scoring.heatmap import draw_heatmap

    thumb = np.full((300, 400, 3), 235, np.uint8)
    vmap = np.full((300, 400), np.nan)
    vmap[50:250, 50:200] = 2.0
    path = draw_heatmap(tmp_path / "h.png", thumb, vmap, 8.0, ("1+", "2+", "3+"), "t")
    png = np.asarray(Image.open(path).convert("RGB")).astype(float)
    red = 0.45 * 235 + 0.55 * np.array(colormaps["RdYlBu_r"](1.0, bytes=True)[:3], float)
    near_red = (np.abs(png - red).max(axis=-1) <= 2).sum()
    near_glass = (np.abs(png - 235).max(axis=-1) <= 2).sum()
    assert near_red > 0.2 * near_glass > 1000  # ~ 150 × 200 of 400 × 300 px, scaled alike
    # a coarser map covers the same thumbnail: the same picture, each value a block
    coarse = draw_heatmap(tmp_path / "c.png", thumb, vmap[::50, ::50], 8.0, ("1+", "2+", "3+"), "t")
    png2 = np.asarray(Image.open(coarse).convert("RGB")).astype(float)
    assert png2.shape == png.shape
    assert np.mean(np.abs(png2 - png).max(axis=-1) > 2) < 0.01

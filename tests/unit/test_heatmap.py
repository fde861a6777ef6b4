"""The one tile-to-map rule (scoring.heatmap.tile_boxes), used by the score map and the stitched
explanation map alike, on tiny grids with exact expectations."""

from __future__ import annotations

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

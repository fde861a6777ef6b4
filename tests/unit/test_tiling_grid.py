"""Pure grid maths, the white rule and mask coverage, on tiny shapes with exact answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from her2scope.tiling.background import (
    box_coverage,
    tissue_mask,
    white_fraction,
    white_fraction_numpy,
)
from her2scope.tiling.grid import grid_origins, n_grid, plan_geometry


def test_plan_geometry_without_target_reads_level0_as_is() -> None:
    g = plan_geometry(0.25, (1.0, 4.0, 16.0), 512)
    assert (g.level, g.read_px, g.tile_px, g.level0_px, g.mpp, g.downsample) == (
        0,
        512,
        512,
        512,
        0.25,
        1.0,
    )


@pytest.mark.parametrize(
    ("mpp0", "downsamples", "target", "level", "read_px", "level0_px"),
    [
        (0.25, (1.0, 4.0, 16.0), 0.5, 0, 1024, 1024),  # no level at 2×: read 1024 at level 0
        (0.25, (1.0, 2.0, 4.0), 0.5, 1, 512, 1024),  # exact level
        (0.25, (1.0, 2.0, 4.0), 1.5, 2, 768, 3072),  # 6×: level 2 (4×), 1.5× bigger read
        (0.5, (1.0, 2.0), 0.25, 0, 256, 256),  # finer than the slide: upsample level 0
        (0.2525, (1.0, 4.000512), 1.01, 1, 512, 2048),  # float downsample of a real SVS
    ],
)
def test_plan_geometry_picks_the_deepest_level_not_coarser_than_target(
    mpp0: float,
    downsamples: tuple[float, ...],
    target: float,
    level: int,
    read_px: int,
    level0_px: int,
) -> None:
    g = plan_geometry(mpp0, downsamples, 512, target)
    assert (g.level, g.read_px, g.level0_px, g.tile_px, g.mpp) == (
        level,
        read_px,
        level0_px,
        512,
        target,
    )
    assert g.read_px == round(512 * target / (mpp0 * downsamples[level]))


def test_plan_geometry_refuses_more_than_4x_upsampling() -> None:
    """Issue 14.10: `--target-mpp 0.0001` gave 227,848 one-pixel tiles."""
    from her2scope.errors import ConfigError

    assert plan_geometry(0.5, (1.0, 4.0), 512, 0.125).read_px == 128  # 4×: still allowed
    with pytest.raises(ConfigError, match=r"finer than this slide's 0.5 µm/px.*at least 0.125"):
        plan_geometry(0.5, (1.0, 4.0), 512, 0.12)
    with pytest.raises(ConfigError, match="5000.0× finer"):
        plan_geometry(0.5, (1.0, 4.0), 512, 0.0001)


def test_grid_origins_whole_tiles_only_and_bbox() -> None:
    xs, ys = grid_origins(1100, 520, 256)
    assert n_grid(1100, 520, 256) == 8 == len(xs)  # 4 across, 2 down; partial strips skipped
    assert xs.tolist() == [0, 256, 512, 768] * 2
    assert ys.tolist() == [0] * 4 + [256] * 4
    xs, ys = grid_origins(1100, 520, 256, bbox=(300, 10, 520, 20))
    assert list(zip(xs.tolist(), ys.tolist(), strict=True)) == [(256, 0), (512, 0)]
    xs, ys = grid_origins(1100, 520, 256, bbox=(5000, 0, 6000, 10))
    assert len(xs) == 0 and xs.dtype == np.int64
    assert len(grid_origins(100, 100, 256)[0]) == 0


def test_white_rule_boundary_is_strictly_above_white_level() -> None:
    tile = np.zeros((2, 4, 3), np.uint8)
    tile[0, 0] = (221, 221, 221)  # white
    tile[0, 1] = (220, 255, 255)  # not white: one channel at the level
    tile[0, 2] = (255, 255, 255)  # white
    tile[0, 3] = (230, 230, 200)  # pale yellow: not white
    tile[1] = (100, 60, 30)  # DAB brown
    assert white_fraction(tile, 220) == pytest.approx(2 / 8)
    assert white_fraction(tile, 254) == pytest.approx(1 / 8)
    assert white_fraction(tile, 255) == 0.0
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        white_fraction(tile[..., 0])


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3))),
    st.integers(0, 254),
)
def test_white_fraction_matches_the_numpy_reference(tile: np.ndarray, level: int) -> None:
    assert white_fraction(tile, level) == pytest.approx(
        white_fraction_numpy(tile, level), abs=1e-12
    )


def test_tissue_mask_finds_pale_hematoxylin_and_dab_but_not_glass() -> None:
    thumb = np.full((20, 20, 3), 242, np.uint8)  # glass
    thumb[2, 2] = (205, 210, 232)  # pale hematoxylin (IHC counterstain)
    thumb[10, 15] = (150, 100, 60)  # DAB
    mask = tissue_mask(thumb, 220, dilate_px=0)
    assert mask.sum() == 2 and mask[2, 2] and mask[10, 15]
    assert tissue_mask(thumb, 220, dilate_px=1).sum() == 18  # two 3×3 blocks


def test_box_coverage_is_exact_on_aligned_boxes() -> None:
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[0, 1] = mask[1, 0] = True
    mask[3, 3] = True
    # mask pixel = 10 level-0 px; boxes of 20 px
    cov = box_coverage(mask, (0.1, 0.1), np.array([0, 20, 20, 0]), np.array([0, 20, 0, 20]), 20)
    np.testing.assert_allclose(cov, [0.75, 0.25, 0.0, 0.0])
    assert box_coverage(mask, (0.1, 0.1), np.array([]), np.array([]), 20).shape == (0,)


def test_glass_prefilter_reads_a_position_from_half_the_share_a_kept_tile_needs() -> None:
    from her2scope.tiling.candidates import min_tissue_estimate, tissue_candidates

    # a 64×32 px slide, 16-px tiles, thumbnail 8×4 (2×2 thumbnail px per tile)
    thumb = np.full((4, 8, 3), 242, np.uint8)
    thumb[0, 0] = (150, 100, 60)  # tile (0, 0): 1 of 4 pixels not white
    thumb[0, 4:6] = (150, 100, 60)  # tile (32, 0): 2 of 4; tile (16, 0) only touches the mask
    thumb[2:4, 6:8] = (150, 100, 60)  # tile (48, 16): 4 of 4
    assert min_tissue_estimate(0.6) == pytest.approx(0.2)
    c = tissue_candidates(thumb, 64, 32, 16, white_level=220, max_white=0.6)
    assert list(zip(c.xs, c.ys, strict=True)) == [(0, 0), (32, 0), (48, 16)]
    # on the dilated mask: the 4 top tiles and the 2 right bottom ones; 3 of them show no tissue
    assert (c.n_region, c.n_glass) == (6, 3)
    # a stricter rule needs more tissue: 0.35 > 1/4, so tile (0, 0) is no longer read
    c = tissue_candidates(thumb, 64, 32, 16, white_level=220, max_white=0.3)
    assert list(zip(c.xs, c.ys, strict=True)) == [(32, 0), (48, 16)]
    # keeping white tiles (max_white 1) reads every position of the region
    c = tissue_candidates(thumb, 64, 32, 16, white_level=220, max_white=1.0)
    assert (len(c.xs), c.n_region, c.n_glass) == (6, 6, 0)

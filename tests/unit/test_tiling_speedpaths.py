"""The tiling pass's fast paths give exactly what the plain ones give.

The white test (OpenCV) against the study's rule written in numpy, the QC boxes computed at once
against the per-tile loop they replaced, the two-step scan against reading in one step, and the
imports that must not happen before the scan starts.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from her2scope.tiling.background import white_fraction, white_fraction_numpy


def _study_rule(rgb: np.ndarray, white_level: int) -> float:
    """The study's rule, spelled out: a pixel is white when R, G and B are all > white_level."""
    return float(np.mean((rgb[..., 0] > white_level) & (rgb[..., 1] > white_level)
                         & (rgb[..., 2] > white_level)))  # fmt: skip


def test_white_fraction_is_exact_at_the_boundary_values() -> None:
    # every combination of 0, 220, 221 and 255 over the three channels, once per pixel
    values = (0, 220, 221, 255)
    pixels = np.array(list(itertools.product(values, repeat=3)), np.uint8)
    tile = pixels.reshape(8, 8, 3)
    expected = sum(all(v > 220 for v in p) for p in pixels.tolist())  # 221/255 in every channel
    assert expected == 8
    assert white_fraction(tile, 220) == expected / 64 == _study_rule(tile, 220)
    for level in (0, 219, 220, 221, 254):
        assert white_fraction(tile, level) == _study_rule(tile, level), level
    assert white_fraction(tile, 255) == 0.0 == _study_rule(tile, 255)


@pytest.mark.parametrize("level", [0, 1, 128, 219, 220, 221, 253, 254])
def test_white_fraction_matches_the_rule_on_random_tiles(level: int) -> None:
    rng = np.random.default_rng(level)
    for shape in ((512, 512, 3), (1, 1, 3), (7, 13, 3), (300, 200, 3)):
        wide = rng.integers(0, 256, shape, dtype=np.uint8)
        near = rng.integers(218, 224, shape, dtype=np.uint8)  # dense around 220/221
        for tile in (wide, near):
            got = white_fraction(tile, level)
            assert got == _study_rule(tile, level)
            assert got == white_fraction_numpy(tile, level)


def test_white_fraction_of_views_and_uniform_tiles() -> None:
    rng = np.random.default_rng(7)
    big = rng.integers(200, 256, (64, 80, 3), dtype=np.uint8)
    view = big[5:50:2, 3:70:3]  # not contiguous
    assert white_fraction(view, 220) == _study_rule(view, 220)
    for v, frac in ((220, 0.0), (221, 1.0), (255, 1.0), (0, 0.0)):
        assert white_fraction(np.full((16, 16, 3), v, np.uint8), 220) == frac
    assert white_fraction(np.zeros((0, 4, 3), np.uint8)) == 1.0


def _boxes_loop(xs: np.ndarray, ys: np.ndarray, step: int, sx: float, sy: float) -> list:
    """The per-tile loop draw_qc used before its boxes were computed at once."""
    out = []
    for x, y in zip(xs, ys, strict=True):
        p0 = (round(x * sx), round(y * sy))
        p1 = (
            max(p0[0] + 1, round((x + step) * sx) - 1),
            max(p0[1] + 1, round((y + step) * sy) - 1),
        )
        out.append([p0[0], p0[1], p1[0], p1[1]])
    return out


@pytest.mark.parametrize("step", [1, 3, 512, 1000])
def test_qc_boxes_equal_the_per_tile_loop(step: int) -> None:
    from her2scope.tiling.qc import _boxes

    rng = np.random.default_rng(step)
    xs = rng.integers(0, 200, 300).astype(np.int64) * step
    ys = rng.integers(0, 150, 300).astype(np.int64) * step
    for w0, h0, tw, th in ((200 * step, 150 * step, 1024, 768), (40_000, 30_000, 1024, 768)):
        sx, sy = tw / w0, th / h0
        assert _boxes(xs, ys, step, sx, sy) == _boxes_loop(xs, ys, step, sx, sy)
    assert _boxes(np.zeros(0, np.int64), np.zeros(0, np.int64), step, 0.1, 0.1) == []


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from her2scope.slide.write import write_pyramidal_tiff

    rng = np.random.default_rng(3)
    img = np.full((768, 1024, 3), 240, np.uint8)
    img[100:600, 150:700] = rng.integers(60, 200, (500, 550, 3), dtype=np.uint8)
    return write_pyramidal_tiff(tmp_path_factory.mktemp("s") / "s.tif", img, 0.5, quality=90)


def test_start_scan_reads_what_scan_positions_reads(small_slide: Path, tmp_path: Path) -> None:
    from her2scope.tiling.grid import grid_origins, plan_geometry
    from her2scope.tiling.scan import scan_positions, start_scan

    geo = plan_geometry(0.5, [1.0], 128)
    xs, ys = grid_origins(1024, 768, geo.level0_px)
    one = scan_positions(small_slide, None, "auto", 220, geo, xs, ys, "s", show_progress=False)
    export = tmp_path / "tiles"
    with start_scan(small_slide, None, "auto", 220, geo, xs, ys, "s", export_dir=export,
                    show_progress=False) as pending:  # fmt: skip
        assert not list(export.glob("*.png"))  # in this process: nothing read before result()
        two = pending.result()
    assert len(list(export.glob("*.png"))) == len(xs)
    np.testing.assert_array_equal(one.white, two.white)
    np.testing.assert_array_equal(one.errors, two.errors)
    with start_scan(small_slide, None, "auto", 220, geo, xs, ys, "s", workers=2,
                    show_progress=False) as pending:  # fmt: skip
        pooled = pending.result()
    np.testing.assert_array_equal(one.white, pooled.white)
    assert one.white.min() == 0.0 and one.white.max() == 1.0  # tissue, glass
    assert ((one.white > 0) & (one.white < 1)).any() and not one.errors.any()  # and edges
    # no positions: nothing to read, no pool
    with start_scan(small_slide, None, "auto", 220, geo, xs[:0], ys[:0], "s", workers=2) as p:
        assert len(p.result().white) == 0


def test_pandas_is_not_imported_before_the_scan_starts(small_slide: Path, tmp_path: Path) -> None:
    """pandas (~0.3 s) loads while the workers read; nothing imports it before that."""
    code = f"""
import sys
import her2scope.tiling.scan as scan
from her2scope.tiling.config import TilingConfig
from her2scope.tiling.extract import tile_slide

seen = []
real = scan.start_scan
def spy(*a, **k):
    seen.append(sorted(m for m in ("pandas", "pyarrow", "matplotlib", "torch") if m in sys.modules))
    return real(*a, **k)
import her2scope.tiling.extract as extract
extract.start_scan = spy
df, sc = tile_slide({str(small_slide)!r}, "s", TilingConfig(tile_px=128),
                    qc_path={str(tmp_path / "qc.png")!r}, show_progress=False)
assert seen == [[]], seen
assert len(df) == sc["n_kept"] > 0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

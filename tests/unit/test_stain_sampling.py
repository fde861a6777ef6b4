"""One stain-fitting sampling rule: `predict` fits a new slide on exactly the tiles, at exactly the
size, that `stain fit` (training) uses for the same slide, and gets the same stain matrix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2scope.stain.config import StainConfig
from her2scope.stain.slides import fit_stains, read_fit_tiles, sample_fit_tiles


def _table(n: int) -> pd.DataFrame:
    xs, ys = np.meshgrid(np.arange(n) * 10, np.arange(3) * 10)
    return pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "v": np.arange(3 * n)})


def test_sample_does_not_depend_on_row_order() -> None:
    df = _table(20)
    a = sample_fit_tiles(df, 7)
    b = sample_fit_tiles(df.sample(frac=1.0, random_state=3), 7)
    assert len(a) == 7
    assert a["v"].tolist() == b["v"].tolist()
    assert list(zip(a.y, a.x, strict=True)) == sorted(zip(a.y, a.x, strict=True))  # grid order
    small = sample_fit_tiles(df.iloc[:5], 7)  # fewer tiles than asked: every tile
    assert sorted(small["v"]) == [0, 1, 2, 3, 4]


def test_predict_fits_the_same_tiles_at_the_same_size_as_training(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    from her2scope.config import RunConfig, apply_overrides
    from her2scope.scoring.score import fit_slide_normalizer
    from her2scope.stain import StainNormalizer
    from her2scope.tiling.config import TilingConfig
    from her2scope.tiling.extract import read_tiling_manifest, tile_entries

    entry = read_tiling_manifest(tiny_cohort)[0]
    tiles_dir = tmp_path / "tiles"
    tcfg = TilingConfig(tile_px=128, target_mpp=1.0)
    report = tile_entries([entry], tiles_dir, tcfg)
    assert report.ok and report.n_tiles > 6
    fit_stains(tiles_dir, StainConfig(mode="preserve_dab", fit_tiles=6))
    side = json.loads((tiles_dir / "slides" / f"{entry.slide_id}.json").read_text())
    trained = StainNormalizer.from_dict(side["stain"])
    assert side["stain"]["n_fit_tiles"] == 6

    tiles = pd.read_parquet(tiles_dir / "tiles.parquet")
    cfg = apply_overrides(
        RunConfig(), ["stain.mode=preserve_dab", "stain.fit_tiles=6", "tiling.tile_px=128"]
    )
    shuffled = tiles.sample(frac=1.0, random_state=1).reset_index(drop=True)
    fitted, images = fit_slide_normalizer(cfg, shuffled)
    assert len(images) == 6 and all(im.shape == (128, 128, 3) for im in images)
    rows = sample_fit_tiles(tiles, 6).to_dict("records")
    expected, _, errors = read_fit_tiles(rows)
    assert not errors
    for got, want in zip(images, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert trained.stain_matrix is not None
    np.testing.assert_allclose(fitted.stain_matrix, trained.stain_matrix, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 3])
def test_read_fit_tiles_keeps_read_errors(tmp_path: Path, n: int) -> None:
    from her2scope.slide.write import write_pyramidal_tiff

    img = np.full((256, 256, 3), 200, np.uint8)
    path = write_pyramidal_tiff(tmp_path / "s.tif", img, 0.5)
    rows = [{"slide_path": str(path), "x": 0, "y": 0, "level": 9, "read_px": 64, "tile_px": 64}] * n
    images, n_low, errors = read_fit_tiles(rows)
    assert images == [] and n_low == 0 and len(errors) == n

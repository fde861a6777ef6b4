"""fit_stains / load_normalizers on a tiny tiles dir built here; the stain CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2scope.errors import ConfigError
from her2scope.slide.write import write_pyramidal_tiff
from her2scope.stain import StainConfig, StainNormalizer, fit_stains, load_normalizers

from .test_stain import DAB_B, H_B, tissue_tile

TILE = 64


def _slide_image(rng: np.random.Generator, white_tiles: int = 0) -> np.ndarray:
    """4×4 tiles of 64 px; the first ``white_tiles`` are blank background."""
    img = np.full((4 * TILE, 4 * TILE, 3), 245, np.uint8)
    for k in range(16):
        if k < white_tiles:
            continue
        y, x = divmod(k, 4)
        img[y * TILE : (y + 1) * TILE, x * TILE : (x + 1) * TILE] = tissue_tile(
            rng, 0.2 + 0.05 * k, H_B, DAB_B, px=TILE
        )[0]
    return img


@pytest.fixture()
def tiles_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    out = tmp_path / "tiles"
    (out / "slides").mkdir(parents=True)
    rows = []
    specs = {"S1": 3, "S2": 0, "WHITE": 16, "BROKEN": 0}
    for sid, n_white in specs.items():
        path = tmp_path / f"{sid}.tif"
        if sid == "BROKEN":
            path.write_bytes(b"not a tiff")
        else:
            write_pyramidal_tiff(path, _slide_image(rng, n_white), mpp=0.5, quality=95)
        for k in range(16):
            y, x = divmod(k, 4)
            rows.append(
                dict(
                    slide_id=sid,
                    patient_id=sid,
                    center="A",
                    label="2+",
                    slide_path=str(path),
                    x=x * TILE,
                    y=y * TILE,
                    level=0,
                    read_px=TILE,
                    tile_px=TILE,
                    mpp=0.5,
                    white_frac=0.0,
                    roi_cover=1.0,
                )
            )
        (out / "slides" / f"{sid}.json").write_text(json.dumps({"slide_id": sid, "n_kept": 16}))
    pd.DataFrame(rows).to_parquet(out / "tiles.parquet")
    return out


def test_fit_stains_writes_sidecars_and_reports_failures(tiles_dir: Path) -> None:
    res = fit_stains(tiles_dir, StainConfig(fit_tiles=8))
    assert sorted(res["fitted"]) == ["S1", "S2"]
    assert res["passthrough"] == ["WHITE"]
    assert list(res["failed"]) == ["BROKEN"] and "BROKEN.tif" in res["failed"]["BROKEN"]
    s1 = json.loads((tiles_dir / "slides" / "S1.json").read_text())
    assert s1["n_kept"] == 16  # other keys kept
    stain = s1["stain"]
    assert stain["n_fit_tiles"] == 8 and stain["fallback"] == "slide"
    # S1's 3 blank tiles: how many were sampled is fixed by random_state=0
    sample = (
        pd.read_parquet(tiles_dir / "tiles.parquet")
        .query("slide_id == 'S1'")
        .sample(8, random_state=0)
    )
    n_blank = int(((sample.x // TILE + 4 * (sample.y // TILE)) < 3).sum())
    assert stain["n_low_tissue_tiles"] == n_blank
    m = np.asarray(stain["stain_matrix"])
    # JPEG chroma subsampling mixes this per-pixel-random content, so the match is not exact
    assert m[0] @ H_B > 0.99 and m[1] @ DAB_B > 0.98
    white = json.loads((tiles_dir / "slides" / "WHITE.json").read_text())["stain"]
    assert white["passthrough"] and white["fallback"] == "passthrough"
    assert white["n_low_tissue_tiles"] == 8
    assert "stain" not in json.loads((tiles_dir / "slides" / "BROKEN.json").read_text())


def test_load_normalizers(tiles_dir: Path) -> None:
    with pytest.raises(ConfigError, match="stain fit"):
        load_normalizers(tiles_dir, StainConfig())  # nothing fitted yet
    fit_stains(tiles_dir, StainConfig(fit_tiles=4))
    with pytest.raises(ConfigError, match="1 slide.*BROKEN"):
        load_normalizers(tiles_dir, StainConfig())
    df = pd.read_parquet(tiles_dir / "tiles.parquet")
    df[df.slide_id != "BROKEN"].to_parquet(tiles_dir / "tiles.parquet")
    norms = load_normalizers(tiles_dir, StainConfig())
    assert sorted(norms) == ["S1", "S2", "WHITE"]
    assert isinstance(norms["S1"], StainNormalizer) and not norms["S1"].passthrough
    assert norms["WHITE"].passthrough
    std = load_normalizers(tiles_dir, StainConfig(mode="standard"))
    assert std["S1"].mode == "standard"
    np.testing.assert_allclose(std["S1"].stain_matrix, norms["S1"].stain_matrix)
    assert load_normalizers(tiles_dir, StainConfig(mode="none")) == {}


def test_fit_stains_mode_none_and_missing_table(tmp_path: Path) -> None:
    assert fit_stains(tmp_path, StainConfig(mode="none")) == {
        "fitted": [],
        "passthrough": [],
        "failed": {},
    }
    with pytest.raises(ConfigError, match="tiles.parquet"):
        fit_stains(tmp_path, StainConfig())


def test_cli_fit_and_show(tiles_dir: Path) -> None:
    from typer.testing import CliRunner

    from her2scope.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["stain", "fit", str(tiles_dir), "--fit-tiles", "4"])
    assert r.exit_code == 1, r.output  # BROKEN failed, the others written
    assert "2 slide(s) fitted, 1 passthrough" in r.output
    assert "stain" in json.loads((tiles_dir / "slides" / "S2.json").read_text())
    out = tiles_dir / "s1.png"
    df = pd.read_parquet(tiles_dir / "tiles.parquet")
    df[df.slide_id != "BROKEN"].to_parquet(tiles_dir / "tiles.parquet")
    r = runner.invoke(
        app, ["stain", "show", "S1", "--tiles", str(tiles_dir), "--out", str(out), "--n", "2"]
    )
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = runner.invoke(app, ["stain", "show", "NOPE", "--tiles", str(tiles_dir)])
    assert isinstance(r.exception, ConfigError) and "NOPE" in str(r.exception)

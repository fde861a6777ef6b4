"""The report's pieces without a pipeline run: the raw-vs-normalised figure (stain.show) on a
tiny image slide, and the results / reflex sections from hand-written run outputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from her2scope.config import RunConfig, apply_overrides
from her2scope.layout import OutLayout
from her2scope.stain.show import centre_figure_png, raw_vs_normalised_figure


class Invert:
    """A stand-in normaliser with a transform that is easy to check."""

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        return 255 - rgb


@pytest.fixture()
def tiles(tmp_path: Path) -> tuple[Path, pd.DataFrame, np.ndarray]:
    from her2scope.slide.reader import open_slide
    from her2scope.slide.write import write_pyramidal_tiff

    noise = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    slide = write_pyramidal_tiff(tmp_path / "S1.tif", noise, 0.5, tile_px=16)
    with open_slide(slide) as s:
        rgb = np.asarray(s.read_region((0, 0), 0, (48, 32)))[..., :3]  # what the slide holds
    rows = pd.DataFrame(
        {
            "slide_id": ["S1", "S1", "S1"],
            "center": ["A", "A", "B"],
            "slide_path": [str(slide)] * 3,
            "x": [0, 16, 32],
            "y": [0, 16, 0],
            "level": [0, 0, 0],
            "read_px": [16, 16, 16],
            "tile_px": [16, 16, 16],
        }
    )
    tiles_dir = tmp_path / "tiles"
    tiles_dir.mkdir()
    rows.to_parquet(OutLayout(tmp_path).tiles.table)
    np.testing.assert_array_equal(  # the tile reader agrees with the region read
        np.asarray(open_slide(slide).read_tile((16, 16), 0, 16, 16))[..., :3], rgb[16:32, 16:32]
    )
    return tiles_dir, rows, rgb


def test_figure_rows_are_raw_then_normalised_per_group(
    tiles: tuple[Path, pd.DataFrame, np.ndarray],
) -> None:
    _, rows, rgb = tiles
    groups = [("A", rows.iloc[:2]), ("B", rows.iloc[2:])]
    fig = raw_vs_normalised_figure(groups, {"S1": Invert()}, "standard")  # type: ignore[dict-item]
    axes = np.array(fig.axes).reshape(4, 2)  # (raw, normalised) x 2 groups, 2 tiles wide
    first = rgb[0:16, 0:16]
    np.testing.assert_array_equal(axes[0, 0].images[0].get_array(), first)
    np.testing.assert_array_equal(axes[1, 0].images[0].get_array(), 255 - first)
    np.testing.assert_array_equal(axes[2, 0].images[0].get_array(), rgb[0:16, 32:48])
    assert len(axes[3, 1].images) == 0  # group B has one tile
    assert axes[0, 0].get_title() == "A raw" and axes[3, 0].get_title() == "B standard"


def test_centre_figure_is_a_png_or_none(
    tmp_path: Path, tiles: tuple[Path, pd.DataFrame, np.ndarray]
) -> None:
    tiles_dir, _, _ = tiles
    cfg = apply_overrides(RunConfig(), ["stain.mode=none"]).stain
    png = centre_figure_png(tiles_dir, cfg)
    assert png is not None
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width > 100
    assert centre_figure_png(tmp_path / "nothing", cfg) is None


def _results(run: Path) -> None:
    run.mkdir(parents=True)
    auc = {"value": 0.8125, "ci": [0.5, 0.96875]}
    (run / "results.json").write_text(
        json.dumps(
            {"classes_present": ["1+", "3+"], "levels": {"patient": {"n": 4, "macro_auc": auc}}}
        )
    )
    tiles = [("S1", (0.1, 0.8, 0.1)), ("S2", (0.01, 0.02, 0.97))]
    pd.DataFrame(
        [
            {
                "slide_id": s,
                "patient_id": "P" + s,
                "label": "2+",
                "prob_1+": p[0],
                "prob_2+": p[1],
                "prob_3+": p[2],
            }
            for s, p in tiles
        ]
    ).to_parquet(run / "predictions.parquet")


def test_results_and_reflex_sections_render_what_the_layout_points_at(tmp_path: Path) -> None:
    from her2scope.report.html import render_report

    out = OutLayout(tmp_path)
    _results(out.run("timm:resnet18").root)
    cfg = apply_overrides(RunConfig(), [f"out_dir={tmp_path}", "train.models=[timm:resnet18]"])
    html = render_report(tmp_path, cfg)
    assert "<h3>timm_resnet18</h3>" in html
    assert "<td>macro_auc</td><td>0.812 [0.500, 0.969]</td>" in html
    assert "Classes present: 1+, 3+" in html
    # reflex list: S1 is called 2+ (always flagged), S2 a confident 3+ (not flagged)
    assert "Model <b>timm_resnet18</b>: 1 of 2 test slides flagged for reflex FISH" in html
    assert "<td>S1</td><td>PS1</td><td>2+</td><td>2+</td>" in html
    assert "<td>S2</td>" not in html

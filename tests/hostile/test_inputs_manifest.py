"""Hostile inputs, part B: manifests as Excel and clumsy hands write them, ROIs that give no ROI,
ROI exclusions, grayscale images (issue 14, items 8, 10, 12, 13).

Every case asserts the exit status, that the message names the problem, that no traceback or raw
Python reason is printed, and that no input changed (hashes before and after). SYNTHETIC slides.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.hostile.harness import (
    assert_clean_error,
    assert_no_traceback,
    cli,
    snapshot,
)

HEADER = "slide_id,patient_id,center,label,slide_path,roi_path"


@pytest.fixture()
def manifest(cohort: Path) -> Iterator[Path]:
    """``cohort/m.csv``, removed after the test (each test writes its own)."""
    path = cohort / "m.csv"
    yield path
    path.unlink(missing_ok=True)


def _tile(manifest: Path, out: Path, *extra: str) -> object:
    return cli("tile", manifest, "--out", out, "--tile-px", "256", "--target-mpp", "1.0", *extra)


def test_trailing_comma_on_every_row_is_read_unshifted(
    cohort: Path, manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest.write_text(
        HEADER + ",\n"
        "P01_S1,P01,A,3+,slides/P01_S1.tif,rois/P01_S1.geojson,\n"
        "P03_S1,P03,B,1+,slides/P03_S1.tif,rois/P03_S1.geojson,\n"
    )
    snap = snapshot(cohort)
    r = _tile(manifest, tmp_path / "out")
    assert r.exit_code == 0, r
    assert "empty trailing field(s) ignored" in caplog.text  # a warning on stderr
    assert_no_traceback(r)
    import pandas as pd

    tiles = pd.read_parquet(tmp_path / "out" / "tiles.parquet")
    assert sorted(tiles.slide_id.unique()) == ["P01_S1", "P03_S1"]
    assert sorted(tiles.label.unique()) == ["1+", "3+"]  # columns not shifted
    snap.assert_unchanged()


def test_extra_fields_are_an_error_naming_the_row(
    cohort: Path, manifest: Path, tmp_path: Path
) -> None:
    manifest.write_text(
        HEADER + "\n"
        "P01_S1,P01,A,3+,slides/P01_S1.tif,rois/P01_S1.geojson\n"
        "P03_S1,P03,B,1+,slides/P03_S1.tif,rois/P03_S1.geojson,x,y\n"
    )
    snap = snapshot(cohort)
    r = _tile(manifest, tmp_path / "out")
    assert_clean_error(r, "row 3", "8 fields but the header has 6", "'x', 'y'")
    assert not (tmp_path / "out").exists()  # refused before any work
    snap.assert_unchanged()


def test_empty_roi_path_tiles_tissue_and_says_which_rows(
    cohort: Path, manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest.write_text(
        HEADER + "\n"
        "P01_S1,P01,A,3+,slides/P01_S1.tif,rois/P01_S1.geojson\n"
        "P03_S1,P03,B,1+,slides/P03_S1.tif,\n"
    )
    snap = snapshot(cohort)
    r = _tile(manifest, tmp_path / "out")
    assert r.exit_code == 0, r
    assert "row(s) 3 ('P03_S1') have an empty roi_path" in caplog.text  # a warning on stderr
    assert "whole detected tissue" in caplog.text
    assert "1 warning(s), see sidecar" in r.output  # and in the summary table
    assert_no_traceback(r)
    side = json.loads((tmp_path / "out" / "slides" / "P03_S1.json").read_text())
    assert side["roi_rule"] == "tissue_mask"
    assert side["warnings"][0].startswith("the manifest gives no roi_path")
    snap.assert_unchanged()


@pytest.mark.parametrize(
    ("slide_id", "needles"),
    [
        ('"P01\nS1"', ("row 2", "'P01\\nS1'", "control character")),
        ('"P01\tS1"', ("row 2", "'P01\\tS1'", "control character")),
        ("../P01", ("row 2", "slide_id '../P01' contains /", "file name")),
        ("P01\\S1", ("row 2", "contains \\", "file name")),
        (
            ".hidden",
            (
                "row 2",
                "starts with '.'",
            ),
        ),
    ],
)
def test_slide_ids_that_cannot_name_a_file_are_refused(
    cohort: Path, manifest: Path, tmp_path: Path, slide_id: str, needles: tuple[str, ...]
) -> None:
    manifest.write_text(
        HEADER + "\n" + f"{slide_id},P01,A,3+,slides/P01_S1.tif,rois/P01_S1.geojson\n"
    )
    snap = snapshot(cohort)
    r = _tile(manifest, tmp_path / "out")
    assert_clean_error(r, *needles)
    assert not (tmp_path / "out").exists()
    snap.assert_unchanged()


def test_absolute_paths_follow_the_same_rule_in_tile_and_train(
    cohort: Path, manifest: Path, tmp_path: Path
) -> None:
    slide = (cohort / "slides" / "P01_S1.tif").resolve()
    manifest.write_text(HEADER + "\n" + f"P01_S1,P01,A,3+,{slide},rois/P01_S1.geojson\n")
    snap = snapshot(cohort)
    r = _tile(manifest, tmp_path / "out")
    assert_clean_error(r, "row 2", f"slide_path '{slide}' is absolute", "allow_absolute_paths")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'run'}\ncohort:\n  manifest: {manifest}\n")
    r2 = cli("train", "--config", cfg, "cohort.test_centers=[B]")
    assert_clean_error(r2, "row 2", f"slide_path '{slide}' is absolute", "allow_absolute_paths")
    r3 = _tile(manifest, tmp_path / "out3", "--allow-absolute-paths")
    assert r3.exit_code == 0, r3
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
    snap.assert_unchanged()


def test_an_roi_outside_the_slide_fails_that_slide(
    cohort: Path, manifest: Path, tmp_path: Path
) -> None:
    far = cohort / "far.geojson"
    far.write_text(
        json.dumps(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]],
                },
                "properties": {"classification": {"name": "Tumor"}},
            }
        )
    )
    manifest.write_text(
        HEADER + "\n"
        "P01_S1,P01,A,3+,slides/P01_S1.tif,far.geojson\n"
        "P03_S1,P03,B,1+,slides/P03_S1.tif,rois/P03_S1.geojson\n"
    )
    snap = snapshot(cohort)
    try:
        r = _tile(manifest, tmp_path / "out")
        assert_clean_error(r, "P01_S1", "FAILED", "every ROI lies", code=1)
        report = json.loads((tmp_path / "out" / "tiling_report.json").read_text())
        assert [f["slide_id"] for f in report["failures"]] == ["P01_S1"]
        assert "every ROI lies outside the slide (1280×1280 px" in report["failures"][0]["reason"]
        assert report["n_tiles"] > 0  # the other slide went on
        snap.assert_unchanged()
    finally:
        far.unlink()


def test_an_ignore_region_is_cut_out_of_the_tumour_roi(cohort: Path, tmp_path: Path) -> None:
    """QuPath: a Tumor ROI with an Ignore* hole; the kept tiles avoid the hole."""

    def feature(coords: list[list[int]], cls: str) -> dict:
        ring = [*coords, coords[0]]
        return {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"classification": {"name": cls}},
        }

    tumour = feature([[0, 0], [1280, 0], [1280, 1280], [0, 1280]], "Tumor")
    ignore = feature([[0, 0], [1280, 0], [1280, 640], [0, 640]], "Ignore*")
    rois = tmp_path / "rois"
    rois.mkdir()
    (rois / "P01_S1.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [tumour, ignore]})
    )
    slide = cohort / "slides" / "P01_S1.tif"
    snap = snapshot(cohort, rois)
    r = cli(
        "tile", slide, "--out", tmp_path / "out", "--rois", rois, "--tile-px", "128",
        "--target-mpp", "1.0", "--max-white", "1.0", "--roi-classes", "Tumor",
    )  # fmt: skip
    assert r.exit_code == 0, r
    assert_no_traceback(r)
    import pandas as pd

    tiles = pd.read_parquet(tmp_path / "out" / "tiles.parquet")
    # 0.5 µm/px slide, 1 µm/px tiles: a tile covers 256 level-0 px; the lower half has 2.5 rows
    assert len(tiles) > 0 and int(tiles.y.min()) >= 640
    assert sorted(set(tiles.y.tolist())) == [768, 1024]
    side = json.loads((tmp_path / "out" / "slides" / "P01_S1.json").read_text())
    assert side["roi_n_excluded"] == 1
    assert side["roi_area_px"] == pytest.approx(1280 * 640)
    snap.assert_unchanged()


def test_grayscale_png_and_tiff_are_refused_alike(tmp_path: Path) -> None:
    import cv2
    import tifffile

    grey = np.full((512, 512), 230, np.uint8)
    grey[100:400, 100:400] = 110
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    tifffile.imwrite(tmp_path / "g.tif", grey, photometric="minisblack", tile=(256, 256))
    snap = snapshot(tmp_path)
    reasons = []
    for name in ("g.png", "g.tif"):
        out = tmp_path / f"out_{name}"
        r = cli("tile", tmp_path / name, "--out", out, "--mpp", "0.5", "--tile-px", "128")
        assert_clean_error(r, "FAILED", "grayscale", code=1)
        report = json.loads((out / "tiling_report.json").read_text())
        reasons.append(report["failures"][0]["reason"].split("': ", 1)[1])
        assert reasons[-1].startswith("a grayscale (single-channel) image; HER2 IHC is scored")
    assert reasons[0] == reasons[1]  # one rule, one message
    snap.assert_unchanged(allow_new=True)  # only the two out_* folders appeared
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "g.png",
        "g.tif",
        "out_g.png",
        "out_g.tif",
    ]


def test_no_python_311_only_datetime_api_in_the_package() -> None:
    """pyproject says Python >= 3.10: `datetime.UTC` (3.11+) crashed `predict` on 3.10."""
    import ast

    import her2scope

    root = Path(her2scope.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "UTC":
                found.append(f"{path.relative_to(root)}:{node.lineno}")
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "datetime"
                and any(a.name == "UTC" for a in node.names)
            ):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == [], f"datetime.UTC needs Python 3.11; use datetime.timezone.utc: {found}"

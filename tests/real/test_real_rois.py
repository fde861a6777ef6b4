"""Real ASAP annotation files from ../shared/data parse into the expected shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from her2scope.errors import RoiError
from her2scope.slide.rois import read_rois

pytestmark = pytest.mark.real

TUTORIAL = "markowetzlab-pathml-tutorial"


def test_asap1_rectangle_polygon_spline_and_ignored_shapes(shared_data: Path) -> None:
    rs = read_rois(shared_data / "dplabtools/asap1.xml")
    assert rs.n_shapes == 3  # Rectangle, Polygon, Spline
    notes = " | ".join(rs.warnings)
    assert "1 Dot annotation(s) ignored" in notes and "1 Measurement annotation(s) ignored" in notes
    rect = (8336.99023 - 5954.99219) * (26360.7676 - 24058.1719)
    parts = sorted(rs.geometry.geoms, key=lambda g: g.bounds[1])
    assert len(parts) == 3
    assert any(abs(p.area - rect) < 1e-3 for p in parts)
    assert rs.geometry.bounds[0] == pytest.approx(5954.99219, abs=1e-3)


@pytest.mark.parametrize(
    ("name", "n_all", "classes", "n_tissue"),
    [
        (
            "TCGA-G9-6378-01A-01-BS1.bc59e095-f3ab-4a6e-8cef-ea7fc76abec8.xml",
            6,
            ["tissue", "negative"],
            1,
        ),
        (
            "BEST2 NEW 0189 P53 - MASSIVE ARTIFACT MAYBE RESCAN - 2020-12-29 21.11.36.xml",
            15,
            ["tissue", "negative"],
            1,
        ),
    ],
)
def test_tutorial_tissue_polygons_and_groups(
    shared_data: Path, name: str, n_all: int, classes: list[str], n_tissue: int
) -> None:
    rs = read_rois(shared_data / TUTORIAL / name)
    # the "negative" group (pathml's convention) is an exclusion: cut out, never an ROI itself
    assert rs.n_shapes == n_tissue and rs.n_excluded == n_all - n_tissue
    assert rs.classes == classes
    tissue = read_rois(shared_data / TUTORIAL / name, classes=["tissue"])
    assert tissue.n_shapes == n_tissue and tissue.geometry.is_valid
    assert tissue.geometry.equals(rs.geometry)


@pytest.mark.parametrize(
    "name",
    [
        "TCGA-G9-6378-01A-01-BS1.bc59e095-f3ab-4a6e-8cef-ea7fc76abec8.xml",
        "BEST2 NEW 0189 P53 - MASSIVE ARTIFACT MAYBE RESCAN - 2020-12-29 21.11.36.xml",
    ],
)
def test_tutorial_negative_regions_are_subtracted_from_the_tissue(
    shared_data: Path, name: str
) -> None:
    import shapely

    from her2scope.slide.rois import _parse_xml

    path = shared_data / TUTORIAL / name
    shapes, _ = _parse_xml(path, path.read_bytes())
    tissue = shapely.union_all(
        [shapely.make_valid(s.geom) for s in shapes if "tissue" in s.classes]
    )
    negative = shapely.union_all(
        [shapely.make_valid(s.geom) for s in shapes if "negative" in s.classes]
    )
    cut = tissue.intersection(negative).area
    assert cut > 0.001 * tissue.area  # the file really has negative regions inside the tissue
    rs = read_rois(path)
    assert rs.geometry.area == pytest.approx(tissue.area - cut, rel=1e-6)


def test_camelyon_splines_are_repaired_and_kept(shared_data: Path) -> None:
    rs = read_rois(shared_data / TUTORIAL / "tumor_009.xml", classes=["metastasis"])
    assert rs.n_shapes == 6 and rs.classes == ["metastasis"]
    assert rs.geometry.is_valid and rs.geometry.area > 0
    assert any("was invalid (Self-intersection" in w and "repaired" in w for w in rs.warnings)


def test_sedeen_xml_is_refused_with_a_clear_message(shared_data: Path) -> None:
    with pytest.raises(RoiError, match="unknown XML annotation format"):
        read_rois(shared_data / "dplabtools/sedeen1.xml")

"""ROI import: QuPath GeoJSON, ASAP XML, Aperio ImageScope XML, repairs and unsafe XML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely
from shapely.geometry import Polygon

from her2scope.errors import RoiError
from her2scope.slide.rois import (
    _catmull_rom_closed,
    clip_to_slide,
    find_roi_file,
    load_rois,
    read_rois,
)


def _square(x: float, y: float, s: float) -> list[list[float]]:
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]


def _feature(geometry: dict, cls: str | None = None, name: str | None = None) -> dict:
    props: dict = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    if name is not None:
        props["name"] = name
    return {"type": "Feature", "id": "x", "geometry": geometry, "properties": props}


def _write(tmp_path: Path, name: str, obj: object) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj, encoding="utf-8")
    return p


def test_qupath_feature_collection_with_hole_multipolygon_and_class_filter(tmp_path: Path) -> None:
    tumor = _feature(
        {"type": "Polygon", "coordinates": [_square(0, 0, 100), _square(20, 20, 10)]}, "Tumor"
    )
    multi = _feature(
        {
            "type": "MultiPolygon",
            "coordinates": [[_square(200, 0, 50)], [_square(300, 0, 20), _square(305, 5, 5)]],
        },
        "Tumor",
    )
    stroma = _feature({"type": "Polygon", "coordinates": [_square(500, 500, 40)]}, "Stroma")
    point = _feature({"type": "Point", "coordinates": [5, 5]}, "Tumor")
    path = _write(
        tmp_path,
        "a.geojson",
        {"type": "FeatureCollection", "features": [tumor, multi, stroma, point]},
    )

    everything = read_rois(path)
    assert everything.classes == ["Tumor", "Stroma"]
    assert everything.n_shapes == 4  # polygon, two polygons of the MultiPolygon, stroma
    assert everything.geometry.area == pytest.approx(100**2 - 10**2 + 50**2 + 20**2 - 5**2 + 40**2)
    assert any("1 Point shape(s) ignored" in w for w in everything.warnings)

    tumour_only = read_rois(path, classes=["tumor"])  # class names match case-insensitively
    assert tumour_only.geometry.area == pytest.approx(100**2 - 10**2 + 50**2 + 20**2 - 5**2)
    assert not tumour_only.geometry.contains(shapely.Point(25, 25))  # inside the hole
    assert tumour_only.geometry.contains(shapely.Point(5, 5))


@pytest.mark.parametrize("layout", ["list", "feature", "geometry"])
def test_qupath_bare_list_single_feature_and_bare_geometry(tmp_path: Path, layout: str) -> None:
    geom = {"type": "Polygon", "coordinates": [_square(10, 20, 30)]}
    obj = {
        "list": [_feature(geom, "Tumor")],
        "feature": _feature(geom, "Tumor"),
        "geometry": geom,
    }[layout]
    roi = load_rois(_write(tmp_path, "r.json", obj))
    assert roi is not None
    assert roi.bounds == (10.0, 20.0, 40.0, 50.0)
    assert roi.area == pytest.approx(900)


def test_invalid_polygons_are_repaired_or_dropped_with_a_warning(tmp_path: Path) -> None:
    bowtie = _feature(
        {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]},
        name="bow",
    )
    unclosed = _feature(
        {"type": "Polygon", "coordinates": [[[100, 100], [110, 100], [110, 110], [100, 110]]]}
    )
    line = _feature({"type": "Polygon", "coordinates": [[[0, 50], [5, 50], [0, 50]]]}, name="thin")
    path = _write(tmp_path, "bad.geojson", [bowtie, unclosed, line])
    rs = read_rois(path)
    assert rs.geometry.area == pytest.approx(50 + 100)  # two triangles of the bowtie + square
    assert any(
        "('bow') was invalid (Self-intersection" in w and "repaired" in w for w in rs.warnings
    )
    assert any("('thin') has fewer than 3 distinct points; dropped" in w for w in rs.warnings)


def test_no_roi_of_the_class_gives_none_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(
        tmp_path,
        "s.geojson",
        [_feature({"type": "Polygon", "coordinates": [_square(0, 0, 9)]}, "Stroma")],
    )
    assert load_rois(path, classes=["Tumor"]) is None
    assert "no ROI of class Tumor (classes in the file: Stroma)" in caplog.text
    empty = _write(tmp_path, "e.geojson", {"type": "FeatureCollection", "features": []})
    rs = read_rois(empty)
    assert rs.geometry is None and "no usable ROI polygon" in rs.warnings[-1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": "Topology"}', "not GeoJSON as QuPath writes it"),
        ("hello", "unknown ROI format"),
        ("<svg></svg>", "unknown XML annotation format"),
        ("<ASAP_Annotations><Annotations>", "not well-formed XML"),
    ],
)
def test_unreadable_roi_files_raise_roi_error(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path, "x.roi", content)
    with pytest.raises(RoiError, match=message) as info:
        read_rois(path)
    assert "x.roi" in str(info.value)
    with pytest.raises(RoiError, match="file not found"):
        read_rois(tmp_path / "absent.geojson")


ASAP = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="dot" Type="Dot" PartOfGroup="None" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="5" Y="5" /></Coordinates>
    </Annotation>
    <Annotation Name="rect" Type="Rectangle" PartOfGroup="core" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="100" Y="0" />
        <Coordinate Order="2" X="100" Y="50" /><Coordinate Order="3" X="0" Y="50" />
      </Coordinates>
    </Annotation>
    <Annotation Name="poly" Type="Polygon" PartOfGroup="Stroma" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="300" Y="10" /><Coordinate Order="0" X="200" Y="0" />
        <Coordinate Order="1" X="300" Y="0" />
      </Coordinates>
    </Annotation>
    <Annotation Name="spl" Type="Spline" PartOfGroup="Tumor" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="500" Y="400" /><Coordinate Order="1" X="600" Y="500" />
        <Coordinate Order="2" X="500" Y="600" /><Coordinate Order="3" X="400" Y="500" />
      </Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="Tumor" PartOfGroup="None" Color="#64FE2E"><Attributes /></Group>
    <Group Name="core" PartOfGroup="Tumor" Color="#64FE2E"><Attributes /></Group>
    <Group Name="Stroma" PartOfGroup="None" Color="#64FE2E"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def test_asap_polygon_rectangle_spline_dot_and_nested_groups(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.xml", ASAP)
    rs = read_rois(path)
    assert rs.n_shapes == 3
    assert any("1 Dot annotation(s) ignored" in w for w in rs.warnings)
    assert rs.classes == ["core", "Tumor", "Stroma"]
    tumour = read_rois(path, classes=["Tumor"])  # "core" is a sub-group of "Tumor"
    assert tumour.n_shapes == 2
    parts = sorted(tumour.geometry.geoms, key=lambda g: g.bounds[0])
    assert parts[0].area == pytest.approx(100 * 50)  # the rectangle, exactly
    spline = parts[1]
    # a Catmull–Rom spline passes through its control points and bulges outside their diamond
    for pt in [(500, 400), (600, 500), (500, 600), (400, 500)]:
        assert spline.exterior.distance(shapely.Point(pt)) < 1e-6
    assert spline.area > Polygon([(500, 400), (600, 500), (500, 600), (400, 500)]).area
    # the polygon's vertices were sorted by Order
    stroma = read_rois(path, classes=["Stroma"]).geometry
    assert stroma.area == pytest.approx(0.5 * 100 * 10)


def test_catmull_rom_closed_interpolates() -> None:
    pts = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]
    out = _catmull_rom_closed(pts, steps=4)
    assert len(out) == 16
    assert out[0::4] == pts


APERIO = """<?xml version="1.0" encoding="UTF-8"?>
<Annotations MicronsPerPixel="0.252100">
  <Annotation Id="1" Name="Tumor" ReadOnly="0" LineColor="65280" Visible="1">
    <Attributes><Attribute Name="Description" Id="0" Value="invasive"/></Attributes>
    <Regions>
      <RegionAttributeHeaders/>
      <Region Id="1" Type="0" NegativeROA="0" Zoom="1">
        <Vertices><Vertex X="0" Y="0" Z="0"/><Vertex X="200" Y="0" Z="0"/>
          <Vertex X="200" Y="200" Z="0"/><Vertex X="0" Y="200" Z="0"/></Vertices>
      </Region>
      <Region Id="2" Type="1" NegativeROA="1" Zoom="1">
        <Vertices><Vertex X="50" Y="50" Z="0"/><Vertex X="100" Y="50" Z="0"/>
          <Vertex X="100" Y="100" Z="0"/><Vertex X="50" Y="100" Z="0"/></Vertices>
      </Region>
      <Region Id="3" Type="2" NegativeROA="0" Zoom="1">
        <Vertices><Vertex X="1000" Y="1000" Z="0"/><Vertex X="1100" Y="1050" Z="0"/></Vertices>
      </Region>
      <Region Id="4" Type="4" NegativeROA="0" Zoom="1">
        <Vertices><Vertex X="0" Y="0" Z="0"/><Vertex X="9" Y="9" Z="0"/></Vertices>
      </Region>
    </Regions>
  </Annotation>
  <Annotation Id="2" Name="Normal" LineColor="255">
    <Regions><Region Id="1" Type="0"><Vertices><Vertex X="500" Y="0"/><Vertex X="510" Y="0"/>
      <Vertex X="510" Y="10"/></Vertices></Region></Regions>
  </Annotation>
</Annotations>
"""


def test_aperio_negative_regions_are_holes_and_ellipses_are_polygons(tmp_path: Path) -> None:
    path = _write(tmp_path, "ap.xml", APERIO)
    tumour = read_rois(path, classes=["Tumor"])
    assert tumour.classes == ["Tumor", "Description", "invasive", "Normal"]
    import math

    ellipse = math.pi * 50 * 25
    assert tumour.geometry.area == pytest.approx(200 * 200 - 50 * 50 + ellipse, rel=2e-3)
    assert not tumour.geometry.contains(shapely.Point(75, 75))  # in the negative region
    assert any("type 4" in w for w in tumour.warnings)
    assert read_rois(path, classes=["invasive"]).geometry.equals(tumour.geometry)
    everything = read_rois(path)
    assert everything.geometry.area == pytest.approx(tumour.geometry.area + 50, rel=1e-9)


@pytest.mark.parametrize(
    "payload",
    [
        # entity expansion ("billion laughs")
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
        "<ASAP_Annotations>&lol2;</ASAP_Annotations>",
        # external entity (XXE)
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        "<Annotations>&xxe;</Annotations>",
    ],
)
def test_unsafe_xml_is_rejected(tmp_path: Path, payload: str) -> None:
    path = _write(tmp_path, "evil.xml", payload)
    with pytest.raises(RoiError, match="unsafe XML rejected"):
        read_rois(path)


def test_clip_to_slide_warns_for_partly_and_wholly_outside_rois() -> None:
    roi = shapely.box(-50, 0, 50, 100)
    clipped, notes = clip_to_slide(roi, 1000, 1000)
    assert clipped.area == pytest.approx(5000)
    assert notes == ["ROI: 50.0% of the ROI area lies outside the slide; clipped"]
    same, notes = clip_to_slide(shapely.box(10, 10, 20, 20), 1000, 1000)
    assert same.area == 100 and notes == []
    none, notes = clip_to_slide(shapely.box(2000, 0, 2100, 100), 1000, 1000)
    assert none is None and "every ROI lies outside the slide" in notes[0]
    assert clip_to_slide(None, 10, 10) == (None, [])


def test_find_roi_file_prefers_geojson(tmp_path: Path) -> None:
    (tmp_path / "S1.xml").write_text("<x/>")
    assert find_roi_file(tmp_path, "S1") == tmp_path / "S1.xml"
    (tmp_path / "S1.geojson").write_text("[]")
    assert find_roi_file(tmp_path, "S1") == tmp_path / "S1.geojson"
    assert find_roi_file(tmp_path, "S2") is None


# ----------------------------------------------------------------------------------------------
# Exclusions: QuPath Ignore*, ASAP negative groups, Aperio NegativeROA
# ----------------------------------------------------------------------------------------------


def test_qupath_ignore_regions_are_cut_out_of_every_roi_they_overlap(tmp_path: Path) -> None:
    """Two Tumor squares side by side; one Ignore* rectangle straddles both; a Stroma ROI."""
    feats = [
        _feature({"type": "Polygon", "coordinates": [_square(0, 0, 100)]}, "Tumor"),
        _feature({"type": "Polygon", "coordinates": [_square(100, 0, 100)]}, "Tumor"),
        _feature({"type": "Polygon", "coordinates": [_square(300, 0, 50)]}, "Stroma"),
        _feature(
            {"type": "Polygon", "coordinates": [[[80, 20], [120, 20], [120, 60], [80, 60]]]},
            "Ignore*",
        ),
    ]
    path = _write(tmp_path, "ign.geojson", {"type": "FeatureCollection", "features": feats})
    tumour = read_rois(path, classes=["Tumor"])  # the filter never drops an exclusion
    assert tumour.n_shapes == 2 and tumour.n_excluded == 1
    assert tumour.geometry.area == pytest.approx(2 * 100 * 100 - 40 * 40)
    for pt in [(90, 40), (110, 40)]:  # inside the exclusion, on either ROI
        assert not tumour.geometry.contains(shapely.Point(pt))
    assert tumour.geometry.contains(shapely.Point(50, 80))
    everything = read_rois(path)  # Ignore* is never an ROI itself
    assert everything.geometry.area == pytest.approx(2 * 100 * 100 - 40 * 40 + 50 * 50)
    assert "Ignore*" in everything.classes


def test_an_exclusion_covering_every_roi_leaves_no_roi_and_says_why(tmp_path: Path) -> None:
    feats = [
        _feature({"type": "Polygon", "coordinates": [_square(10, 10, 20)]}, "Tumor"),
        _feature({"type": "Polygon", "coordinates": [_square(0, 0, 100)]}, "Ignore"),
    ]
    path = _write(tmp_path, "all.geojson", feats)
    rs = read_rois(path)
    assert rs.geometry is None
    assert rs.empty_reason == "the 1 exclusion region(s) (Ignore*/negative) cover every ROI"
    only = _write(tmp_path, "only.geojson", feats[1:])
    assert read_rois(only).empty_reason == (
        "the file holds only exclusion regions (1 Ignore*/negative), no ROI to tile"
    )


ASAP_NEGATIVE = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
  <Annotation Name="t" Type="Polygon" PartOfGroup="tissue"><Coordinates>
    <Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="300" Y="0"/>
    <Coordinate Order="2" X="300" Y="100"/><Coordinate Order="3" X="0" Y="100"/>
  </Coordinates></Annotation>
  <Annotation Name="n1" Type="Rectangle" PartOfGroup="negative"><Coordinates>
    <Coordinate Order="0" X="10" Y="10"/><Coordinate Order="1" X="30" Y="10"/>
    <Coordinate Order="2" X="30" Y="30"/><Coordinate Order="3" X="10" Y="30"/>
  </Coordinates></Annotation>
  <Annotation Name="c" Type="Rectangle" PartOfGroup="_2"><Coordinates>
    <Coordinate Order="0" X="200" Y="0"/><Coordinate Order="1" X="400" Y="0"/>
    <Coordinate Order="2" X="400" Y="50"/><Coordinate Order="3" X="200" Y="50"/>
  </Coordinates></Annotation>
</Annotations><AnnotationGroups>
  <Group Name="tissue" PartOfGroup="None"/><Group Name="negative" PartOfGroup="None"/>
  <Group Name="_2" PartOfGroup="None"/>
</AnnotationGroups></ASAP_Annotations>
"""


def test_asap_negative_and_camelyon_exclusion_groups_are_subtracted(tmp_path: Path) -> None:
    path = _write(tmp_path, "neg.xml", ASAP_NEGATIVE)
    rs = read_rois(path)
    assert rs.n_shapes == 1 and rs.n_excluded == 2
    assert rs.geometry.area == pytest.approx(300 * 100 - 20 * 20 - 100 * 50)
    assert not rs.geometry.contains(shapely.Point(20, 20))
    assert not rs.geometry.contains(shapely.Point(250, 25))
    assert read_rois(path, classes=["tissue"]).geometry.equals(rs.geometry)


def test_aperio_negative_regions_cut_only_their_own_annotation(tmp_path: Path) -> None:
    xml = """<Annotations>
  <Annotation Id="1" Name="Tumor"><Regions>
    <Region Id="1" Type="1" NegativeROA="0"><Vertices><Vertex X="0" Y="0"/><Vertex X="100" Y="0"/>
      <Vertex X="100" Y="100"/><Vertex X="0" Y="100"/></Vertices></Region>
    <Region Id="2" Type="1" NegativeROA="0"><Vertices><Vertex X="100" Y="0"/>
      <Vertex X="200" Y="0"/><Vertex X="200" Y="100"/><Vertex X="100" Y="100"/></Vertices></Region>
    <Region Id="3" Type="1" NegativeROA="1"><Vertices><Vertex X="80" Y="20"/>
      <Vertex X="120" Y="20"/><Vertex X="120" Y="60"/><Vertex X="80" Y="60"/></Vertices></Region>
  </Regions></Annotation>
  <Annotation Id="2" Name="Stroma"><Regions>
    <Region Id="1" Type="1" NegativeROA="0"><Vertices><Vertex X="80" Y="200"/>
      <Vertex X="120" Y="200"/><Vertex X="120" Y="260"/><Vertex X="80" Y="260"/></Vertices></Region>
  </Regions></Annotation>
</Annotations>"""
    rs = read_rois(_write(tmp_path, "neg.xml", xml))
    assert rs.n_shapes == 3 and rs.n_excluded == 1
    # the hole straddles both Tumor regions; the Stroma layer keeps its full area
    assert rs.geometry.area == pytest.approx(200 * 100 - 40 * 40 + 40 * 60)
    assert not rs.geometry.contains(shapely.Point(90, 40))
    assert not rs.geometry.contains(shapely.Point(110, 40))

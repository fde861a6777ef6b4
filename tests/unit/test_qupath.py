"""QuPath GeoJSON export: FeatureCollection of detections with classification and measurements."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from her2scope.report.qupath import CLASS_COLOURS, tiles_to_geojson, write_qupath_geojson


def test_geojson_schema_and_values(tmp_path: Path) -> None:
    classes = ("1+", "2+", "3+")
    xy = np.array([[0, 0], [512, 0], [0, 1024]])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])
    path = write_qupath_geojson(tmp_path / "s.geojson", xy, 512, probs, classes)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    assert len(doc["features"]) == 3
    ids = set()
    for f, (x, y), p in zip(doc["features"], xy, probs, strict=True):
        assert f["type"] == "Feature"
        ids.add(f["id"])
        geom = f["geometry"]
        assert geom["type"] == "Polygon"
        ring = geom["coordinates"][0]
        assert ring[0] == ring[-1]  # closed ring
        assert ring == [[x, y], [x + 512, y], [x + 512, y + 512], [x, y + 512], [x, y]]
        props = f["properties"]
        assert props["objectType"] == "detection"
        k = int(np.argmax(p))
        assert props["classification"] == {
            "name": classes[k],
            "color": list(CLASS_COLOURS[classes[k]]),
        }
        m = props["measurements"]
        assert set(m) == {"prob_1+", "prob_2+", "prob_3+", "expected_score"}
        np.testing.assert_allclose([m["prob_1+"], m["prob_2+"], m["prob_3+"]], p, atol=1e-6)
        assert m["expected_score"] == pytest.approx(p @ [0, 1, 2])
        assert all(0 <= c <= 255 for c in props["classification"]["color"])
    assert len(ids) == 3


def test_per_tile_sizes_and_tile_object_type() -> None:
    doc = tiles_to_geojson(
        np.array([[10, 20], [30, 40]]), np.array([100, 200]), np.eye(2), ["a", "b"], "tile"
    )
    assert [f["properties"]["objectType"] for f in doc["features"]] == ["tile", "tile"]
    assert doc["features"][1]["geometry"]["coordinates"][0][2] == [230.0, 240.0]
    # classes outside the HER2 palette get colormap colours, distinct per class
    cols = [tuple(f["properties"]["classification"]["color"]) for f in doc["features"]]
    assert cols[0] != cols[1]


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        tiles_to_geojson(np.zeros((2, 2)), 64, np.zeros((2, 2)), ["1+", "2+", "3+"])

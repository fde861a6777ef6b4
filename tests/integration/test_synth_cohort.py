"""The synthetic cohort as a user (and the other stages) see it: files, formats, physics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2scope.synth import params as P


@pytest.fixture(scope="module")
def manifest_df(tiny_cohort: Path) -> pd.DataFrame:
    return pd.read_csv(tiny_cohort, dtype=str)


def test_manifest_columns_labels_centres_and_patients(manifest_df: pd.DataFrame) -> None:
    assert list(manifest_df.columns) == [
        "slide_id",
        "patient_id",
        "center",
        "label",
        "slide_path",
        "roi_path",
    ]
    patients = manifest_df.drop_duplicates("patient_id")
    assert len(patients) == 6
    assert patients["label"].value_counts().to_dict() == {"1+": 2, "2+": 2, "3+": 2}
    assert patients["center"].value_counts().to_dict() == {"A": 3, "B": 3}
    # one label and one centre per patient; exactly one patient has two slides
    assert manifest_df.groupby("patient_id")["label"].nunique().max() == 1
    assert manifest_df.groupby("patient_id")["center"].nunique().max() == 1
    assert sorted(manifest_df["patient_id"].value_counts().tolist()) == [1, 1, 1, 1, 1, 2]
    assert manifest_df["slide_id"].is_unique


def test_paths_are_relative_and_exist(tiny_cohort: Path, manifest_df: pd.DataFrame) -> None:
    for col in ("slide_path", "roi_path"):
        for rel in manifest_df[col]:
            assert not Path(rel).is_absolute()
            assert (tiny_cohort.parent / rel).is_file(), rel


def test_every_file_says_synthetic(tiny_cohort: Path, manifest_df: pd.DataFrame) -> None:
    import tifffile

    meta = json.loads((tiny_cohort.parent / "cohort.json").read_text())
    assert meta["synthetic"] is True
    assert "SYNTHETIC" in meta["note"]
    assert meta["parameters"]["seed"] == 0
    assert [s["slide_id"] for s in meta["slides"]] == manifest_df["slide_id"].tolist()
    for rel in manifest_df["slide_path"]:
        with tifffile.TiffFile(tiny_cohort.parent / rel) as tf:
            assert "SYNTHETIC" in tf.pages[0].description


def test_openslide_opens_slides_with_declared_geometry(
    tiny_cohort: Path, manifest_df: pd.DataFrame
) -> None:
    import openslide

    for rel in manifest_df["slide_path"]:
        with openslide.OpenSlide(str(tiny_cohort.parent / rel)) as s:
            assert s.level_dimensions == ((1280, 1280), (640, 640), (320, 320))
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-6)
            assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5, rel=1e-6)
            assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))


def test_rois_are_qupath_tumor_polygons_inside_the_slide_over_tumour(
    tiny_cohort: Path, manifest_df: pd.DataFrame
) -> None:
    import cv2
    from shapely.geometry import box, shape

    for sid, rel in zip(manifest_df["slide_id"], manifest_df["roi_path"], strict=True):
        fc = json.loads((tiny_cohort.parent / rel).read_text())
        assert fc["type"] == "FeatureCollection"
        assert len(fc["features"]) == 1
        feat = fc["features"][0]
        assert feat["properties"]["classification"]["name"] == "Tumor"
        poly = shape(feat["geometry"])
        assert poly.is_valid
        assert box(0, 0, 1280, 1280).contains(poly)
        # room for several 256 px tiles at level 0
        assert poly.area > 6 * 256**2
        # the ROI is tumour-enriched: more tumour (mask 2/3) inside than outside
        mask = cv2.imread(str(tiny_cohort.parent / "masks" / f"{sid}.png"), cv2.IMREAD_UNCHANGED)
        inside = np.zeros_like(mask)
        ring = np.round(np.asarray(poly.exterior.coords)).astype(np.int32)
        cv2.fillPoly(inside, [ring], 1)
        tum = mask >= 2
        frac_in = tum[inside == 1].mean()
        frac_out = tum[(inside == 0) & (mask > 0)].mean()
        assert frac_in > 0.3
        assert frac_in > 2 * frac_out


def test_masks_match_slides(tiny_cohort: Path, manifest_df: pd.DataFrame) -> None:
    import cv2

    for sid in manifest_df["slide_id"]:
        mask = cv2.imread(str(tiny_cohort.parent / "masks" / f"{sid}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (1280, 1280)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1, 2, 3}


def _level0(tiny_cohort: Path, rel: str) -> np.ndarray:
    from her2scope.slide.reader import open_slide

    with open_slide(tiny_cohort.parent / rel) as s:
        return s.read_region((0, 0), 0, (1280, 1280))


def test_deconvolved_membrane_dab_rises_with_grade_at_both_centres_while_colour_differs(
    tiny_cohort: Path, manifest_df: pd.DataFrame
) -> None:
    import cv2
    from skimage.color import rgb2hed

    dab: dict[tuple[str, str], list[float]] = {}
    tumour_rgb: dict[tuple[str, str], list[np.ndarray]] = {}
    for row in manifest_df.itertuples():
        rgb = _level0(tiny_cohort, row.slide_path)
        mask = cv2.imread(
            str(tiny_cohort.parent / "masks" / f"{row.slide_id}.png"), cv2.IMREAD_UNCHANGED
        )
        hed = rgb2hed(rgb)
        dab.setdefault((row.center, row.label), []).append(float(hed[..., 2][mask == 3].mean()))
        tumour_rgb.setdefault((row.center, row.label), []).append(rgb[mask >= 2].mean(axis=0))
    for centre in ("A", "B"):
        m = [np.mean(dab[(centre, g)]) for g in ("1+", "2+", "3+")]
        assert m[0] < m[1] < m[2], (centre, m)
    for g in ("1+", "2+", "3+"):
        a = np.mean(tumour_rgb[("A", g)], axis=0)
        b = np.mean(tumour_rgb[("B", g)], axis=0)
        # the centres' raw colours differ by a clear margin in at least one channel
        assert np.abs(a - b).max() > 12, (g, a, b)


def test_cells_parquet_matches_asco_cap_label(tmp_path: Path) -> None:
    from her2scope.synth import make_cohort

    manifest = make_cohort(
        tmp_path, n_patients=4, n_centers=2, seed=3, slide_px=1024, labels=("0", "3+"), cells=True
    )
    df = pd.read_csv(manifest, dtype=str)
    assert sorted(df.drop_duplicates("patient_id")["label"]) == ["0", "0", "3+", "3+"]
    for row in df.itertuples():
        cells = pd.read_parquet(tmp_path / "cells" / f"{row.slide_id}.parquet")
        assert list(cells.columns) == [
            "x",
            "y",
            "membrane_class",
            "completeness",
            "complete",
            "membrane_dab_od",
            "in_roi",
        ]
        assert len(cells) > 100
        assert cells["x"].between(0, 1023).all()
        assert cells["y"].between(0, 1023).all()
        idx = cells["membrane_class"].cat.codes.to_numpy()
        assert P.asco_cap_score(idx, cells["completeness"].to_numpy()) == row.label
        assert set(cells["membrane_class"].cat.categories) == set(P.MEMBRANE_CLASSES)


@pytest.mark.slow  # renders three cohorts
def test_same_seed_same_bytes_other_seed_other_cohort(tmp_path: Path) -> None:
    from her2scope.synth import make_cohort

    kw = {"n_patients": 3, "n_centers": 1, "slide_px": 1024, "masks": True}
    m1 = make_cohort(tmp_path / "a", seed=5, **kw)
    m2 = make_cohort(tmp_path / "b", seed=5, workers=2, **kw)
    m3 = make_cohort(tmp_path / "c", seed=6, **kw)
    files1 = sorted(p.relative_to(m1.parent) for p in m1.parent.rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(m2.parent) for p in m2.parent.rglob("*") if p.is_file())
    assert files1 == files2
    assert len(files1) >= 3 * 3 + 2
    for rel in files1:
        assert (m1.parent / rel).read_bytes() == (m2.parent / rel).read_bytes(), rel
    differ = [
        rel
        for rel in files1
        if rel.suffix == ".tif"
        and (m3.parent / rel).exists()
        and (m3.parent / rel).read_bytes() != (m1.parent / rel).read_bytes()
    ]
    assert differ, "a different seed must give different slides"


@pytest.mark.slow  # renders a 12-patient cohort and cross-validates a baseline (~40 s)
def test_trivial_baseline_is_learnable_but_not_perfect(tmp_path: Path) -> None:
    """A DAB-histogram logistic regression, trained at one centre and tested at the other, ranks
    tiles by grade well above chance (0.5) but clearly below perfect (1.0)."""
    from her2scope.synth import make_cohort
    from her2scope.synth.check import baseline_auc, tile_features

    manifest = make_cohort(tmp_path, n_patients=12, n_centers=2, seed=0, slide_px=2048)
    tiles = tile_features(manifest, tile_px=128, level=1)
    assert len(tiles.label) > 200
    assert sorted(set(tiles.center)) == ["A", "B"]
    auc = baseline_auc(tiles)
    for key in ("A_to_B", "B_to_A"):
        assert 0.75 < auc[key] < 0.97, auc

"""tile_slide / tile_cohort / `her2scope tile` on generated pyramidal TIFFs of known geometry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2scope.errors import ManifestError, RoiError, SlideError
from her2scope.slide import open_slide
from her2scope.slide.write import write_pyramidal_tiff
from her2scope.tiling.config import TilingConfig
from her2scope.tiling.extract import TILE_COLUMNS, tile_cohort, tile_slide

T = 256  # tile side used in these tests
GLASS = 240
TISSUE = (150, 100, 170)


def _slide_image() -> np.ndarray:
    """2600×1536 px: a 10×6 grid of whole 256-px tiles plus a 40-px strip on the right.

    Tissue: tiles (col 1-3, row 1-2) full; tile (6, 3) left half (white_frac 0.5, kept);
    tile (8, 3) left quarter (white_frac 0.75, dropped).
    """
    rng = np.random.default_rng(0)
    img = np.full((1536, 2600, 3), GLASS, np.uint8)
    noise = rng.integers(-15, 16, (1536, 2600, 1))
    tissue = np.clip(np.array(TISSUE)[None, None] + noise, 0, 255).astype(np.uint8)
    img[T : 3 * T, T : 4 * T] = tissue[T : 3 * T, T : 4 * T]
    img[3 * T : 4 * T, 6 * T : 6 * T + T // 2] = tissue[3 * T : 4 * T, 6 * T : 6 * T + T // 2]
    img[3 * T : 4 * T, 8 * T : 8 * T + T // 4] = tissue[3 * T : 4 * T, 8 * T : 8 * T + T // 4]
    return img


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    img = _slide_image()
    path = write_pyramidal_tiff(tmp_path_factory.mktemp("slide") / "s1.tif", img, 0.5, quality=95)
    return path, img


def _roi(path: Path, x1: float, cls: str = "Tumor") -> Path:
    coords = [[T, T], [x1, T], [x1, 3 * T], [T, 3 * T], [T, T]]
    feat = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [coords]},
        "properties": {"objectType": "annotation", "classification": {"name": cls}},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feat]}))
    return path


def _counts(sc: dict) -> tuple[int, int, int, int, int]:
    return tuple(
        sc[k] for k in ("n_grid", "n_kept", "n_dropped_white", "n_dropped_roi", "n_read_errors")
    )  # type: ignore[return-value]


def test_tissue_mask_tiling_keeps_exactly_the_tissue_tiles(
    slide_file: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, img = slide_file
    df, sc = tile_slide(path, "s1", TilingConfig(tile_px=T), qc_path=tmp_path / "qc.png")
    assert list(df.columns) == list(TILE_COLUMNS)
    expected = [(c * T, r * T) for r in (1, 2) for c in (1, 2, 3)] + [(6 * T, 3 * T)]
    assert list(zip(df.x, df.y, strict=True)) == expected
    n_grid, n_kept, n_white, n_roi, n_err = _counts(sc)
    assert (n_grid, n_kept, n_err) == (60, 7, 0)
    assert n_white + n_roi + n_kept == n_grid
    assert n_white >= 1  # the quarter-tissue tile was read and dropped as white
    half = df[(df.x == 6 * T) & (df.y == 3 * T)]
    np.testing.assert_allclose(half.white_frac, [0.5], atol=0.02)
    np.testing.assert_allclose(df.white_frac.iloc[:6], 0.0, atol=1e-3)
    assert (df.level == 0).all() and (df.read_px == T).all() and (df.tile_px == T).all()
    assert (df.mpp == 0.5).all() and df.patient_id.eq("").all()
    assert sc["mpp_x"] == sc["mpp_y"] == 0.5
    assert (sc["level0_width"], sc["level0_height"]) == (2600, 1536)
    assert sc["roi_rule"] == "tissue_mask"
    # the pixel contract: what the dataset will read is the tile we judged
    with open_slide(df.slide_path.iloc[0]) as s:
        row = df.iloc[2]
        px = s.read_tile((row.x, row.y), row.level, row.read_px, row.tile_px)
    ref = img[row.y : row.y + T, row.x : row.x + T].astype(int)
    assert np.abs(px.astype(int) - ref).mean() < 3
    qc = open_slide(tmp_path / "qc.png", mpp=1.0).thumbnail(4096)
    assert qc.shape[1] == 1024  # thumbnail width: long side of at least 1024 px


def test_roi_centre_and_coverage_rules(slide_file: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = slide_file
    roi = _roi(tmp_path / "r.geojson", 3 * T + 132)  # covers col 3 by 132/256 = 0.516
    df, sc = tile_slide(path, "s1", TilingConfig(tile_px=T), roi_path=roi)
    assert _counts(sc) == (60, 6, 0, 54, 0)  # col-3 centres (x = 896) are inside
    cover = dict(zip(zip(df.x, df.y, strict=True), df.roi_cover, strict=True))
    assert cover[(3 * T, T)] == pytest.approx(132 / 256)
    assert cover[(T, T)] == 1.0
    assert sc["roi_area_px"] == pytest.approx((2 * T + 132) * 2 * T)

    _, sc = tile_slide(
        path, "s1", TilingConfig(tile_px=T, roi_rule="coverage", min_roi_cover=0.5), roi_path=roi
    )
    assert sc["n_kept"] == 6
    _, sc = tile_slide(
        path, "s1", TilingConfig(tile_px=T, roi_rule="coverage", min_roi_cover=0.6), roi_path=roi
    )
    assert _counts(sc) == (60, 4, 0, 56, 0)
    narrow = _roi(tmp_path / "n.geojson", 3 * T + 100)  # centre of col 3 outside
    _, sc = tile_slide(path, "s1", TilingConfig(tile_px=T), roi_path=narrow)
    assert sc["n_kept"] == 4


def test_target_mpp_reads_the_pyramid_level(slide_file: tuple[Path, np.ndarray]) -> None:
    path, _ = slide_file
    df, sc = tile_slide(path, "s1", TilingConfig(tile_px=128, target_mpp=1.0))
    assert (sc["read_level"], sc["read_px"], sc["level0_tile_px"], sc["n_grid"]) == (
        1,
        128,
        256,
        60,
    )
    assert sc["n_kept"] == 7 and (df.mpp == 1.0).all() and (df.level == 1).all()
    df, sc = tile_slide(path, "s1", TilingConfig(tile_px=128, target_mpp=0.75))
    # 1.5× the slide: level 0, read 192 px, resized to 128; grid of 192-px tiles
    assert (sc["read_level"], sc["read_px"], sc["level0_tile_px"]) == (0, 192, 192)
    assert sc["n_grid"] == (2600 // 192) * (1536 // 192)
    with open_slide(path) as s:
        row = df.iloc[0]
        assert s.read_tile((row.x, row.y), row.level, row.read_px, row.tile_px).shape == (
            128,
            128,
            3,
        )


@pytest.mark.parametrize("target_mpp", [None, 0.75])  # read as is; read 192 px, resized to 128
def test_kept_pixels_are_what_read_tile_gives_within_the_budget(
    slide_file: tuple[Path, np.ndarray], target_mpp: float | None
) -> None:
    """Decode once: the tiling pass hands over each kept tile's pixels exactly as a later
    ``read_tile`` of its row would read them, up to the byte budget, and none with workers."""
    from her2scope.tiling.extract import tile_slide_keeping_pixels

    path, _ = slide_file
    cfg = TilingConfig(tile_px=128, target_mpp=target_mpp)
    ref, ref_sc = tile_slide(path, "s1", cfg)
    df, sc, pixels = tile_slide_keeping_pixels(path, "s1", cfg, budget_bytes=1 << 30)
    pd.testing.assert_frame_equal(df, ref)
    assert sc == ref_sc
    assert sorted(pixels) == list(range(len(df))) and len(df) >= 7
    with open_slide(path) as s:
        for i, row in df.iterrows():
            want = s.read_tile((row.x, row.y), row.level, row.read_px, row.tile_px)
            np.testing.assert_array_equal(pixels[i], want)
    one = pixels[0].nbytes
    _, _, some = tile_slide_keeping_pixels(path, "s1", cfg, budget_bytes=3 * one + one // 2)
    assert sorted(some) == [0, 1, 2]  # the first three rows fit, the others are read again
    _, _, none = tile_slide_keeping_pixels(path, "s1", cfg, budget_bytes=1 << 30, workers=2)
    assert none == {}  # pixels do not cross process boundaries


def test_an_roi_file_without_an_roi_fails_the_slide_with_its_reason(
    slide_file: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, _ = slide_file
    stroma = _roi(tmp_path / "s.geojson", 3 * T, cls="Stroma")
    with pytest.raises(RoiError, match=r"no ROI of class Tumor \(classes in the file: Stroma\)"):
        tile_slide(path, "s1", TilingConfig(tile_px=T, roi_classes=("Tumor",)), roi_path=stroma)
    feat = {"type": "Polygon", "coordinates": [[[2400, 0], [3000, 0], [3000, 600], [2400, 600]]]}
    (tmp_path / "o.geojson").write_text(json.dumps(feat))
    _, sc = tile_slide(path, "s1", TilingConfig(tile_px=T), roi_path=tmp_path / "o.geojson")
    assert any("lies outside the slide; clipped" in w for w in sc["warnings"])
    away = {"type": "Polygon", "coordinates": [[[9000, 0], [9900, 0], [9900, 900], [9000, 900]]]}
    (tmp_path / "away.geojson").write_text(json.dumps(away))
    with pytest.raises(RoiError) as info:
        tile_slide(path, "s1", TilingConfig(tile_px=T), roi_path=tmp_path / "away.geojson")
    assert "every ROI lies outside the slide (2600×1536 px at level 0" in str(info.value)
    assert "x 9000–9900, y 0–900" in str(info.value) and "away.geojson" in str(info.value)


def test_roi_outside_the_slide_is_a_failure_of_that_slide_only(
    slide_file: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, _ = slide_file
    shutil.copy(path, tmp_path / "s1.tif")
    away = {"type": "Polygon", "coordinates": [[[9000, 0], [9900, 0], [9900, 900], [9000, 900]]]}
    (tmp_path / "away.geojson").write_text(json.dumps(away))
    _roi(tmp_path / "r.geojson", 3 * T)
    m = tmp_path / "m.csv"
    m.write_text("slide_id,slide_path,roi_path\nfar,s1.tif,away.geojson\nnear,s1.tif,r.geojson\n")
    report = tile_cohort(m, tmp_path / "out", TilingConfig(tile_px=T))
    assert [f["slide_id"] for f in report.failures] == ["far"]
    assert "every ROI lies outside the slide" in report.failures[0]["reason"]
    assert report.n_tiles == 4 and not (tmp_path / "out" / "slides" / "far.json").exists()


def test_read_errors_are_counted_and_the_tile_dropped(
    slide_file: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from her2scope.slide.reader import Slide

    path, _ = slide_file
    real = Slide.read_region

    def flaky(self: Slide, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if tuple(xy) == (2 * T, T):
            raise SlideError(self.path, "corrupt JPEG tile")
        return real(self, xy, level, size)

    monkeypatch.setattr(Slide, "read_region", flaky)
    df, sc = tile_slide(path, "s1", TilingConfig(tile_px=T))
    assert sc["n_read_errors"] == 1 and sc["n_kept"] == 6
    assert (2 * T, T) not in set(zip(df.x, df.y, strict=True))
    assert "corrupt JPEG tile" in sc["warnings"][-1]


def test_plain_image_needs_mpp(tmp_path: Path) -> None:
    import cv2

    img = np.full((600, 600, 3), GLASS, np.uint8)
    img[:300, :300] = TISSUE
    cv2.imwrite(str(tmp_path / "crop.png"), img)
    with pytest.raises(SlideError, match="no µm/px in the file"):
        tile_slide(tmp_path / "crop.png", "crop", TilingConfig(tile_px=T))
    df, sc = tile_slide(tmp_path / "crop.png", "crop", TilingConfig(tile_px=T), mpp=0.25)
    assert list(zip(df.x, df.y, strict=True)) == [(0, 0)] and sc["mpp_x"] == 0.25


def _manifest(tmp_path: Path, slide: Path | str, roi: Path) -> Path:
    (tmp_path / "broken.svs").write_bytes(b"\x00not a slide" * 100)
    rows = [
        "slide_id,patient_id,center,label,slide_path,roi_path",
        f"good_roi,P1,A,2+,{slide},{roi.name}",
        "bad,P2,B,3+,broken.svs,",
        f"good_mask,P3,B,1+,{slide},",
    ]
    m = tmp_path / "manifest.csv"
    m.write_text("\n".join(rows) + "\n")
    return m


def test_cohort_goes_on_past_a_broken_slide_and_keeps_sidecar_keys(
    slide_file: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, _ = slide_file
    roi = _roi(tmp_path / "r.geojson", 3 * T)
    out = tmp_path / "out"
    (out / "slides").mkdir(parents=True)
    (out / "slides" / "good_roi.json").write_text(
        json.dumps({"stain": {"mode": "x"}, "n_kept": -1})
    )
    report = tile_cohort(
        _manifest(tmp_path, path, roi),
        out,
        TilingConfig(tile_px=T),
        export_tiles=True,
        allow_absolute=True,  # the slide lives in another temporary folder
    )
    assert not report.ok
    assert [f["slide_id"] for f in report.failures] == ["bad"]
    assert "broken.svs" in report.failures[0]["reason"]
    tiles = pd.read_parquet(out / "tiles.parquet")
    assert list(tiles.columns) == list(TILE_COLUMNS)
    assert tiles.groupby("slide_id").size().to_dict() == {"good_mask": 7, "good_roi": 4}
    assert tiles.loc[tiles.slide_id == "good_roi", ["patient_id", "center", "label"]].iloc[
        0
    ].tolist() == ["P1", "A", "2+"]
    assert (tiles.slide_path == str(path.resolve())).all()
    side = json.loads((out / "slides" / "good_roi.json").read_text())
    assert side["stain"] == {"mode": "x"} and side["n_kept"] == 4  # unknown key kept, counts new
    assert sorted(p.name for p in (out / "qc").iterdir()) == ["good_mask.png", "good_roi.png"]
    mask_side = json.loads((out / "slides" / "good_mask.json").read_text())
    assert mask_side["warnings"][0].startswith("the manifest gives no roi_path: tiled on the whole")
    assert side["warnings"] == []
    assert not (out / "slides" / "bad.json").exists()
    exported = sorted((out / "tiles" / "good_roi").iterdir())
    assert len(exported) == 4 and exported[0].name == f"good_roi_x{T}_y{T}.png"
    rep = json.loads((out / "tiling_report.json").read_text())
    assert rep["n_tiles"] == 11 and rep["failures"][0]["slide_id"] == "bad"
    assert not list(out.glob(".*tmp*"))  # atomic writes leave nothing behind


def test_cli_exits_non_zero_with_a_summary_and_workers_agree(
    slide_file: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from her2scope.cli import app

    path, _ = slide_file
    roi = _roi(tmp_path / "r.geojson", 3 * T)
    shutil.copy(path, tmp_path / "s1.tif")  # manifest paths stay inside its folder
    manifest = _manifest(tmp_path, "s1.tif", roi)
    res = CliRunner().invoke(
        app,
        [
            "tile",
            str(manifest),
            "--out",
            str(tmp_path / "o2"),
            "--tile-px",
            str(T),
            "--workers",
            "2",
        ],
    )
    assert res.exit_code == 1, res.output
    assert "FAILED" in res.output and "good_mask" in res.output
    one = tile_cohort(manifest, tmp_path / "o1", TilingConfig(tile_px=T))
    a = pd.read_parquet(tmp_path / "o1" / "tiles.parquet")
    b = pd.read_parquet(tmp_path / "o2" / "tiles.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert one.n_tiles == len(b) == 11
    # bare slide paths with --rois: the ROI is matched by the slide's file stem
    rois = tmp_path / "rois"
    rois.mkdir()
    _roi(rois / "s1.geojson", 3 * T)
    res = CliRunner().invoke(
        app,
        [
            "tile",
            str(path),
            "--out",
            str(tmp_path / "o3"),
            "--tile-px",
            str(T),
            "--rois",
            str(rois),
        ],
    )
    assert res.exit_code == 0, res.output
    c = pd.read_parquet(tmp_path / "o3" / "tiles.parquet")
    assert len(c) == 4 and (c.slide_id == "s1").all() and c.label.eq("").all()


def test_manifest_problems_are_reported_all_at_once(tmp_path: Path) -> None:
    for name in ("a.svs", "b.svs", "c.svs", "e.svs"):
        (tmp_path / name).write_bytes(b"x")
    m = tmp_path / "m.csv"
    m.write_text(
        "slide_id,slide_path,mpp\na,a.svs,0.5\na,b.svs,\n,c.svs,\nd,../outside.svs,\n"
        "e,e.svs,fast\nf,missing.svs,\n"
    )
    with pytest.raises(ManifestError) as info:
        tile_cohort(m, tmp_path / "out", TilingConfig())
    base = tmp_path.resolve()
    assert info.value.problems == [
        "row 3: duplicate slide_id 'a' (first on row 2)",
        "row 4: empty slide_id",
        f"row 5: slide_path '../outside.svs' leaves the manifest's folder {base}; move the file "
        "or allow absolute paths (cohort.allow_absolute_paths=true)",
        "row 6: mpp 'fast' is not a positive number (µm per pixel)",
        f"row 7: slide_path 'missing.svs' not found (looked for {base / 'missing.svs'})",
    ]
    assert not (tmp_path / "out").exists()  # nothing written before the manifest is fixed
    m.write_text("id,path\nx,y\n")
    with pytest.raises(ManifestError, match="missing column"):
        tile_cohort(m, tmp_path / "out", TilingConfig())


def test_tiling_and_training_read_a_manifest_with_one_path_rule(
    slide_file: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    from her2scope.cohort import load_manifest
    from her2scope.tiling.extract import read_tiling_manifest

    path, _ = slide_file
    m = tmp_path / "m.csv"
    m.write_text(f"slide_id,patient_id,center,label,slide_path\ns1,p1,A,2+,{path}\n")
    with pytest.raises(ManifestError) as tiling:
        read_tiling_manifest(m)
    with pytest.raises(ManifestError) as training:
        load_manifest(m)
    assert tiling.value.problems == training.value.problems
    assert "is absolute" in tiling.value.problems[0]
    (entry,) = read_tiling_manifest(m, allow_absolute=True)
    df = load_manifest(m, allow_absolute=True)
    assert str(entry.slide_path) == df.slide_path[0] == str(path.resolve())
    assert entry.extra == {"patient_id": "p1", "center": "A", "label": "2+"}


def test_grayscale_images_are_refused_with_one_message_by_every_reader(tmp_path: Path) -> None:
    """PNG, JPEG, a strip TIFF (tifffile) and a tiled TIFF (which OpenSlide would open)."""
    import cv2
    import tifffile

    from her2scope.slide.reader import GRAYSCALE_REASON

    grey = np.full((600, 600), GLASS, np.uint8)
    grey[:300, :300] = 120
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    cv2.imwrite(str(tmp_path / "g.jpg"), grey)
    tifffile.imwrite(tmp_path / "strip.tif", grey, photometric="minisblack")
    tifffile.imwrite(tmp_path / "tiled.tif", grey, photometric="minisblack", tile=(256, 256))
    for name in ("g.png", "g.jpg", "strip.tif", "tiled.tif"):
        with pytest.raises(SlideError) as info:
            tile_slide(tmp_path / name, "g", TilingConfig(tile_px=T), mpp=0.5)
        assert info.value.reason == GRAYSCALE_REASON, name
    rgb = np.repeat(grey[..., None], 3, axis=2)  # grey-looking but RGB: read as usual
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    df, _ = tile_slide(tmp_path / "rgb.png", "rgb", TilingConfig(tile_px=T), mpp=0.5)
    assert list(zip(df.x, df.y, strict=True)) == [(0, 0)]


def _edgy_slide_image(seed: int) -> np.ndarray:
    """3072×2048 px of glass with tissue in smooth-edged islands (soft alpha edges, dense and
    pale tissue, scattered specks): many tiles at the 40 % tissue boundary of the white rule."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = 2048, 3072
    field = cv2.resize(rng.normal(size=(6, 8)).astype(np.float32), (w, h), cv2.INTER_CUBIC)
    alpha = np.clip((field - np.median(field)) * 4 + 0.5, 0, 1)[..., None]
    glass = 236 + rng.normal(0, 3, (h, w, 3))
    dense = np.array([150, 110, 160]) + rng.normal(0, 25, (h, w, 3))
    pale = np.array([205, 200, 222]) + rng.normal(0, 12, (h, w, 3))  # faint hematoxylin
    paleness = cv2.resize(rng.random((4, 6)).astype(np.float32), (w, h))[..., None] > 0.5
    tissue = np.where(paleness, pale, dense)
    img = glass * (1 - alpha) + tissue * alpha
    specks = rng.random((h, w)) < 0.002  # dust on the glass
    img[specks] = (90, 70, 80)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["tissue", "roi"])
def test_glass_prefilter_keeps_the_same_tiles_and_reads_fewer(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule (tiling/candidates.py): a position is read only when the thumbnail shows at least
    TISSUE_MARGIN × (1 - max_white) of it as not white. Tiling with it keeps exactly the tiles
    (and counts) of reading every position of the region (TISSUE_MARGIN = 0), and reads fewer."""
    import her2scope.tiling.candidates as candidates

    path = write_pyramidal_tiff(tmp_path / "edgy.tif", _edgy_slide_image(0), 0.5, quality=90)
    roi = None
    if mode == "roi":  # an ROI over most of the slide, glass included
        roi = tmp_path / "roi.geojson"
        coords = [[100, 60], [2900, 60], [2900, 1990], [100, 1990], [100, 60]]
        feat = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]},
                "properties": {"objectType": "annotation"}}  # fmt: skip
        roi.write_text(json.dumps({"type": "FeatureCollection", "features": [feat]}))
    results = {}
    for margin in (candidates.TISSUE_MARGIN, 0.0):
        monkeypatch.setattr(candidates, "TISSUE_MARGIN", margin)
        for max_white in (0.6, 0.3):
            cfg = TilingConfig(tile_px=128, max_white=max_white)
            results[margin, max_white] = tile_slide(path, "e", cfg, roi_path=roi)
    for max_white in (0.6, 0.3):
        (df, sc), (df_all, sc_all) = results[0.5, max_white], results[0.0, max_white]
        assert sc_all["n_kept"] >= 20 and sc_all["n_dropped_white"] >= 20  # a real test
        pd.testing.assert_frame_equal(df, df_all)
        assert _counts(sc) == _counts(sc_all)
        assert sc_all["n_read"] == sc_all["n_kept"] + sc_all["n_dropped_white"]
        assert sc["n_read"] < sc_all["n_read"]  # the glass was not read
        # what is still read beyond the kept tiles is a small margin of the glass it used to read
        assert sc["n_read"] - sc["n_kept"] <= 0.5 * (sc_all["n_read"] - sc_all["n_kept"])

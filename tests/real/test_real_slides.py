"""Real slides from ../shared/data: they open with their true geometry, tile, or fail cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from her2scope.errors import ManifestError, SlideError
from her2scope.slide import open_slide
from her2scope.tiling.config import TilingConfig
from her2scope.tiling.extract import tile_cohort, tile_slide

pytestmark = pytest.mark.real


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("histolab/broken.svs", "format not recognised"),
        ("openslide-python/unopenable.tiff", "unsupported TIFF compression 52479"),
        ("pathml/small_dicom.dcm", "Couldn't get image flavor"),
        ("pathml/small_vectra.qptiff", "not a brightfield RGB image"),
        ("pathml/smalltif.tif", "not a brightfield RGB image"),
    ],
)
def test_bad_real_files_raise_a_clear_slide_error(shared_data: Path, rel: str, reason: str) -> None:
    with pytest.raises(SlideError, match=reason) as info:
        open_slide(shared_data / rel)
    assert info.value.path.endswith(Path(rel).name)


def test_svs_opens_with_true_geometry_and_tiles(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "histolab/cmu-1-small-region.svs"
    with open_slide(path) as s:
        assert s.dimensions == (2220, 2967) and s.mpp == (0.499, 0.499)
        assert s.objective_power == 20
        ref = open_slide(path, reader="openslide")
        np.testing.assert_array_equal(
            s.read_region((600, 900), 0, (512, 512)), ref.read_region((600, 900), 0, (512, 512))
        )
    df, sc = tile_slide(path, "cmu", TilingConfig(), qc_path=tmp_path / "qc.png")
    assert sc["n_grid"] == (2220 // 512) * (2967 // 512) == 20
    assert sc["n_kept"] + sc["n_dropped_white"] + sc["n_dropped_roi"] + sc["n_read_errors"] == 20
    assert sc["n_read_errors"] == 0 and 5 <= sc["n_kept"] <= 20
    assert (df.white_frac <= 0.6).all() and (tmp_path / "qc.png").stat().st_size > 1000


def test_slide_without_mpp_needs_it_and_then_tiles_at_a_target(shared_data: Path) -> None:
    path = shared_data / "histolab/tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(SlideError, match="no µm/px in the file; add an 'mpp' column"):
        tile_slide(path, "tcga", TilingConfig())
    df, sc = tile_slide(path, "tcga", TilingConfig(tile_px=256, target_mpp=1.0), mpp=0.5)
    assert (sc["read_level"], sc["read_px"], sc["level0_tile_px"]) == (1, 256, 512)
    assert sc["n_grid"] == (4443 // 512) * (3567 // 512)
    assert sc["n_kept"] > 0 and (df.level == 1).all()


def test_dicom_folder_and_plain_ihc_tiff(shared_data: Path) -> None:
    with open_slide(shared_data / "dicom-wsi-sample/cmu-1-small-region") as s:
        assert s.dimensions == (2220, 2967) and s.level_count == 12
        assert s.read_region((1000, 1000), 0, (64, 64)).shape == (64, 64, 3)
    kidney = shared_data / "histolab/kidney-48-5.tif"
    with pytest.raises(SlideError, match="no µm/px"):
        open_slide(kidney)
    with open_slide(kidney, mpp=0.5) as s:
        assert s.dimensions == (1493, 901)
        assert s.read_region((0, 0), 0, (8, 8)).dtype == np.uint8


def test_batch_with_real_broken_files_goes_on(shared_data: Path, tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text(
        "slide_id,slide_path\n"
        f"cmu,{shared_data / 'histolab/cmu-1-small-region.svs'}\n"
        f"broken,{shared_data / 'histolab/broken.svs'}\n"
        f"vectra,{shared_data / 'pathml/small_vectra.qptiff'}\n"
    )
    report = tile_cohort(m, tmp_path / "out", TilingConfig(), allow_absolute=True)
    assert [f["slide_id"] for f in report.failures] == ["broken", "vectra"]
    assert "not a brightfield RGB image" in report.failures[1]["reason"]
    assert report.n_tiles == report.slides[0]["n_kept"] > 0
    # a missing file is a manifest problem (one rule with training): refused before any work
    m.write_text(m.read_text() + f"missing,{tmp_path / 'nope.svs'}\n")
    with pytest.raises(ManifestError, match=r"row 5: slide_path '.*nope.svs' not found"):
        tile_cohort(m, tmp_path / "out2", TilingConfig(), allow_absolute=True)
    assert not (tmp_path / "out2").exists()

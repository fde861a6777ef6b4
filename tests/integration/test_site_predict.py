"""``her2scope calibrate`` → ``her2scope predict --center`` on a generated slide with a tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.integration.tiny_pipeline import CLASSES, train_tiny_run


@pytest.fixture(scope="module")
def site_setup(tiny_cohort: Path, toy_tiles: Path, tmp_path_factory: pytest.TempPathFactory):
    from her2scope.slide.reader import open_slide
    from her2scope.slide.write import write_pyramidal_tiff

    d = tmp_path_factory.mktemp("site")
    run = train_tiny_run(d / "run", toy_tiles)
    manifest = pd.read_csv(tiny_cohort)
    src = tiny_cohort.parent / manifest.loc[0, "slide_path"]
    with open_slide(src) as s:
        w, h = s.dimensions
        rgb = s.read_region(((w - 640) // 2, (h - 640) // 2), 0, (640, 640))
    (d / "slides").mkdir()
    write_pyramidal_tiff(d / "slides" / "site1.tif", rgb, mpp=0.5)
    (d / "site.csv").write_text(
        "slide_id,patient_id,center,label,slide_path\nsite1,Q1,C,3+,slides/site1.tif\n"
    )
    return run, d


def test_calibrate_then_predict_center_round_trip(site_setup, tmp_path: Path) -> None:
    from her2scope.errors import ConfigError
    from her2scope.scoring import score_slides
    from her2scope.scoring.site import calibrate_site, save_site

    run0, d = site_setup
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    slide = d / "slides" / "site1.tif"

    rec = calibrate_site(run, d / "site.csv", "C")
    assert rec["method"] == "supervised_nll" and rec["dab_scale"] > 0 and rec["slides"] == ["site1"]
    assert rec["nll"] <= rec["nll_at_1"] + 1e-9  # the fitted factor never fits worse than none
    stored = json.loads((run / "site_calibration.json").read_text())["centers"]["C"]
    assert stored["dab_scale"] == rec["dab_scale"]
    with pytest.raises(ConfigError, match="no slide of centre 'Z'"):
        calibrate_site(run, d / "site.csv", "Z")
    uns = calibrate_site(run, d / "site.csv", "C", unsupervised=True, unsupervised_method="dab")
    assert uns["method"] == "unsupervised_dab_quantile" and uns["dab_scale"] > 0
    assert "grade mix" in uns["assumption"]  # the assumption travels with the factor

    # a large stored factor must move the slide's probabilities, and is recorded
    save_site(run, "C", {"dab_scale": 4.0, "method": "test"})
    plain = score_slides([slide], run, tmp_path / "plain").summary.iloc[0]
    site = score_slides([slide], run, tmp_path / "site", center="C").summary.iloc[0]
    p0 = np.array([plain[f"prob_{c}"] for c in CLASSES], float)
    p1 = np.array([site[f"prob_{c}"] for c in CLASSES], float)
    assert np.abs(p0 - p1).max() > 1e-3
    doc = json.loads((tmp_path / "site" / "site1.her2scope.json").read_text())
    assert doc["site_calibration"]["center"] == "C"
    assert doc["site_calibration"]["dab_scale"] == 4.0
    doc0 = json.loads((tmp_path / "plain" / "site1.her2scope.json").read_text())
    assert doc0["site_calibration"] is None
    with pytest.raises(ConfigError, match="no site calibration for centre 'D'"):
        score_slides([slide], run, tmp_path / "d", center="D")


def test_calibrate_cli_unsupervised_methods(site_setup, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from her2scope.cli import app

    run0, d = site_setup
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    base = ["calibrate", str(run), "--manifest", str(d / "site.csv"), "--center", "C"]
    bad = CliRunner().invoke(app, [*base, "--unsupervised", "--unsupervised-method", "median"])
    assert bad.exit_code == 2 and "--unsupervised-method" in bad.output
    assert not (run / "site_calibration.json").exists()  # nothing written on a refused option
    ok = CliRunner().invoke(app, [*base, "--unsupervised", "--unsupervised-method", "dab"])
    assert ok.exit_code == 0, ok.output
    assert "unsupervised_dab_quantile" in ok.output and "assumption: " in ok.output
    stored = json.loads((run / "site_calibration.json").read_text())["centers"]["C"]
    assert stored["method"] == "unsupervised_dab_quantile"

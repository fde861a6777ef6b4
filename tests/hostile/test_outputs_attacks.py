"""Attacks that already held before issue 14, kept held: hostile XML ROIs, paths that leave the
manifest's folder (``..`` and symlinks). (YAML tags, pickled checkpoints and Ctrl-C are in
``test_outputs_run.py`` / ``test_outputs_predict.py``.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.hostile.harness import assert_clean_error, cli, snapshot

XXE = """<?xml version="1.0"?>
<!DOCTYPE ASAP_Annotations [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<ASAP_Annotations><Annotations>
<Annotation Name="&secret;" Type="Polygon" PartOfGroup="Tumor"><Coordinates>
<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="600" Y="0"/>
<Coordinate Order="2" X="600" Y="600"/><Coordinate Order="3" X="0" Y="600"/>
</Coordinates></Annotation></Annotations></ASAP_Annotations>
"""

LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + "]>\n<ASAP_Annotations>&lol9;</ASAP_Annotations>\n"
)  # fmt: skip


@pytest.fixture()
def user_slide(tiny_cohort: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(slide, empty ROI folder) in a folder of the user's."""
    sid = pd.read_csv(tiny_cohort)["slide_id"].iloc[0]
    d = tmp_path / "user"
    (d / "rois").mkdir(parents=True)
    slide = d / "S1.tif"
    shutil.copy(tiny_cohort.parent / "slides" / f"{sid}.tif", slide)
    return slide, d / "rois"


@pytest.mark.parametrize(("name", "xml"), [("xxe", XXE), ("billion_laughs", LAUGHS)])
def test_hostile_xml_roi_is_refused_for_its_slide(
    user_slide: tuple[Path, Path], tmp_path: Path, name: str, xml: str
) -> None:
    slide, rois = user_slide
    (rois / "S1.xml").write_text(xml)
    before = snapshot(slide.parent)
    r = cli("tile", slide, "--rois", rois, "--out", tmp_path / "tiles", "--target-mpp", "1.0")
    assert_clean_error(r, "S1", code=1)  # that slide fails with its reason; the run goes on
    assert "FAILED" in r.output
    report = (tmp_path / "tiles" / "tiling_report.json").read_text()
    assert "unsafe XML rejected" in report  # the reason kept for the user (the table folds it)
    assert "root:" not in r.output and "root:" not in report  # /etc/passwd was never read
    before.assert_unchanged()
    for side in (tmp_path / "tiles").rglob("*.json"):
        assert "root:" not in side.read_text()


def _manifest(folder: Path, slide_path: str) -> Path:
    m = folder / "manifest.csv"
    m.write_text(
        "slide_id,patient_id,center,label,slide_path\n" f"S1,P1,A,2+,{slide_path}\n"
    )  # fmt: skip
    return m


def test_a_manifest_path_that_climbs_out_is_refused(
    user_slide: tuple[Path, Path], tmp_path: Path
) -> None:
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    m = _manifest(cohort, "../user/S1.tif")
    before = snapshot(tmp_path)
    r = cli("tile", m, "--out", cohort / "tiles")
    assert_clean_error(r, "row 2", "../user/S1.tif", "leaves the manifest's folder")
    before.assert_unchanged()


def test_a_symlink_that_leaves_the_manifest_folder_is_refused(
    user_slide: tuple[Path, Path], tmp_path: Path
) -> None:
    slide, _ = user_slide
    cohort = tmp_path / "cohort"
    (cohort / "slides").mkdir(parents=True)
    (cohort / "slides" / "S1.tif").symlink_to(slide)
    m = _manifest(cohort, "slides/S1.tif")
    before = snapshot(tmp_path)
    r = cli("tile", m, "--out", cohort / "tiles")
    assert_clean_error(r, "slides/S1.tif", "leaves the manifest's folder")
    before.assert_unchanged()


def test_tile_into_a_folder_whose_roi_would_become_a_sidecar(
    user_slide: tuple[Path, Path], tmp_path: Path
) -> None:
    """No output may replace an input: `slides/<id>.json` is both a QuPath ROI and a sidecar name."""
    slide, _ = user_slide
    cohort = tmp_path / "cohort"
    (cohort / "slides").mkdir(parents=True)
    shutil.copy(slide, cohort / "slides" / "S1.tif")
    roi = cohort / "slides" / "S1.json"
    roi.write_text(
        '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
        '[[[0, 0], [600, 0], [600, 600], [0, 600], [0, 0]]]}, "properties": {}}'
    )
    m = cohort / "manifest.csv"
    m.write_text(
        "slide_id,patient_id,center,label,slide_path,roi_path\n"
        "S1,P1,A,2+,slides/S1.tif,slides/S1.json\n"
    )
    before = snapshot(cohort)
    r = cli("tile", m, "--out", cohort, "--target-mpp", "1.0")
    assert_clean_error(r, "would replace an input", str(roi), "--out")
    before.assert_unchanged()


def test_report_escapes_markup_from_cohort_files(tmp_path: Path) -> None:
    """Markup in a manifest's free-text fields (patient, centre) reaches the report as text."""
    from her2scope.config import RunConfig, apply_overrides
    from her2scope.report.html import render_report

    run = tmp_path / "runs" / "alexnet"
    run.mkdir(parents=True)
    (run / "splits.csv").write_text(
        "slide_id,patient_id,center,label,split\n"
        "S1,<script>alert(1)</script>,<img src=x onerror=alert(2)>,1+,train\n"
        "S2,P2,B,2+,test\n",
        encoding="utf-8",
    )
    cfg = apply_overrides(RunConfig(), [f"out_dir={tmp_path}", "train.models=[alexnet]"])
    html = render_report(tmp_path, cfg)
    assert "<script>alert(1)</script>" not in html
    assert "<img src=x onerror" not in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html  # shown, as text

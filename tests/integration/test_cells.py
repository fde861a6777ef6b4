"""`her2scope cells` on small synthetic slides: outputs, formats, calls, failures, safety."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2scope.cells.config import CellConfig
from her2scope.cells.export import CELL_COLUMNS
from her2scope.cells.slide import output_paths, run_cells, score_slide_cells
from her2scope.errors import ConfigError


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from her2scope.synth import make_cohort

    root = tmp_path_factory.mktemp("cells_cohort")
    make_cohort(
        root, n_patients=2, n_centers=1, seed=5, slide_px=1024, labels=("0", "3+"), cells=True
    )
    return root


def _slides(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "manifest.csv", dtype=str).set_index("label")


def test_cells_outputs_and_calls(cohort: Path, tmp_path: Path) -> None:
    man = _slides(cohort)
    slides = [cohort / p for p in man["slide_path"]]
    report = run_cells(slides, tmp_path, rois=cohort / "rois")
    assert report.failures == []
    info = {s["slide_id"]: s for s in json.loads((cohort / "cohort.json").read_text())["slides"]}
    for label, row in man.iterrows():
        outs = output_paths(tmp_path, row["slide_id"])
        assert all(p.is_file() for p in outs.values())
        cells = pd.read_parquet(outs["cells"])
        assert list(cells.columns) == list(CELL_COLUMNS)
        assert len(cells) > 100
        assert np.isfinite(cells.select_dtypes("number").to_numpy()).all()
        summary = json.loads(outs["summary"].read_text())  # strict JSON: no NaN
        truth = info[row["slide_id"]]["asco_call"]
        if label == "3+":
            assert summary["call"] == "3+" == truth
            assert summary["pattern_fraction"]["strong_complete"] > 0.1
        else:
            assert summary["call"] in ("0-null", "0-ultralow") and truth.startswith("0-")
        assert summary["rule"] and summary["stain"]["source"] == "fitted"
        # cells lie inside the ROI and the slide, level-0 px
        from shapely import contains_xy

        from her2scope.slide.rois import load_rois

        roi = load_rois(cohort / row["roi_path"])
        assert contains_xy(roi, cells["x"].to_numpy(), cells["y"].to_numpy()).all()
        # detections match the ground-truth cells of the ROI
        gt = pd.read_parquet(cohort / "cells" / f"{row['slide_id']}.parquet")
        gt = gt[contains_xy(roi, gt["x"].to_numpy(), gt["y"].to_numpy())]
        from her2scope.cells.evaluate import match_points

        pi, _ = match_points(cells[["x", "y"]].to_numpy(), gt[["x", "y"]].to_numpy(), 8.0)
        assert len(pi) / len(gt) > 0.6 and len(pi) / len(cells) > 0.8
        fc = json.loads(outs["geojson"].read_text())
        assert len(fc["features"]) == len(cells)
        f0 = fc["features"][0]
        assert f0["properties"]["objectType"] == "cell"
        from shapely.geometry import shape

        nuc, cell = shape(f0["nucleusGeometry"]), shape(f0["geometry"])
        assert nuc.is_valid and cell.is_valid and cell.buffer(1.0).contains(nuc)
    s = pd.read_csv(report.summary_path)
    assert (s["status"] == "ok").all() and len(s) == 2


def test_region_size_does_not_change_the_cells(cohort: Path, tmp_path: Path) -> None:
    slide = cohort / _slides(cohort).loc["3+", "slide_path"]
    roi = cohort / _slides(cohort).loc["3+", "roi_path"]
    a = score_slide_cells(slide, tmp_path / "a", roi, CellConfig(region_um=512.0))
    b = score_slide_cells(slide, tmp_path / "b", roi, CellConfig(region_um=160.0))
    # cells near region borders are found from a halo in both runs: counts agree closely
    assert math.isclose(a["n_cells"], b["n_cells"], rel_tol=0.02)
    assert a["call"] == b["call"]


def test_outputs_never_replace_inputs(cohort: Path, tmp_path: Path) -> None:
    row = _slides(cohort).loc["3+"]
    # an ROI stored where an output would go must not be overwritten
    roi = tmp_path / f"{row['slide_id']}.cells.geojson"
    shutil.copy(cohort / row["roi_path"], roi)
    before = roi.read_bytes()
    with pytest.raises(ConfigError, match="would replace an input"):
        score_slide_cells(cohort / row["slide_path"], tmp_path, roi)
    assert roi.read_bytes() == before


def test_cli_reports_failing_slides_and_goes_on(cohort: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from her2scope.cli import app

    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide")
    good = cohort / _slides(cohort).loc["3+", "slide_path"]
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["cells", str(bad), str(good), "--out", str(out)])
    assert res.exit_code == 1
    assert "1 slide(s) failed" in res.output and "broken.svs" in res.output
    assert (out / f"{good.stem}.cells.json").is_file()
    summary = pd.read_csv(out / "cells_summary.csv")
    assert sorted(summary["status"]) == ["failed", "ok"]


def test_cli_site_calibration_options_go_together(tmp_path: Path) -> None:
    from her2scope.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            ["cells", str(tmp_path / "x.tif"), "--site-run", str(tmp_path), "--out", str(tmp_path)]
        )
    assert exc.value.code == 2


def test_cli_rejects_unknown_setting(tmp_path: Path) -> None:
    from her2scope.cli.cells import build_config

    with pytest.raises(ConfigError, match="unknown cells setting 'od_huge'"):
        build_config(["od_huge=1"], None, None)
    cfg = build_config(["cells.od_strong=0.7", "n_sectors=12"], 1.5, None)
    assert cfg.od_strong == 0.7 and cfg.n_sectors == 12 and cfg.dab_scale == 1.5


def test_synth_zero_kinds_and_cell_truth(cohort: Path) -> None:
    info = json.loads((cohort / "cohort.json").read_text())
    calls = {s["label"]: s["asco_call"] for s in info["slides"]}
    assert calls["3+"] == "3+" and calls["0"] in ("0-null", "0-ultralow")
    from her2scope.synth import params as P

    for s in info["slides"]:
        gt = pd.read_parquet(cohort / "cells" / f"{s['slide_id']}.parquet")
        idx = gt["membrane_class"].cat.codes.to_numpy()
        assert P.asco_cap_call(idx, gt["completeness"].to_numpy()) == s["asco_call"]


def test_reconciliation_with_predict(cohort: Path, tmp_path: Path) -> None:
    man = _slides(cohort)
    pred = tmp_path / "pred"
    pred.mkdir()
    sid3, sid0 = man.loc["3+", "slide_id"], man.loc["0", "slide_id"]
    (pred / f"{sid3}.her2scope.json").write_text(json.dumps({"score": "2+"}))  # disagrees
    (pred / f"{sid0}.her2scope.json").write_text(json.dumps({"score": "0"}))  # agrees
    before = (pred / f"{sid3}.her2scope.json").read_bytes()
    slides = [cohort / p for p in man["slide_path"]]
    report = run_cells(slides, tmp_path / "out", rois=cohort / "rois", predict_dir=pred)
    assert (pred / f"{sid3}.her2scope.json").read_bytes() == before  # predict's file untouched
    s3 = json.loads((tmp_path / "out" / f"{sid3}.cells.json").read_text())
    rec = s3["reconciliation"]
    assert rec["cnn_score"] == "2+" and rec["cell_call"] == "3+"
    assert rec["review"] is True and rec["grade_difference"] == 1
    s0 = json.loads((tmp_path / "out" / f"{sid0}.cells.json").read_text())
    assert s0["reconciliation"]["agree"] is True and s0["reconciliation"]["review"] is False
    table = json.loads((tmp_path / "out" / "cells_agreement.json").read_text())
    assert table["n_slides"] == 2 and table["agreement"] == 0.5 and table["n_review"] == 1
    assert table["confusion"][2][3] == 1 and table["confusion"][0][0] == 1
    rows = report.summary.set_index("slide_id")
    assert bool(rows.loc[sid3, "review"]) and rows.loc[sid3, "cnn_score"] == "2+"


@pytest.mark.parametrize("fill", [(245, 245, 245), (0, 0, 0)])
def test_blank_slide_gives_no_cells_and_no_call(tmp_path: Path, fill: tuple[int, int, int]) -> None:
    import cv2

    png = tmp_path / "blank.png"
    cv2.imwrite(str(png), np.full((600, 700, 3), fill, np.uint8))
    report = run_cells([png], tmp_path / "out", mpp=0.5)
    assert report.failures == []
    summary = json.loads((tmp_path / "out" / "blank.cells.json").read_text())  # strict JSON
    assert summary["n_cells"] == 0 and summary["call"] is None and summary["h_score"] is None
    assert "no tumour cells" in summary["rule"]
    assert len(pd.read_parquet(tmp_path / "out" / "blank.cells.parquet")) == 0
    fc = json.loads((tmp_path / "out" / "blank.cells.geojson").read_text())
    assert fc["features"] == []


def test_run_stain_scope_gives_every_slide_the_same_vectors(cohort: Path, tmp_path: Path) -> None:
    # a HER2 0 slide holds too little DAB to pin the DAB vector: fitted per slide its vectors
    # (hence its DAB gain) differ from the 3+ slide's; fitted once for the run they are the same
    man = _slides(cohort)
    slides = [cohort / p for p in man["slide_path"]]
    ids = list(man["slide_id"])

    def matrices(out: Path, scope: str, center: str | None = None) -> list[dict]:
        cfg = CellConfig(stain_scope=scope)
        report = run_cells(slides, out, rois=cohort / "rois", cfg=cfg, center=center)
        assert report.failures == []
        return [json.loads(output_paths(out, i)["summary"].read_text())["stain"] for i in ids]

    per_slide = matrices(tmp_path / "slide", "slide")
    per_run = matrices(tmp_path / "run", "run")
    assert [s["source"] for s in per_run] == ["run", "run"]
    assert per_run[0]["stain_matrix"] == per_run[1]["stain_matrix"]
    assert "2 slide(s)" in per_run[0]["reason"]
    assert per_slide[0]["stain_matrix"] != per_slide[1]["stain_matrix"]
    # the default scope, "center": the slides of --center share the run's fit; unknown: per slide
    per_centre = matrices(tmp_path / "center", "center", center="A")
    assert [s["source"] for s in per_centre] == ["center", "center"]
    assert [s["stain_matrix"] for s in per_centre] == [s["stain_matrix"] for s in per_run]
    assert "centre A" in per_centre[0]["reason"]
    assert matrices(tmp_path / "none", "center") == per_slide


def test_stage_pools_stain_vectors_per_centre_and_goes_on_past_a_broken_slide(
    tmp_path: Path,
) -> None:
    # her2scope run's cells stage (stain_scope "center", the default): one stain fit per centre of
    # the manifest, whatever each slide's grade; a slide that cannot be read fails alone
    from her2scope.cells.stage import _score_slides
    from her2scope.cohort.manifest import load_manifest
    from her2scope.errors import Her2ScopeError
    from her2scope.synth import make_cohort

    root = tmp_path / "cohort"
    make_cohort(
        root, n_patients=4, n_centers=2, seed=7, slide_px=1024, labels=("0", "3+"), cells=True
    )
    df = load_manifest(root / "manifest.csv", "full").sort_values("slide_id")
    assert df.groupby("center")["label"].nunique().min() == 2  # a 0 and a 3+ slide per centre
    bad = root / "broken.tif"
    bad.write_bytes(b"not a slide")
    broken = df.iloc[[0]].assign(slide_id="broken", slide_path=str(bad))
    rows = pd.concat([df, broken], ignore_index=True)
    tiles = tmp_path / "tiles"  # no sidecars: per slide, each slide fits its own

    def stains(scope: str) -> dict[str, tuple[str, dict]]:
        res = _score_slides(rows, tmp_path / scope, tiles, CellConfig(stain_scope=scope), 1)
        assert isinstance(res[-1], Her2ScopeError) and "broken.tif" in str(res[-1])
        assert all(isinstance(r, dict) for r in res[:-1])
        return {
            r["slide_id"]: (c, r["stain"])
            for r, c in zip(res[:-1], rows["center"], strict=False)
            if isinstance(r, dict)
        }

    pooled = stains("center")
    for centre, group in df.groupby("center"):
        got = [pooled[s][1] for s in group["slide_id"]]
        assert {g["source"] for g in got} == {"center"}
        assert all(g["stain_matrix"] == got[0]["stain_matrix"] for g in got)
        left_out = 1 if centre == broken["center"].iloc[0] else 0
        n = len(group) + left_out
        assert f"centre {centre} " in got[0]["reason"]
        assert f"of {n - left_out} slide(s)" in got[0]["reason"]
    a, b = sorted(df["center"].unique())
    first = {c: pooled[df.loc[df["center"] == c, "slide_id"].iloc[0]][1] for c in (a, b)}
    assert first[a]["stain_matrix"] != first[b]["stain_matrix"]  # each centre its own assay
    per_slide = stains("slide")
    grp = df[df["center"] == a]["slide_id"]
    assert len({str(per_slide[s][1]["stain_matrix"]) for s in grp}) == len(grp)


def test_cli_calibration_file_sets_factor_and_noise_floor(tmp_path: Path) -> None:
    from her2scope.cli.cells import _fitted, build_config

    fit = tmp_path / "cells_fit.json"
    fit.write_text(
        json.dumps(
            {
                "centers": {
                    "A": {"dab_scale": 0.88, "noise_od": None},
                    "C": {"dab_scale": 3.93, "noise_od": 0.0386},
                }
            }
        )
    )
    assert _fitted(fit, "C") == (3.93, 0.0386)
    assert _fitted(fit, "A") == (0.88, None)
    with pytest.raises(ConfigError, match="no centre 'D'.*A, C"):
        _fitted(fit, "D")
    cfg = build_config(None, *_fitted(fit, "C")[:1], None, _fitted(fit, "C")[1])
    assert cfg.dab_scale == 3.93 and cfg.center_noise_od == 0.0386
    with pytest.raises(ConfigError, match="--noise-od -0.1: must be > 0"):
        build_config(None, None, None, -0.1)
    from her2scope.cli import main

    for extra in (
        ["--calibration", str(fit)],  # needs --center
        ["--calibration", str(fit), "--center", "C", "--dab-scale", "2"],
        ["--calibration", str(fit), "--center", "C", "--site-run", str(tmp_path)],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["cells", str(tmp_path / "x.tif"), "--out", str(tmp_path / "o"), *extra])
        assert exc.value.code == 2, extra

"""``her2scope predict`` on generated slides with a tiny trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.integration.tiny_pipeline import CLASSES, MODEL, TOY_COLOURS, train_tiny_run


def _slide(path: Path, label: str, px: int = 192, seed: int = 0) -> Path:
    from her2scope.slide.write import write_pyramidal_tiff

    rng = np.random.default_rng(seed)
    img = np.array(TOY_COLOURS[label], float) + rng.normal(0, 12, size=(px, px, 3))
    return write_pyramidal_tiff(path, np.clip(img, 0, 255).astype(np.uint8), mpp=0.5)


def _roi(path: Path, x1: int, y1: int) -> Path:
    ring = [[0, 0], [x1, 0], [x1, y1], [0, y1], [0, 0]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
            }
        ],
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("new_slides")
    out = {
        "S3": _slide(d / "S3.tif", "3+", seed=1),
        "S1": _slide(d / "S1.tif", "1+", seed=2),
        "S2": _slide(d / "S2.tif", "2+", seed=3),
    }
    (d / "rois").mkdir()
    _roi(d / "rois" / "S3.geojson", 128, 128)  # 4 tile centres of 64 px inside
    bad = d / "BROKEN.tif"
    bad.write_bytes(b"II*\x00 this is not a TIFF")
    out["BROKEN"] = bad
    return out


def test_predict_outputs(tiny_scoring_run: Path, slides: dict[str, Path], tmp_path: Path) -> None:
    from her2scope.scoring import score_slides

    out = tmp_path / "pred"
    rep = score_slides(
        [slides["S3"], slides["S1"], slides["S2"]],
        tiny_scoring_run,
        out,
        rois=slides["S3"].parent / "rois",
        force=True,  # flat toy colours fail the QC gates; this test is about the outputs
    )
    assert rep.ok, rep.failures
    s = rep.summary
    assert list(s["slide_id"]) == ["S3", "S1", "S2"]
    assert list(s["status"]) == ["ok"] * 3
    # the trained model separates the toy colours
    assert list(s["score"]) == ["3+", "1+", "2+"]
    assert list(s["n_tiles"]) == [4, 9, 9]  # ROI keeps 2×2 tiles; tissue keeps all 3×3
    assert list(s["reflex_fish"])[2]  # 2+ always goes to FISH
    assert rep.summary_path == out / "summary.csv"
    back = pd.read_csv(out / "summary.csv")
    assert len(back) == 3 and set(back["status"]) == {"ok"}

    doc = json.loads((out / "S3.her2scope.json").read_text())
    for key in (
        "score",
        "probabilities",
        "tile_percent",
        "n_tiles",
        "uncertainty",
        "reflex_fish",
        "provenance",
        "note",
    ):
        assert key in doc
    assert doc["score"] == "3+"
    assert list(doc["probabilities"]) == list(CLASSES)
    assert sum(doc["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(doc["tile_percent"].values()) == pytest.approx(100.0, abs=1e-3)
    assert doc["tile_percent"]["3+"] == pytest.approx(100.0)
    assert 0.0 <= doc["uncertainty"] <= 1.0
    assert set(doc["reflex_fish"]) == {"flag", "reason"}
    assert doc["reflex_fish"]["flag"] is (doc["uncertainty"] > 0.5)
    assert doc["provenance"]["model_name"] == MODEL
    assert doc["provenance"]["synthetic_training_data"] is True
    assert "not a medical device" in doc["note"]
    assert doc["roi_path"].endswith("S3.geojson")

    gj = json.loads((out / "S3.her2scope-tiles.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 4
    xs = sorted({f["geometry"]["coordinates"][0][0][0] for f in gj["features"]})
    assert xs == [0.0, 64.0]
    for f in gj["features"]:
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == "3+"
        assert len(props["classification"]["color"]) == 3
        assert set(props["measurements"]) >= {"prob_1+", "prob_2+", "prob_3+"}

    from PIL import Image

    for sid in ("S3", "S1", "S2"):
        with Image.open(out / f"{sid}.her2scope-heatmap.png") as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert not list(out.glob(".*.tmp*"))  # atomic writes left nothing behind


def test_one_failing_slide_does_not_stop_the_others(
    tiny_scoring_run: Path, slides: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from her2scope.cli import app

    out = tmp_path / "pred"
    args = [
        "predict",
        str(slides["S1"]),
        str(slides["BROKEN"]),
        str(slides["S2"]),
        "--run",
        str(tiny_scoring_run),
        "--out",
        str(out),
        "--force",  # flat toy colours fail the QC gates
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "1 slide(s) failed" in res.output
    assert "BROKEN.tif" in res.output
    s = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert list(s["slide_id"]) == ["S1", "BROKEN", "S2"]
    assert list(s["status"]) == ["ok", "failed", "ok"]
    assert s.loc[1, "error"] != "" and "BROKEN.tif" in s.loc[1, "error"]
    assert (out / "S1.her2scope.json").is_file() and (out / "S2.her2scope.json").is_file()
    assert not (out / "BROKEN.her2scope.json").exists()


def test_sharding_takes_every_nth_slide(
    tiny_scoring_run: Path, slides: dict[str, Path], tmp_path: Path
) -> None:
    from her2scope.scoring import score_slides

    paths = [slides["S3"], slides["S1"], slides["S2"]]
    seen = []
    for i in range(2):
        rep = score_slides(paths, tiny_scoring_run, tmp_path, shard=(i, 2))
        assert rep.summary_path.name == f"summary.shard-{i}-of-2.csv"
        seen.append(list(rep.summary["slide_id"]))
    assert seen == [["S3", "S2"], ["S1"]]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "S1.her2scope.json",
        "S2.her2scope.json",
        "S3.her2scope.json",
    ]


def test_bad_roi_argument_is_a_clear_error(
    tiny_scoring_run: Path, slides: dict[str, Path], tmp_path: Path
) -> None:
    from her2scope.errors import ConfigError
    from her2scope.scoring import score_slides

    roi = slides["S3"].parent / "rois" / "S3.geojson"
    with pytest.raises(ConfigError, match="one file but 2 slides"):
        score_slides([slides["S3"], slides["S1"]], tiny_scoring_run, tmp_path, rois=roi)
    with pytest.raises(ConfigError, match="unique"):
        score_slides([slides["S3"], slides["S3"]], tiny_scoring_run, tmp_path)


# ---- QC gates, calibration and provenance ---------------------------------------------------


@pytest.fixture(scope="module")
def qc_slides(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic IHC crop, and the same tissue made wrong in one way each."""
    from PIL import Image

    from her2scope.slide.reader import open_slide
    from her2scope.slide.write import write_pyramidal_tiff
    from her2scope.stain.qc import EOSIN_OD
    from tests.stain_images import render_cells as _render

    d = tmp_path_factory.mktemp("qc_slides")
    manifest = pd.read_csv(tiny_cohort)
    src = tiny_cohort.parent / manifest.loc[0, "slide_path"]
    with open_slide(src) as s:
        w, h = s.dimensions
        rgb = s.read_region(((w - 640) // 2, (h - 640) // 2), 0, (640, 640))
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    he = _render(EOSIN_OD, seed=5, px=640)
    return {
        "ihc": write_pyramidal_tiff(d / "ihc.tif", rgb, mpp=0.5),
        "coarse": write_pyramidal_tiff(d / "coarse.tif", rgb, mpp=1.0),
        "ycbcr": write_pyramidal_tiff(d / "ycbcr.tif", ycc, mpp=0.5),
        "he": write_pyramidal_tiff(d / "he.tif", he, mpp=0.5),
        "small": write_pyramidal_tiff(d / "small.tif", rgb[:128, :128].copy(), mpp=0.5),
    }


def _doc(out: Path, sid: str) -> dict:
    return json.loads((out / f"{sid}.her2scope.json").read_text())


def test_qc_gates_refuse_what_the_model_was_not_trained_on(
    tiny_scoring_run: Path, qc_slides: dict[str, Path], tmp_path: Path
) -> None:
    from her2scope.scoring import score_slides

    out = tmp_path / "pred"
    order = ["ihc", "coarse", "ycbcr", "he", "small"]
    rep = score_slides([qc_slides[k] for k in order], tiny_scoring_run, out)
    s = rep.summary.set_index("slide_id")
    assert rep.ok, rep.failures  # refusals are not errors
    assert s.loc["ihc", "status"] == "ok" and bool(s.loc["ihc", "qc_passed"])
    expected_failures = {
        # 1.0 µm/px slide, model trained on 0.5 µm/px tiles
        "coarse": {"resolution", "scan_resolution"},
        "ycbcr": {"background_neutral"},
        "small": {"tumour_tiles"},
    }
    for sid, checks in expected_failures.items():
        assert s.loc[sid, "status"] == "qc_failed"
        assert set(s.loc[sid, "qc_failed_checks"].split(";")) >= checks, s.loc[sid]
        assert pd.isna(s.loc[sid, "score"])
    he_failed = set(s.loc["he", "qc_failed_checks"].split(";"))
    assert s.loc["he", "status"] == "qc_failed" and he_failed & {
        "stain_third_stain",
        "stain_dab_angle",
        "stain_dab_vs_eosin_margin",
    }
    assert set(s.loc["coarse", "qc_failed_checks"].split(";")) == {"resolution", "scan_resolution"}

    ok = _doc(out, "ihc")
    assert ok["status"] == "ok" and ok["qc_passed"] is True and ok["qc_forced"] is False
    assert [c["check"] for c in ok["qc"]] == [
        "stain_hematoxylin_angle",
        "stain_dab_angle",
        "stain_dab_vs_eosin_margin",
        "stain_third_stain",
        "background_neutral",
        "resolution",
        "scan_resolution",
        "tumour_tiles",
        "stain_fit",
    ]
    assert all(set(c) == {"check", "value", "threshold", "passed", "detail"} for c in ok["qc"])
    assert ok["stain_fit"]["fitted"] is True and len(ok["stain_fit"]["stain_matrix"]) == 2
    prov = ok["provenance"]
    assert Path(prov["checkpoint"]).is_absolute() and Path(prov["checkpoint"]).is_file()
    assert prov["train_tile_mpp"] == pytest.approx(0.5)
    assert prov["calibration"]["temperature"] == 1.0  # this run has no calibration.json

    bad = _doc(out, "coarse")
    assert bad["status"] == "qc_failed" and bad["score"] is None
    assert "probabilities" not in bad
    res = next(c for c in bad["qc"] if c["check"] == "resolution")
    assert res["passed"] is False and res["value"] == pytest.approx(1.0)
    assert any("µm/px" in r for r in bad["qc_reasons"])
    assert not (out / "coarse.her2scope-heatmap.png").exists()


def test_force_scores_a_failed_slide_and_keeps_the_failed_checks(
    tiny_scoring_run: Path, qc_slides: dict[str, Path], tmp_path: Path
) -> None:
    from her2scope.scoring import score_slides

    rep = score_slides([qc_slides["coarse"]], tiny_scoring_run, tmp_path, force=True)
    row = rep.summary.iloc[0]
    assert row["status"] == "ok" and row["score"] in CLASSES
    assert not bool(row["qc_passed"]) and row["qc_failed_checks"] == "resolution;scan_resolution"
    doc = _doc(tmp_path, "coarse")
    assert doc["qc_forced"] is True and doc["qc_passed"] is False
    assert [c["check"] for c in doc["qc"] if not c["passed"]] == ["resolution", "scan_resolution"]


def test_qc_thresholds_come_from_the_run_config_and_qc_options(
    tiny_scoring_run: Path, qc_slides: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """The 'small' slide fails tumour_tiles at the default minimum; `--qc min_tiles=N` with N
    at most its tile count lets it through, the JSON shows the threshold used, and a bad
    setting is a clear error before any work."""
    from her2scope.cli import main

    small = qc_slides["small"]

    def args(out: Path, *extra: str) -> list[str]:
        return ["predict", str(small), "--run", str(tiny_scoring_run), "--out", str(out), *extra]

    first = tmp_path / "default"
    with pytest.raises(SystemExit):  # exit 0 raises SystemExit(0) under typer
        main(args(first))
    doc = _doc(first, "small")
    gate = next(c for c in doc["qc"] if c["check"] == "tumour_tiles")
    assert doc["status"] == "qc_failed" and gate["passed"] is False
    n_tiles = int(gate["value"])
    assert gate["threshold"] > n_tiles >= 1

    lowered = tmp_path / "lowered"
    with pytest.raises(SystemExit) as exc:
        main(args(lowered, "--qc", f"min_tiles={n_tiles}"))
    assert exc.value.code in (0, None)
    doc = _doc(lowered, "small")
    gate = next(c for c in doc["qc"] if c["check"] == "tumour_tiles")
    assert gate["passed"] is True and gate["threshold"] == n_tiles

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args(tmp_path / "x", "--qc", "min_tiles=0"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "min_tiles=0" in err and "Traceback" not in err
    assert not (tmp_path / "x" / "small.her2scope.json").exists()


def test_predict_with_cells_merges_the_cell_call_and_its_reconciliation(
    tiny_scoring_run: Path, qc_slides: dict[str, Path], tmp_path: Path
) -> None:
    """--cells: the slide JSON carries the cell-rule call of the same slide, reconciled with the
    CNN score of that JSON; the cell outputs sit beside it; the summary has both calls."""
    from her2scope.cells.fit import label_index
    from her2scope.scoring import score_slides

    out = tmp_path / "pred"
    rep = score_slides([qc_slides["ihc"]], tiny_scoring_run, out, cells=True)
    assert rep.ok, rep.failures
    doc = _doc(out, "ihc")
    cells = doc["cells"]
    assert cells["status"] == "ok" and cells["n_cells"] > 0, cells
    cell_doc = json.loads((out / "ihc.cells.json").read_text())
    assert cells["call"] == cell_doc["call"] and cells["score"] == cell_doc["score"]
    rec = cells["reconciliation"]
    assert rec["cnn_score"] == doc["score"] and rec["cell_call"] == cell_doc["call"]
    if rec["comparable"]:
        diff = label_index(cell_doc["score"]) - label_index(doc["score"])
        assert rec["grade_difference"] == diff and rec["review"] == (diff != 0)
    for name in cells["outputs"].values():
        assert (out / name).is_file(), name
    row = rep.summary.iloc[0]
    assert row["cell_score"] == cell_doc["score"] and row["score"] == doc["score"]


def test_predict_uses_the_runs_calibration_and_reflex_policy(
    tiny_scoring_run: Path, qc_slides: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from her2scope.scoring import score_slides

    run = tmp_path / "run"
    shutil.copytree(tiny_scoring_run, run)
    plain = score_slides([qc_slides["ihc"]], run, tmp_path / "plain").summary.iloc[0]
    cal = {
        "temperature": 3.0,
        "ece_before": 0.2,
        "ece_after": 0.05,
        "n_val_tiles": 10,
        "level": "tile",
        "policy": {"threshold": 0.0, "description": "test policy", "validation": {}},
    }
    (run / "calibration.json").write_text(json.dumps(cal))
    hot = score_slides([qc_slides["ihc"]], run, tmp_path / "hot").summary.iloc[0]
    # T = 3 flattens the probabilities: higher entropy, same arg-max
    assert hot["uncertainty"] > plain["uncertainty"]
    assert hot["score"] == plain["score"]
    assert bool(hot["reflex_fish"])  # threshold 0: every non-certain call is flagged
    doc = _doc(tmp_path / "hot", "ihc")
    assert doc["calibration"]["temperature"] == 3.0
    assert doc["reflex_policy"]["threshold"] == 0.0
    assert "0.000" in doc["reflex_fish"]["reason"]


# ---- resume, the inference record, stain normalisation on, the ONNX backend ------------------


def test_resume_skips_a_scored_slide_and_rescores_when_settings_differ(
    tiny_scoring_run: Path,
    qc_slides: dict[str, Path],
    tmp_path: Path,
    caplog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    import her2scope.engine.infer as infer
    from her2scope.scoring import score_slides
    from her2scope.scoring.qc import QCConfig

    # the default on a CPU without native bf16 (the guarded bf16 path has its own test)
    monkeypatch.setattr(infer, "cpu_bf16_native", lambda: False)

    out = tmp_path / "pred"
    first = score_slides([qc_slides["ihc"]], tiny_scoring_run, out)
    assert first.n_skipped == 0 and first.slides_per_hour is not None and first.slides_per_hour > 0
    doc = _doc(out, "ihc")
    inf = doc["inference"]
    assert (inf["backend"], inf["precision"], inf["channels_last"]) == ("torch", "fp32", True)
    assert inf["torch_version"] == torch.__version__ and inf["threads"] >= 1
    assert len(doc["settings_fingerprint"]) == 32
    assert first.summary.iloc[0]["inference"] == "torch/fp32/channels_last"

    stamp = (out / "ihc.her2scope.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="her2scope.scoring.score"):
        again = score_slides([qc_slides["ihc"]], tiny_scoring_run, out)
    assert again.n_skipped == 1 and again.slides_per_hour is None
    assert "already scored with these settings; skipped" in caplog.text
    assert (out / "ihc.her2scope.json").stat().st_mtime_ns == stamp  # not written again
    cols = ["slide_id", "status", "score", "n_tiles", "qc_passed", "inference"]
    pd.testing.assert_frame_equal(again.summary[cols], first.summary[cols])
    np.testing.assert_allclose(
        again.summary.filter(like="prob_").to_numpy(float),
        first.summary.filter(like="prob_").to_numpy(float),
        rtol=0,
        atol=1e-9,
    )

    # a setting that changes the result (a QC threshold) scores the slide again
    changed = score_slides([qc_slides["ihc"]], tiny_scoring_run, out, qc=QCConfig(min_tiles=1))
    assert changed.n_skipped == 0
    assert _doc(out, "ihc")["settings_fingerprint"] != doc["settings_fingerprint"]
    # a missing output is made again, and rescore=True always scores
    (out / "ihc.her2scope-heatmap.png").unlink()
    qc1 = QCConfig(min_tiles=1)
    assert score_slides([qc_slides["ihc"]], tiny_scoring_run, out, qc=qc1).n_skipped == 0
    assert (out / "ihc.her2scope-heatmap.png").is_file()
    assert score_slides([qc_slides["ihc"]], tiny_scoring_run, out, qc=qc1).n_skipped == 1
    forced = score_slides([qc_slides["ihc"]], tiny_scoring_run, out, qc=qc1, rescore=True)
    assert forced.n_skipped == 0
    assert list(pd.read_csv(out / "summary.csv")["slide_id"]) == ["ihc"]  # one row, kept


def test_predict_with_stain_normalisation_uses_the_slides_own_fit(
    tiny_scoring_run: Path, toy_tiles: Path, qc_slides: dict[str, Path], tmp_path: Path
) -> None:
    """stain.mode=preserve_dab: the tiles reach the model normalised with the slide's own fit
    (the probabilities equal predict_tiles with that normaliser, and differ from raw tiles)."""
    from her2scope.engine.checkpoint import load_run_model
    from her2scope.engine.infer import InferenceOptions
    from her2scope.engine.predict import predict_tiles
    from her2scope.scoring import score_slides
    from her2scope.stain.slides import fit_slide_stains
    from her2scope.tiling import tile_slide

    run = train_tiny_run(tmp_path / "norm_run", toy_tiles, stain_mode="preserve_dab")
    out = tmp_path / "pred"
    # fp32, as predict_tiles below (the default's bf16 on CPUs with it is tested on its own)
    rep = score_slides([qc_slides["ihc"]], run, out, inference=InferenceOptions(precision="fp32"))
    assert rep.ok, rep.failures
    doc = _doc(out, "ihc")
    assert doc["status"] == "ok", doc["qc_reasons"]
    assert doc["stain_fit"]["used_for_normalisation"] is True
    assert doc["provenance"]["stain_mode"] == "preserve_dab"

    model, meta = load_run_model(run)
    cfg = meta.config
    tiles, _ = tile_slide(qc_slides["ihc"], "ihc", cfg.tiling)
    fit = fit_slide_stains(
        tiles, "ihc", cfg.stain.mode, cfg.stain.reference, cfg.stain.fit_tiles, cfg.tiling.reader
    )
    normed = predict_tiles(model, meta, tiles, {"ihc": fit.normalizer}).mean(axis=0)
    raw = predict_tiles(model, meta, tiles, None).mean(axis=0)
    got = np.array([doc["probabilities"][c] for c in meta.classes])
    np.testing.assert_allclose(got, normed, rtol=0, atol=1e-5)  # T = 1: no calibration.json
    assert np.abs(raw - normed).max() > 1e-3  # normalisation changed the model's input


def test_onnx_export_and_predict_backend_onnx(
    tiny_scoring_run: Path, qc_slides: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    import shutil

    from typer.testing import CliRunner

    from her2scope.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_scoring_run, run)
    res = CliRunner().invoke(app, ["export", str(run), "--onnx"])
    assert res.exit_code == 0, res.output
    assert (run / "checkpoints" / "best.onnx").is_file()
    assert "max probability difference" in res.output

    def predict(out: Path, *extra: str) -> dict:
        args = ["predict", str(qc_slides["ihc"]), "--run", str(run), "--out", str(out), *extra]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        assert "slides/hour" in r.output
        return _doc(out, "ihc")

    ref = predict(tmp_path / "torch", "--precision", "fp32")  # fp32 vs fp32
    onx = predict(tmp_path / "onnx", "--backend", "onnx")
    assert onx["inference"]["backend"] == "onnx" and onx["inference"]["precision"] == "fp32"
    assert onx["inference"]["onnx_path"].endswith("best.onnx")
    assert onx["score"] == ref["score"]
    for c, p in ref["probabilities"].items():
        assert onx["probabilities"][c] == pytest.approx(p, abs=1e-5)
    assert onx["settings_fingerprint"] != ref["settings_fingerprint"]

    # export never replaces a file of the run, even through a link with an .onnx name
    link = run / "checkpoints" / "alias.onnx"
    link.symlink_to(run / "checkpoints" / "best.pt")
    before = (run / "checkpoints" / "best.pt").read_bytes()
    bad = CliRunner().invoke(app, ["export", str(run), "--onnx", "--out", str(link)])
    assert bad.exit_code != 0 and "would replace an input" in str(bad.exception or bad.output)
    assert (run / "checkpoints" / "best.pt").read_bytes() == before


def test_default_on_a_bf16_cpu_keeps_fp32_calls_by_rescoring_near_decisions(
    tiny_scoring_run: Path,
    qc_slides: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--precision auto`` on a CPU with native bf16: bf16, and a slide whose decisions are within
    the guard's tolerance is scored again in fp32 (then its probabilities are fp32's)."""
    import her2scope.engine.infer as infer
    import her2scope.scoring.guard as guard
    from her2scope.engine.infer import InferenceOptions
    from her2scope.scoring import score_slides

    slide = qc_slides["ihc"]
    fp32 = score_slides(
        [slide], tiny_scoring_run, tmp_path / "fp32", inference=InferenceOptions(precision="fp32")
    ).summary.iloc[0]
    monkeypatch.setattr(infer, "cpu_bf16_native", lambda: True)  # autocast bf16 runs on any CPU

    monkeypatch.setattr(guard, "GUARD_TOL", 1.0)  # every decision "near": always rescored
    always = score_slides([slide], tiny_scoring_run, tmp_path / "always").summary.iloc[0]
    doc = _doc(tmp_path / "always", "ihc")
    assert doc["inference"]["guard"]["rescored_in_fp32"] is True
    assert doc["inference"]["guard"]["reason"]
    assert doc["inference"]["precision"] == "fp32" and doc["inference"]["precision_asked"] == "bf16"
    assert always["inference"] == "torch/fp32/channels_last/guarded"
    assert always["score"] == fp32["score"] and always["reflex_fish"] == fp32["reflex_fish"]
    np.testing.assert_allclose(
        always.filter(like="prob_").to_numpy(float),
        fp32.filter(like="prob_").to_numpy(float),
        rtol=0,
        atol=1e-5,
    )

    monkeypatch.setattr(guard, "GUARD_TOL", 0.0)  # nothing is near: the bf16 call stands
    never = score_slides([slide], tiny_scoring_run, tmp_path / "never").summary.iloc[0]
    doc = _doc(tmp_path / "never", "ihc")
    assert doc["inference"]["guard"] == {"tolerance": 0.0, "rescored_in_fp32": False}
    assert doc["inference"]["precision"] == "bf16"
    assert never["inference"] == "torch/bf16/channels_last/guarded"
    diff = np.abs(
        never.filter(like="prob_").to_numpy(float) - fp32.filter(like="prob_").to_numpy(float)
    )
    assert diff.max() < 5e-2  # bf16: close to fp32, not equal

    monkeypatch.setattr(infer, "cpu_bf16_native", lambda: False)  # no native bf16: plain fp32
    plain = score_slides([slide], tiny_scoring_run, tmp_path / "plain").summary.iloc[0]
    assert plain["inference"] == "torch/fp32/channels_last"
    assert "guard" not in _doc(tmp_path / "plain", "ihc")["inference"]


def test_tiles_kept_from_the_tiling_pass_give_the_same_outputs_as_reading_them_again(
    tiny_scoring_run: Path,
    qc_slides: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decode once: with the tile cache the stain fit and the model read no tile from the slide
    again, and the slide's JSON (probabilities, stain fit, QC) equals a run that reads every tile
    again (``tile_cache_mb=0``), bit for bit."""
    from her2scope.engine.infer import InferenceOptions
    from her2scope.scoring import score_slides
    from her2scope.slide.reader import Slide

    reads: list[int] = []
    real = Slide.read_tile

    def counted(self: Slide, *a: object, **k: object) -> np.ndarray:
        reads.append(1)
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Slide, "read_tile", counted)
    slide, fp32 = qc_slides["ihc"], InferenceOptions(precision="fp32")
    docs = {}
    n_reads = {}
    for mb in (0, 64):
        reads.clear()
        rep = score_slides(
            [slide], tiny_scoring_run, tmp_path / f"c{mb}", inference=fp32, tile_cache_mb=mb
        )
        assert rep.ok, rep.failures
        n_reads[mb] = len(reads)
        docs[mb] = _doc(tmp_path / f"c{mb}", "ihc")
    n_tiles = docs[0]["n_tiles"]
    assert n_tiles > 0 and n_reads[0] >= n_tiles  # the model's pass read every tile again
    assert n_reads[64] == 0  # everything came from the tiling pass
    for key in ("probabilities", "tile_percent", "uncertainty", "stain_fit", "qc", "score"):
        assert docs[64][key] == docs[0][key], key

"""Evaluation end to end: results.json schema, absent classes, compare table, `her2scope evaluate`.

SYNTHETIC data only: none of the numbers here are clinical performance.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2scope._io import write_json
from her2scope.evaluate.bootstrap import paired_difference
from her2scope.evaluate.config import EvaluateConfig
from her2scope.evaluate.run import evaluate_predictions, level_tables, stats_for
from tests.integration.fake_runs import CLASSES, _fake_run, _predictions


def test_results_schema_and_counts(tmp_path: Path) -> None:
    pred = _predictions(["1+", "2+", "3+"] * 4, tiles_per_slide=3)
    cfg = EvaluateConfig(n_boot=300, seed=1)
    res = evaluate_predictions(pred, CLASSES, cfg)
    assert res["n"] == {"patients": 12, "slides": 24, "tiles": 72}
    assert res["classes_present"] == CLASSES and res["classes_absent"] == []
    assert res["bootstrap"] == {
        "unit": "patient",
        "n_boot": 300,
        "seed": 1,
        "ci": 0.95,
        "method": "percentile",
    }
    assert res["aggregation"]["rule"] == "mean"
    for level, n in (("tile", 72), ("slide", 24), ("patient", 12)):
        lv = res["levels"][level]
        assert lv["n"] == n
        for name in (
            "macro_auc",
            "accuracy",
            "balanced_accuracy",
            "macro_f1",
            "kappa_quadratic",
            "brier",
            "ece",
            "adjacent_error_rate",
            "nonadjacent_error_rate",
            *(f"{m}_{c}" for m in ("auc", "sensitivity", "specificity") for c in CLASSES),
        ):
            entry = lv[name]
            assert entry["value"] is not None, (level, name)
            lo, hi = entry["ci"]
            assert lo <= hi
        assert sum(map(sum, res["confusion_matrix"][level]["counts"])) == n
    # same resamples at every level, deterministic for a seed
    again = evaluate_predictions(pred, CLASSES, cfg)
    assert again["levels"] == res["levels"]
    write_json(tmp_path / "r.json", res)  # refuses NaN: must not raise


def test_absent_class_is_reported_not_averaged_away(tmp_path: Path) -> None:
    pred = _predictions(["1+", "3+"] * 5, tiles_per_slide=2)
    res = evaluate_predictions(pred, CLASSES, EvaluateConfig(n_boot=200))
    assert res["classes_present"] == ["1+", "3+"]
    assert res["classes_absent"] == ["2+"]
    for level in ("tile", "slide", "patient"):
        lv = res["levels"][level]
        assert lv["macro_auc"]["value"] is None and lv["macro_auc"]["ci"] is None
        assert (
            "2+" in lv["macro_auc"]["reason"] and "macro_auc_present" in lv["macro_auc"]["reason"]
        )
        assert lv["auc_2+"]["value"] is None and "absent" in lv["auc_2+"]["reason"]
        assert lv["balanced_accuracy"]["value"] is None
        assert lv["macro_auc_present"]["value"] is not None
    write_json(tmp_path / "r.json", res)
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["levels"]["patient"]["macro_auc"]["value"] is None


def test_bad_labels_are_named() -> None:
    pred = _predictions(["1+", "2+", "3+"])
    pred.loc[0, "label"] = "4+"
    with pytest.raises(ValueError, match="4\\+"):
        evaluate_predictions(pred, CLASSES, EvaluateConfig(n_boot=10))


def test_compare_runs_table(tmp_path: Path) -> None:
    from her2scope.evaluate.compare import compare_runs

    labels = ["1+", "2+", "3+"] * 6
    cfg = EvaluateConfig(n_boot=400, seed=3)
    good = _fake_run(tmp_path / "good", _predictions(labels, 3, sharp=3.0, seed=1), "alexnet", cfg)
    bad = _fake_run(tmp_path / "bad", _predictions(labels, 3, sharp=0.3, seed=2), "vgg16", cfg)
    table = compare_runs([bad, good], tmp_path / "cmp")
    assert list(table["model"]) == ["vgg16", "alexnet"]
    res_bad = json.loads((bad / "results.json").read_text())
    m = res_bad["levels"]["patient"]["macro_auc"]
    assert table.loc[0, "macro_auc"] == f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"
    assert table.loc[1, "delta_macro_auc_vs_best"] == "(reference)"
    # the paired difference equals a direct paired bootstrap on the patient tables
    patients = sorted(pd.read_parquet(good / "predictions.parquet")["patient_id"].unique())
    stats = [
        stats_for(
            level_tables(pd.read_parquet(r / "predictions.parquet"), CLASSES, cfg)["patient"],
            CLASSES,
            patients,
            10,
        )
        for r in (bad, good)
    ]
    d = paired_difference(stats[0], stats[1], n_boot=400, seed=3)
    assert table.loc[0, "delta_macro_auc_vs_best"].startswith(f"{d['difference']:+.3f} [")
    assert table.loc[0, "p_value"] == f"{d['p_value']:.3g}"
    csv = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert list(csv["model"]) == ["vgg16", "alexnet"]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| vgg16 |" in md and "not clinical performance" in md


def _linked_copy(run: Path, dest: Path) -> Path:
    """A writable run folder sharing the (large, read-only) checkpoints of ``run``."""
    dest.mkdir(parents=True)
    for f in run.iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    (dest / "checkpoints").symlink_to((run / "checkpoints").resolve(), target_is_directory=True)
    return dest


def test_evaluate_and_compare_cli_on_tiny_run(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from her2scope.cli import app

    run_a = _linked_copy(tiny_run, tmp_path / "runs" / "alexnet")
    run_b = _linked_copy(tiny_run, tmp_path / "runs" / "alexnet_majority")
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(run_a), "--n-boot", "200"])
    assert res.exit_code == 0, res.output
    assert "patient macro-AUC" in res.output
    assert "reflex threshold" in res.output and "tile ECE" in res.output
    res = runner.invoke(
        app, ["evaluate", str(run_b), "--n-boot", "200", "--aggregate", "majority", "--no-plots"]
    )
    assert res.exit_code == 0, res.output

    pred = pd.read_parquet(run_a / "predictions.parquet")
    assert list(pred.columns) == [
        "slide_id",
        "patient_id",
        "center",
        "label",
        "x",
        "y",
        "prob_1+",
        "prob_2+",
        "prob_3+",
    ]
    splits = pd.read_csv(tiny_run / "splits.csv", dtype=str)
    test_slides = set(splits.loc[splits["split"] == "test", "slide_id"])
    from her2scope.engine.checkpoint import load_checkpoint

    tiles = pd.read_parquet(
        Path(load_checkpoint(tiny_run / "checkpoints" / "best.pt")["tiles_dir"]) / "tiles.parquet"
    )
    assert len(pred) == int(tiles["slide_id"].astype(str).isin(test_slides).sum())
    assert set(pred["slide_id"]) == test_slides
    np.testing.assert_allclose(pred[["prob_1+", "prob_2+", "prob_3+"]].sum(axis=1), 1.0, atol=1e-5)

    results = json.loads((run_a / "results.json").read_text())
    assert results["split"] == "test" and results["synthetic"] is True
    assert results["n"]["tiles"] == len(pred)
    assert results["n"]["patients"] == pred["patient_id"].nunique()
    macro = results["levels"]["patient"]["macro_auc"]
    if len(results["classes_present"]) == 3:
        assert 0.0 <= macro["value"] <= 1.0
    else:
        assert macro["value"] is None and macro["reason"]
    assert sorted(p.name for p in (run_a / "plots").glob("*.png")) == sorted(
        f"{k}_{lv}.png"
        for k in ("roc", "confusion", "reliability")
        for lv in ("tile", "slide", "patient")
    )
    assert json.loads((run_b / "results.json").read_text())["aggregation"]["rule"] == "majority"
    # probabilities and reflex flags use the temperature and policy chosen on validation
    stored = json.loads((tiny_run / "calibration.json").read_text())
    cal = results["calibration"]
    assert cal["temperature"] == stored["temperature"]
    assert cal["reflex"]["threshold"] == stored["policy"]["threshold"]
    assert cal["reflex"]["n_slides"] == results["n"]["slides"]
    assert 0.0 <= cal["reflex"]["fraction_flagged"] <= 1.0
    assert cal["this_split"]["ece_tile_after"] is not None

    res = runner.invoke(app, ["evaluate", str(run_a), "--split", "nope"])
    assert res.exit_code != 0
    assert "--split 'nope': not allowed; choose one of train, val, test" in str(res.exception)

    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(run_a), str(run_b), "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["model"]) == ["alexnet", "alexnet_majority"]
    assert "| alexnet |" in res.output
    assert not math.isnan(float(table["n_patients"][0]))


def test_evaluate_cli_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from her2scope.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nope")])
    assert res.exit_code != 0
    assert "nope" in str(res.exception) or "nope" in res.output
    res = runner.invoke(app, ["compare", str(tmp_path), "--out", str(tmp_path / "c")])
    assert "has not been evaluated" in str(res.exception)


def test_calibration_summary_counts_flags_and_caught_miscalls() -> None:
    from her2scope.evaluate.calibration import Calibration, ReflexPolicy
    from her2scope.evaluate.run import calibration_summary

    slides = pd.DataFrame(
        {
            "label": ["1+", "3+", "2+", "3+"],
            "pred": ["1+", "1+", "2+", "3+"],
            "prob_1+": [0.95, 0.5, 0.1, 0.02],
            "prob_2+": [0.04, 0.3, 0.8, 0.03],
            "prob_3+": [0.01, 0.2, 0.1, 0.95],
        }
    )
    cal = Calibration(1.5, 0.3, 0.1, 40, ReflexPolicy(threshold=0.5, description="test"))
    out = calibration_summary(cal, 0.25, 0.12, slides, ["1+", "2+", "3+"])
    rf = out["reflex"]
    # slide 2 (uncertain 1+, really 3+) and slide 3 (2+) are flagged; the only mis-call is caught
    assert rf["fraction_flagged"] == 0.5 and rf["n_miscalls"] == 1 and rf["miscalls_caught"] == 1.0
    assert out["this_split"] == {"ece_tile_before": 0.25, "ece_tile_after": 0.12}
    assert out["validation"]["ece_tile_after"] == 0.1 and out["temperature"] == 1.5

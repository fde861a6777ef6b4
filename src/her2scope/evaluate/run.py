"""Evaluate a run: predict a split, aggregate tile → slide → patient, metrics with patient-bootstrap CIs.

``evaluate_run(run_dir)`` writes into the run directory:

- ``predictions.parquet``: one row per tile, ``slide_id, patient_id, center, label, x, y,
  prob_<class>...`` (classes in the label scheme's order; probabilities calibrated with the run's
  temperature, ``calibration.json``, as ``predict`` reports them);
- ``results.json`` (schema in docs/evaluation.md);
- ``plots/{roc,confusion,reliability}_{tile,slide,patient}.png``.

``evaluate_predictions(pred_df, classes, cfg)`` is the torch-free part: it computes the results
dictionary from a predictions table alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2scope.errors import ConfigError
from her2scope.evaluate.aggregate import aggregate, argmax_high, prob_columns
from her2scope.evaluate.bootstrap import bootstrap_metrics, patient_weights
from her2scope.evaluate.calibration import (
    Calibration,
    apply_temperature,
    ece,
    load_calibration,
    reflex_decision,
)
from her2scope.evaluate.config import EvaluateConfig
from her2scope.evaluate.metrics import (
    SufficientStats,
    classes_present,
    confusion_matrix,
    metric_names,
    point_metrics,
    sufficient_stats,
)
from her2scope.layout import RunLayout, TilesLayout

logger = logging.getLogger(__name__)

LEVELS: tuple[str, ...] = ("tile", "slide", "patient")
PREDICTION_COLUMNS: tuple[str, ...] = ("slide_id", "patient_id", "center", "label", "x", "y")
TIE_RULE = (
    "arg-max ties go to the higher grade; percent rule counts a grade reached by >= X % of tiles"
)


def level_tables(
    pred_df: pd.DataFrame, classes: Sequence[str], cfg: EvaluateConfig
) -> dict[str, pd.DataFrame]:
    """Tile, slide and patient tables, each with ``patient_id, label, prob_<class>..., pred``.

    Tiles are called by their arg-max (ties → higher grade); slides and patients by ``cfg.aggregate``
    over their tiles (patients pool all of their tiles). Raises ``ValueError`` naming missing
    columns, or labels that are not in ``classes``.
    """
    classes = list(classes)
    pcols = prob_columns(classes)
    missing = [c for c in ("slide_id", "patient_id", "label", *pcols) if c not in pred_df.columns]
    if missing:
        raise ValueError(f"predictions table lacks column(s) {missing}")
    if pred_df.empty:
        raise ValueError("predictions table has no rows")
    bad = sorted(set(pred_df["label"].astype(str)) - set(classes))
    if bad:
        raise ValueError(
            f"label(s) {bad} are not classes of this run ({', '.join(classes)}); "
            "check the label scheme"
        )
    tiles = pred_df.copy()
    tiles["label"] = tiles["label"].astype(str)
    tiles["pred"] = [classes[i] for i in argmax_high(tiles[pcols].to_numpy(np.float64), axis=1)]
    tables = {"tile": tiles}
    for level, key in (("slide", "slide_id"), ("patient", "patient_id")):
        tables[level] = aggregate(
            tiles, key, cfg.aggregate, classes, percent_threshold=cfg.percent_threshold
        )
    return tables


def stats_for(
    table: pd.DataFrame, classes: Sequence[str], patients: Sequence[str], n_bins: int
) -> SufficientStats:
    """Sufficient statistics of one level table; ``patients`` fixes the patient index order."""
    classes = list(classes)
    index = {p: i for i, p in enumerate(patients)}
    unit = table["patient_id"].map(index)
    if unit.isna().any():
        raise ValueError("table has patients outside the given patient list")
    return sufficient_stats(
        table["label"].map(classes.index).to_numpy(),
        table[prob_columns(classes)].to_numpy(np.float64),
        table["pred"].map(classes.index).to_numpy(),
        unit.to_numpy(np.int64),
        classes,
        n_bins=n_bins,
    )


def _reason(name: str, classes: Sequence[str], present: list[str], level: str) -> str:
    absent = [c for c in classes if c not in present]
    for prefix in ("auc", "sensitivity", "specificity", "ppv", "npv"):
        if name.startswith(prefix + "_"):
            c = name[len(prefix) + 1 :]
            if c not in present and prefix in ("auc", "sensitivity"):
                return f"class {c} is absent from the {level}-level set"
            if prefix == "auc" and present == [c]:
                return f"every {level} is class {c}: no negatives"
            if prefix == "ppv":
                return f"class {c} is never called at {level} level"
            return f"zero denominator at {level} level"
    if absent and name in ("macro_auc", "balanced_accuracy", "macro_f1"):
        extra = "; see macro_auc_present" if name == "macro_auc" else ""
        return (
            f"class(es) {', '.join(absent)} absent from the {level}-level set; a macro average "
            f"over fewer classes is not reported under this name{extra}"
        )
    return f"undefined on the {level}-level set (zero denominator)"


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate_predictions(
    pred_df: pd.DataFrame,
    classes: Sequence[str],
    cfg: EvaluateConfig | None = None,
    tables: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Metrics at tile, slide and patient level with patient-bootstrap CIs (JSON-ready, no NaN).

    ``pred_df`` has the ``predictions.parquet`` columns. ``results["levels"][level][metric]`` is
    ``{"value": v, "ci": [lo, hi]}`` (``None`` plus a ``reason`` when undefined; ``n_valid`` when
    some resamples left it undefined). The same patient resamples are used at every level.
    """
    cfg = cfg or EvaluateConfig()
    if cfg.n_boot < 1 or not 0.0 < cfg.ci < 1.0:
        raise ConfigError(f"evaluate.n_boot must be >= 1 and evaluate.ci in (0, 1); got {cfg}")
    classes = list(classes)
    tables = tables or level_tables(pred_df, classes, cfg)
    patients = sorted(tables["tile"]["patient_id"].astype(str).unique())
    for t in tables.values():
        t["patient_id"] = t["patient_id"].astype(str)
    weights = patient_weights(len(patients), cfg.n_boot, cfg.seed)
    names = metric_names(classes)

    levels: dict[str, Any] = {}
    confusion: dict[str, Any] = {}
    present_by_level: dict[str, list[str]] = {}
    for level in LEVELS:
        stats = stats_for(tables[level], classes, patients, cfg.ece_bins)
        point = point_metrics(stats)
        cis = bootstrap_metrics(stats, weights, cfg.ci)
        present = classes_present(stats)
        present_by_level[level] = present
        out: dict[str, Any] = {"n": len(tables[level]), "classes_present": present}
        for name in names:
            value = _finite(point[name])
            lo, hi, n_valid = cis[name]
            entry: dict[str, Any] = {"value": value}
            if value is None:
                entry["ci"] = None
                entry["reason"] = _reason(name, classes, present, level)
            else:
                entry["ci"] = [_finite(lo), _finite(hi)] if n_valid else None
                if n_valid < cfg.n_boot:
                    entry["n_valid"] = n_valid
            out[name] = entry
        levels[level] = out
        confusion[level] = {
            "rows": "true class",
            "columns": "called class",
            "classes": classes,
            "counts": confusion_matrix(stats).tolist(),
        }
    tile_present = present_by_level["tile"]
    return {
        "classes": classes,
        "classes_present": tile_present,
        "classes_absent": [c for c in classes if c not in tile_present],
        "n": {
            "patients": len(patients),
            "slides": int(tables["slide"].shape[0]),
            "tiles": int(tables["tile"].shape[0]),
        },
        "aggregation": {
            "rule": cfg.aggregate,
            "percent_threshold": cfg.percent_threshold,
            "patient": "all tiles of the patient pooled",
            "ties": TIE_RULE,
        },
        "bootstrap": {
            "unit": "patient",
            "n_boot": cfg.n_boot,
            "seed": cfg.seed,
            "ci": cfg.ci,
            "method": "percentile",
        },
        "ece_bins": cfg.ece_bins,
        "levels": levels,
        "confusion_matrix": confusion,
    }


def calibration_summary(
    cal: Calibration,
    ece_raw: float,
    ece_calibrated: float,
    slides: pd.DataFrame,
    classes: Sequence[str],
) -> dict[str, Any]:
    """The ``calibration`` object of results.json: temperature, ECE, the reflex policy on this split.

    ``slides`` is the slide-level table (calibrated probabilities, ``label``, ``pred``). The reflex
    flag is the run's stored policy (:func:`~her2scope.evaluate.calibration.reflex_decision`);
    ``miscalls_caught`` is the share of mis-called slides that the flag sends to ISH.
    """
    flags = [
        bool(reflex_decision({c: float(r[f"prob_{c}"]) for c in classes}, str(r["pred"]),
                             cal.policy)["flag"])
        for _, r in slides.iterrows()
    ]  # fmt: skip
    flagged = np.array(flags, dtype=bool)
    wrong = (slides["pred"].astype(str) != slides["label"].astype(str)).to_numpy()
    return {
        "method": "temperature scaling fitted on the validation tiles"
        if cal.level != "none"
        else "none: the run has no calibration.json (T = 1)",
        "temperature": cal.temperature,
        "note": cal.note,
        "validation": {
            "ece_tile_before": cal.ece_before,
            "ece_tile_after": cal.ece_after,
            "n_tiles": cal.n_val_tiles,
        },
        "this_split": {
            "ece_tile_before": _finite(ece_raw),
            "ece_tile_after": _finite(ece_calibrated),
        },
        "reflex": {
            "policy": cal.policy.description,
            "threshold": cal.policy.threshold,
            "target_catch": cal.policy.target_catch,
            "max_flag_frac": cal.policy.max_flag_frac,
            "validation": cal.policy.validation,
            "n_slides": len(slides),
            "fraction_flagged": float(flagged.mean()) if len(flagged) else None,
            "n_miscalls": int(wrong.sum()),
            "miscalls_caught": float((flagged & wrong).sum() / wrong.sum())
            if wrong.any()
            else None,
        },
    }


def _split_tiles(
    run_dir: Path, tiles_dir: Path, split: str, classes: Sequence[str], scheme: str
) -> pd.DataFrame:
    from her2scope.cohort.splits import read_splits
    from her2scope.labels import get_scheme

    tiles_path = TilesLayout(tiles_dir).table
    if not tiles_path.is_file():
        raise ConfigError(f"run '{run_dir}': its tile table '{tiles_path}' is missing")
    splits = read_splits(RunLayout(run_dir).splits)
    known = sorted(set(splits["split"].str.strip()))
    chosen = splits[splits["split"].str.strip() == split]
    if chosen.empty:
        raise ConfigError(
            f"run '{run_dir}': split '{split}' has no slides in splits.csv (splits: {', '.join(known)})"
        )
    from her2scope._io import read_parquet

    tiles = read_parquet(tiles_path)  # a damaged table: a clear error naming it
    tiles["slide_id"] = tiles["slide_id"].astype(str)
    tiles = tiles[tiles["slide_id"].isin(set(chosen["slide_id"]))].reset_index(drop=True)
    if tiles.empty:
        raise ConfigError(f"run '{run_dir}': no tiles of the '{split}' split in '{tiles_path}'")
    # the run's splits.csv is the labelled view the model was trained against
    for col in ("patient_id", "center", "label"):
        if col in chosen.columns:
            tiles[col] = tiles["slide_id"].map(
                dict(zip(chosen["slide_id"], chosen[col], strict=True))
            )
    lab_scheme = get_scheme(scheme)
    raw = tiles["label"]
    tiles["label"] = raw.map(lab_scheme.class_of)
    bad = sorted(set(raw[tiles["label"].isna()].astype(str)))
    if bad:
        raise ConfigError(f"run '{run_dir}': label(s) {bad} are not in the '{scheme}' scheme")
    if list(lab_scheme.classes) != list(classes):
        raise ConfigError(
            f"run '{run_dir}': scheme classes {lab_scheme.classes} != model classes {classes}"
        )
    return tiles


def evaluate_run(
    run_dir: str | Path, split: str = "test", cfg: EvaluateConfig | None = None
) -> dict[str, Any]:
    """Predict ``split`` with the run's best checkpoint and write predictions, results.json, plots.

    Returns the results dictionary. Raises ``ConfigError`` when the run, its tile table or the
    split is missing.
    """
    from her2scope._io import write_json, write_with
    from her2scope.engine.checkpoint import load_run_model
    from her2scope.engine.predict import predict_tiles
    from her2scope.stain import load_normalizers

    cfg = cfg or EvaluateConfig()
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory '{run_dir}' does not exist")
    model, meta = load_run_model(run_dir, "best")
    classes = list(meta.classes)
    tiles_dir = Path(meta.tiles_dir)
    tiles = _split_tiles(run_dir, tiles_dir, split, classes, meta.config.cohort.label_scheme)
    normalizers = load_normalizers(tiles_dir, meta.config.stain)  # {} when stain.mode is none
    logger.info("predicting %d tiles of split '%s' with %s", len(tiles), split, meta.model_name)
    raw = predict_tiles(model, meta, tiles, normalizers, batch_size=cfg.batch_size)
    cal = load_calibration(run_dir, meta.config.evaluate.reflex_uncertainty)
    probs = apply_temperature(raw, cal.temperature)  # what predict reports for a new slide

    pred = tiles[[c for c in PREDICTION_COLUMNS if c in tiles.columns]].copy()
    for j, col in enumerate(prob_columns(classes)):
        pred[col] = probs[:, j].astype(np.float64)
    write_with(layout.predictions, lambda p: pred.to_parquet(p, index=False))

    tables = level_tables(pred, classes, cfg)
    results = evaluate_predictions(pred, classes, cfg, tables=tables)
    y_tile = tables["tile"]["label"].map(classes.index).to_numpy()
    results["calibration"] = calibration_summary(
        cal, ece(y_tile, raw, classes, cfg.ece_bins), ece(y_tile, probs, classes, cfg.ece_bins),
        tables["slide"], classes,
    )  # fmt: skip
    results = {
        "run": str(run_dir.resolve()),
        "model_name": meta.model_name,
        "checkpoint": "best",
        "epoch": int(getattr(meta, "epoch", 0)),
        "split": split,
        "synthetic": bool(getattr(meta.config, "synthetic", False)),
        **results,
    }
    if cfg.plots:
        from her2scope.evaluate.plots import write_plots

        results["plots"] = write_plots(tables, classes, layout.plots_dir, cfg.ece_bins)
    write_json(layout.results, results)
    return results

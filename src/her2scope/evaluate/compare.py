"""Compare evaluated runs: one row per model, and a paired patient bootstrap against the best one.

``compare_runs(run_dirs, out_dir)`` reads each run's ``results.json`` and ``predictions.parquet``
(written by ``evaluate_run``) and writes ``comparison.csv`` and ``comparison.md``. The paired
comparison uses the patients the runs share (each run re-aggregated with the rule it was evaluated
with) and resamples those patients once for both models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from her2scope.errors import ConfigError
from her2scope.evaluate.bootstrap import paired_difference
from her2scope.evaluate.config import EvaluateConfig
from her2scope.evaluate.run import level_tables, stats_for
from her2scope.layout import RunLayout, comparison_paths

logger = logging.getLogger(__name__)


def _fmt(entry: Any) -> str:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci")
    if ci and ci[0] is not None and ci[1] is not None:
        return f"{entry['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{entry['value']:.3f}"


def _load(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    run = RunLayout(run_dir)
    if not run.results.is_file() or not run.predictions.is_file():
        raise ConfigError(
            f"run '{run_dir}' has not been evaluated (no {run.results.name} / "
            f"{run.predictions.name}); run `her2scope evaluate {run_dir}` first"
        )
    try:
        res = json.loads(run.results.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"'{run.results}' is not valid JSON ({exc}); re-run evaluate") from None
    return res, pd.read_parquet(run.predictions)


def _names(run_dirs: list[Path], results: list[dict[str, Any]]) -> list[str]:
    names = [str(r.get("model_name") or d.name) for d, r in zip(run_dirs, results, strict=True)]
    if len(set(names)) < len(names):  # two runs of one model: use the folder names
        names = [d.name if names.count(n) > 1 else n for d, n in zip(run_dirs, names, strict=True)]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    return names


def summary_row(
    name: str, res: dict[str, Any], classes: Sequence[str], level: str
) -> dict[str, Any]:
    """One model's row: its own point estimates with CIs at ``level`` (from results.json)."""
    lv = res["levels"][level]
    row: dict[str, Any] = {"model": name, "n_patients": res["n"]["patients"]}
    if level != "patient":
        row[f"n_{level}s"] = lv.get("n")
    row["macro_auc"] = _fmt(lv["macro_auc"])
    row.update({f"auc_{c}": _fmt(lv[f"auc_{c}"]) for c in classes})
    for m in ("accuracy", "macro_f1", "kappa_quadratic"):
        row[m] = _fmt(lv[m])
    return row


def paired_against_best(
    results: Sequence[dict[str, Any]],
    preds: Sequence[pd.DataFrame],
    classes: Sequence[str],
    level: str,
    shared: list[str],
    n_boot: int,
    seed: int,
) -> list[dict[str, str]]:
    """``delta_macro_auc_vs_best`` and ``p_value`` per run: a paired patient bootstrap of each run
    against the one with the highest macro-AUC, on the ``shared`` patients (each run
    re-aggregated with the rule it was evaluated with; one set of resamples for both runs)."""
    values = [r["levels"][level]["macro_auc"]["value"] for r in results]
    best = max(range(len(values)), key=lambda i: -1.0 if values[i] is None else values[i])
    stats = []
    for res, pred in zip(results, preds, strict=True):
        agg = res.get("aggregation", {})
        cfg = EvaluateConfig(
            aggregate=agg.get("rule", "mean"),
            percent_threshold=float(agg.get("percent_threshold", 10.0)),
        )
        pred = pred[pred["patient_id"].astype(str).isin(shared)].copy()
        pred["patient_id"] = pred["patient_id"].astype(str)
        table = level_tables(pred, classes, cfg)[level]
        stats.append(stats_for(table, classes, shared, int(res.get("ece_bins", 10))))
    out = []
    for i in range(len(results)):
        if i == best:
            out.append({"delta_macro_auc_vs_best": "(reference)", "p_value": ""})
            continue
        d = paired_difference(stats[i], stats[best], "macro_auc", n_boot=n_boot, seed=seed)
        if d["n_valid"] == 0 or d["difference"] != d["difference"]:
            out.append({"delta_macro_auc_vs_best": "n/a", "p_value": ""})
        else:
            lo, hi = d["ci"]
            out.append(
                {
                    "delta_macro_auc_vs_best": f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                    "p_value": f"{d['p_value']:.3g}",
                }
            )
    return out


def compare_runs(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    level: str = "patient",
    n_boot: int | None = None,
    seed: int | None = None,
) -> pd.DataFrame:
    """Write ``comparison.csv`` / ``comparison.md`` for evaluated runs and return the table.

    Columns: model, n patients, macro-AUC with CI, per-class AUC, accuracy, macro-F1, quadratic
    kappa (all at ``level``), and the paired bootstrap difference of macro-AUC against the run with
    the highest macro-AUC (CI and two-sided p-value). ``n_boot``/``seed`` default to the first run's
    bootstrap settings. Runs sharing no patients (leave-one-centre-out folds) are listed without
    the paired columns. Raises ``ConfigError`` for an unevaluated run or runs with different
    classes.
    """
    if level not in ("tile", "slide", "patient"):
        raise ConfigError(f"level must be tile, slide or patient, not '{level}'")
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ConfigError("compare needs at least one run directory")
    loaded = [_load(d) for d in dirs]
    results = [r for r, _ in loaded]
    preds = [p for _, p in loaded]
    classes = list(results[0]["classes"])
    for d, r in zip(dirs, results, strict=True):
        if list(r["classes"]) != classes:
            raise ConfigError(f"run '{d}' has classes {r['classes']}, the first run {classes}")
    boot = results[0].get("bootstrap", {})
    n_boot = int(n_boot if n_boot is not None else boot.get("n_boot", 1000))
    seed = int(seed if seed is not None else boot.get("seed", 0))

    names = _names(dirs, results)
    rows = [summary_row(n, r, classes, level) for n, r in zip(names, results, strict=True)]
    # runs on disjoint test sets (leave-one-centre-out folds: one row per held-out centre) are
    # listed with their own CIs and not paired
    shared = sorted(set.intersection(*(set(p["patient_id"].astype(str)) for p in preds)))
    any_auc = any(r["levels"][level]["macro_auc"]["value"] is not None for r in results)
    paired = len(dirs) > 1 and bool(shared) and any_auc
    if paired:
        deltas = paired_against_best(results, preds, classes, level, shared, n_boot, seed)
        for row, delta in zip(rows, deltas, strict=True):
            row.update(delta)
    table = pd.DataFrame(rows)
    notes = [
        f"Values: point estimate [{int(100 * boot.get('ci', 0.95))} % CI, bootstrap over patients, "
        f"{n_boot} resamples, seed {seed}]."
    ]
    if len(dirs) > 1 and not shared:
        notes.append(
            "The runs share no patients (e.g. leave-one-centre-out folds): each row is its own "
            "test set, with its own CIs; no paired comparison."
        )
    if paired:
        notes.append(
            f"Δ macro-AUC: paired patient bootstrap against the best run on the {len(shared)} "
            "shared patients; p: two-sided bootstrap p-value."
        )
    if any(r.get("synthetic") for r in results):
        notes += ["", "**Synthetic cohort: these numbers are not clinical performance.**"]
    title = f"# Model comparison ({level} level, split '{results[0].get('split', '?')}')"
    write_comparison(table, Path(out_dir), title, notes)
    return table


def write_comparison(table: pd.DataFrame, out_dir: Path, title: str, notes: Sequence[str]) -> None:
    """``comparison.csv`` (the table) and ``comparison.md`` (title, table, notes) in ``out_dir``."""
    from her2scope._io import write_text, write_with

    csv_path, md_path = comparison_paths(out_dir)
    write_with(csv_path, lambda p: table.to_csv(p, index=False))
    write_text(md_path, "\n".join([title, "", _markdown(table), "", *notes]) + "\n")


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(out)

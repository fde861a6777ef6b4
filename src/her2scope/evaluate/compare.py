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

logger = logging.getLogger(__name__)


def _fmt(entry: Any) -> str:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci")
    if ci and ci[0] is not None and ci[1] is not None:
        return f"{entry['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{entry['value']:.3f}"


def _load(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    res_path, pred_path = run_dir / "results.json", run_dir / "predictions.parquet"
    if not res_path.is_file() or not pred_path.is_file():
        raise ConfigError(
            f"run '{run_dir}' has not been evaluated (no results.json / predictions.parquet); "
            f"run `her2scope evaluate {run_dir}` first"
        )
    try:
        res = json.loads(res_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"'{res_path}' is not valid JSON ({exc}); re-run evaluate") from None
    return res, pd.read_parquet(pred_path)


def _names(run_dirs: list[Path], results: list[dict[str, Any]]) -> list[str]:
    names = [str(r.get("model_name") or d.name) for d, r in zip(run_dirs, results, strict=True)]
    if len(set(names)) < len(names):  # two runs of one model: use the folder names
        names = [d.name if names.count(n) > 1 else n for d, n in zip(run_dirs, names, strict=True)]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    return names


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
    from her2scope._io import write_text, write_with

    if level not in ("tile", "slide", "patient"):
        raise ConfigError(f"level must be tile, slide or patient, not '{level}'")
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ConfigError("compare needs at least one run directory")
    loaded = [_load(d) for d in dirs]
    results = [r for r, _ in loaded]
    classes = list(results[0]["classes"])
    for d, r in zip(dirs, results, strict=True):
        if list(r["classes"]) != classes:
            raise ConfigError(f"run '{d}' has classes {r['classes']}, the first run {classes}")
    names = _names(dirs, results)
    boot = results[0].get("bootstrap", {})
    n_boot = int(n_boot if n_boot is not None else boot.get("n_boot", 1000))
    seed = int(seed if seed is not None else boot.get("seed", 0))

    rows = []
    for name, res in zip(names, results, strict=True):
        lv = res["levels"][level]
        row: dict[str, Any] = {"model": name, "n_patients": res["n"]["patients"]}
        if level != "patient":
            row[f"n_{level}s"] = lv.get("n")
        row["macro_auc"] = _fmt(lv["macro_auc"])
        row.update({f"auc_{c}": _fmt(lv[f"auc_{c}"]) for c in classes})
        for m in ("accuracy", "macro_f1", "kappa_quadratic"):
            row[m] = _fmt(lv[m])
        row["_macro_auc_value"] = lv["macro_auc"]["value"]
        rows.append(row)

    # paired bootstrap of macro-AUC against the best run, on shared patients
    values = [r["_macro_auc_value"] for r in rows]
    shared = sorted(set.intersection(*(set(p["patient_id"].astype(str)) for _, p in loaded)))
    # runs on disjoint test sets (leave-one-centre-out folds: one row per held-out centre) are
    # listed with their own CIs and not paired
    if len(dirs) > 1 and shared and any(v is not None for v in values):
        best = max(range(len(values)), key=lambda i: -1.0 if values[i] is None else values[i])
        stats = []
        for res, (_, pred) in zip(results, loaded, strict=True):
            agg = res.get("aggregation", {})
            cfg = EvaluateConfig(
                aggregate=agg.get("rule", "mean"),
                percent_threshold=float(agg.get("percent_threshold", 10.0)),
            )
            pred = pred[pred["patient_id"].astype(str).isin(shared)].copy()
            pred["patient_id"] = pred["patient_id"].astype(str)
            table = level_tables(pred, classes, cfg)[level]
            stats.append(stats_for(table, classes, shared, int(res.get("ece_bins", 10))))
        for i, row in enumerate(rows):
            if i == best:
                row["delta_macro_auc_vs_best"] = "(reference)"
                row["p_value"] = ""
                continue
            d = paired_difference(stats[i], stats[best], "macro_auc", n_boot=n_boot, seed=seed)
            if d["n_valid"] == 0 or d["difference"] != d["difference"]:
                row["delta_macro_auc_vs_best"] = "n/a"
                row["p_value"] = ""
            else:
                lo, hi = d["ci"]
                row["delta_macro_auc_vs_best"] = f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                row["p_value"] = f"{d['p_value']:.3g}"
        n_shared = len(shared)
    else:
        n_shared = None
    table = pd.DataFrame(rows).drop(columns="_macro_auc_value")

    out = Path(out_dir)
    write_with(out / "comparison.csv", lambda p: table.to_csv(p, index=False))
    synthetic = any(r.get("synthetic") for r in results)
    lines = [
        f"# Model comparison ({level} level, split '{results[0].get('split', '?')}')",
        "",
        _markdown(table),
        "",
        f"Values: point estimate [{int(100 * boot.get('ci', 0.95))} % CI, bootstrap over patients, "
        f"{n_boot} resamples, seed {seed}].",
    ]
    if len(dirs) > 1 and not shared:
        lines.append(
            "The runs share no patients (e.g. leave-one-centre-out folds): each row is its own "
            "test set, with its own CIs; no paired comparison."
        )
    if n_shared is not None:
        lines.append(
            f"Δ macro-AUC: paired patient bootstrap against the best run on the {n_shared} "
            "shared patients; p: two-sided bootstrap p-value."
        )
    if synthetic:
        lines.append("")
        lines.append("**Synthetic cohort: these numbers are not clinical performance.**")
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
    return table


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(out)

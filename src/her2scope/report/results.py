"""Report section on the results: the model comparison, then per run its metrics by level,
calibration and reflex policy, initial weights and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from her2scope.config import RunConfig
from her2scope.layout import OutLayout, RunLayout
from her2scope.report._markup import (
    esc,
    figure,
    figures,
    fmt,
    is_metric,
    metric_cell,
    missing,
    read_json,
    table,
)

#: Metrics shown in the study-style tables, in this order (others follow alphabetically).
MAIN_METRICS = (
    "macro_auc",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "kappa_quadratic",
    "kappa",
    "adjacent_error_rate",
    "nonadjacent_error_rate",
    "brier",
    "ece",
)


def results_section(out: OutLayout, cfg: RunConfig) -> str:
    parts = ["<h2 id='results'>Results</h2>"]
    centres = ", ".join(cfg.cohort.test_centers) if cfg.cohort.test_centers else "—"
    parts.append(
        f"<p>Evaluated on split <b>{esc(cfg.evaluate.split)}</b> (external centre(s): "
        f"{esc(centres)}); {cfg.evaluate.ci:.0%} confidence intervals from "
        f"{cfg.evaluate.n_boot} bootstrap resamples of <b>patients</b>; slide/patient scores by "
        f"the <b>{esc(cfg.evaluate.aggregate)}</b> rule.</p>"
    )
    parts.append(_comparison_html(out.comparison_csv))
    runs = out.runs(cfg.train.models)
    if not runs:
        parts.append(missing("trained runs (runs/<model>/)", "the train stage writes them"))
    for run in runs:
        parts.append(f"<h3>{esc(run.name)}</h3>")
        parts.append(_run_results_html(run))
    return "".join(parts)


def _comparison_html(path: Path) -> str:
    if not path.is_file():
        return missing("model comparison (compare/comparison.csv)", "the compare stage writes it")
    try:
        import pandas as pd

        comp = pd.read_csv(path)
    except Exception as exc:
        return missing(f"comparison table ({exc})", "re-run with --force compare")
    rows = [[fmt(v) for v in row] for row in comp.itertuples(index=False)]
    return "<h3>Model comparison</h3>" + table(list(comp.columns), rows)


def _run_results_html(run: RunLayout) -> str:
    parts = []
    res = read_json(run.results)
    if not isinstance(res, dict) or not isinstance(res.get("levels"), dict):
        parts.append(
            missing(f"results of {run.name} (results.json)", "the evaluate stage writes it")
        )
    else:
        parts.append(levels_table(res))
        parts.append(calibration_html(res.get("calibration")))
        parts.append(weights_html(run))
        present = res.get("classes_present")
        if present is not None:
            parts.append(
                f"<p class='note'>Classes present: {esc(', '.join(map(str, present)))}</p>"
            )
    plots = ordered_plots(run.plots_dir)
    if plots:
        parts.append(
            figures(figure(p, f"{run.name}: {p.stem.replace('_', ' ')}", 370) for p in plots)
        )
    else:
        parts.append(missing(f"ROC / confusion / calibration plots of {run.name}", "run evaluate"))
    return "".join(parts)


def calibration_html(cal: Any) -> str:
    """ECE before/after temperature scaling and the reflex policy with its test-split outcome."""
    if not isinstance(cal, dict):
        return missing(
            "calibration and reflex policy (results.json 'calibration')", "re-run evaluate"
        )
    val = cal.get("validation") or {}
    here = cal.get("this_split") or {}
    rf = cal.get("reflex") or {}
    rows = [
        ["temperature T", fmt(cal.get("temperature")),
         " ".join(x for x in (cal.get("method", ""), cal.get("note", "")) if x)],
        ["ECE, validation tiles (before → after)",
         f"{fmt(val.get('ece_tile_before'))} → {fmt(val.get('ece_tile_after'))}",
         f"{val.get('n_tiles', 0)} tiles"],
        ["ECE, evaluated tiles (before → after)",
         f"{fmt(here.get('ece_tile_before'))} → {fmt(here.get('ece_tile_after'))}", ""],
        ["reflex threshold (slide uncertainty)", fmt(rf.get("threshold")),
         rf.get("policy", "")],
        ["slides flagged (this split)",
         "—" if rf.get("fraction_flagged") is None else f"{rf['fraction_flagged']:.0%}",
         f"of {rf.get('n_slides', 0)} slides"],
        ["mis-calls caught by the flag (this split)",
         "—" if rf.get("miscalls_caught") is None else f"{rf['miscalls_caught']:.0%}",
         f"{rf.get('n_miscalls', 0)} mis-called slide(s)"],
    ]  # fmt: skip
    chosen = rf.get("validation") or {}
    note = (
        f"<p class='note'>Policy chosen on {chosen.get('n_slides', '?')} validation slides with "
        f"{chosen.get('n_miscalls', '?')} mis-call(s): {esc(chosen.get('why', ''))}. Few "
        "validation slides make this threshold uncertain.</p>"
    )
    return "<h4>Calibration and reflex policy</h4>" + table(["", "value", "note"], rows) + note


def weights_html(run: RunLayout) -> str:
    from her2scope.engine.runinfo import load_run_provenance

    w = load_run_provenance(run.root).get("weights")
    if not isinstance(w, dict):
        return missing("initial weights (provenance.json)", "retrain with this version")
    loaded = w.get("pretrained_loaded")
    what = (
        "pretrained weights loaded" if loaded else "random initialisation (no pretrained weights)"
    )
    sha = f" · sha256 {esc(str(w['sha256'])[:16])}…" if w.get("sha256") else ""
    return f"<p class='note'>Initial weights: <b>{what}</b> — {esc(w.get('source', ''))}{sha}</p>"


def ordered_plots(folder: Path) -> list[Path]:
    """ROC, confusion, reliability (others after), each at patient, slide, tile level."""
    if not folder.is_dir():
        return []
    kinds = ("roc", "confusion", "reliability")
    levels = ("patient", "slide", "tile")

    def key(p: Path) -> tuple[int, int, str]:
        kind = next((i for i, k in enumerate(kinds) if p.stem.startswith(k)), len(kinds))
        level = next((i for i, lv in enumerate(levels) if p.stem.endswith(lv)), len(levels))
        return kind, level, p.name

    return sorted(folder.glob("*.png"), key=key)


def levels_table(res: dict[str, Any]) -> str:
    """One row per metric (main ones first), one column per level (tile / slide / patient)."""
    levels = {k: v for k, v in res["levels"].items() if isinstance(v, dict)}
    order = [lv for lv in ("tile", "slide", "patient") if lv in levels]
    order += [lv for lv in levels if lv not in order]
    names: list[str] = []
    for lv in order:
        for k, m in levels[lv].items():
            if is_metric(m) and k not in names:
                names.append(k)
    main = [m for m in MAIN_METRICS if m in names]
    aucs = sorted(n for n in names if n.startswith("auc_"))
    rest = [n for n in names if n not in main and n not in aucs]
    ordered = main[:1] + aucs + main[1:] + rest
    rows = [["n", *[levels[lv].get("n", "—") for lv in order]]]
    rows += [[m, *[metric_cell(levels[lv].get(m)) for lv in order]] for m in ordered]
    return table(["metric", *order], rows)

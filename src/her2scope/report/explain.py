"""Report section on explanations: each run's gallery and slide maps, where the maps point
(synthetic ground truth) and the reflex-FISH list of the first evaluated run."""

from __future__ import annotations

import logging
from typing import Any

from her2scope.config import RunConfig
from her2scope.layout import OutLayout, RunLayout
from her2scope.report._markup import esc, figure, figures, fmt, missing, read_json, reason, table

log = logging.getLogger(__name__)

METHOD_NOTE = (
    "<p class='note'>Maps are input × gradient on the model input (white = unstained glass as "
    "the baseline; one value per input pixel; one scale per slide), which resolves single "
    "membranes; Grad-CAM on the last block cannot (its grid is 1/8–1/32 of the input). "
    "Their resolution was measured on synthetic ground-truth masks (pointing game against "
    "chance): docs/explain.md.</p>"
)
REGIONS = ("membrane", "nucleus", "cytoplasm", "stroma", "glass")


def explain_section(out: OutLayout, cfg: RunConfig) -> str:
    parts = ["<h2 id='explanations'>Explanations</h2>", METHOD_NOTE]
    runs = out.runs(cfg.train.models)
    any_figs = False
    for run in runs:
        html = _run_maps_html(run)
        any_figs = any_figs or "<figure" in html
        parts.append(html)
    parts.append(_pointing_html(runs))
    if not runs:
        parts.append(missing("trained runs", "the train stage writes them"))
    elif not any_figs:
        parts.append("<p class='note'>No Grad-CAM images were found.</p>")
    parts.append("<h3>Reflex-FISH list</h3>")
    parts.append(reflex_html(runs, cfg))
    return "".join(parts)


def _run_maps_html(run: RunLayout) -> str:
    exp = run.explain_dir
    pngs = sorted(exp.rglob("*.png")) if exp.is_dir() else []
    if not pngs:
        return missing(
            f"explanation gallery and slide maps of {run.name}",
            "the explain stage writes them (runs/<model>/explain/)",
        )
    gallery = [p for p in pngs if "gallery" in p.name]
    others = [p for p in pngs if p not in gallery][:8]
    return f"<h3>{esc(run.name)}: Grad-CAM</h3>" + figures(
        [figure(p, f"{run.name}: {p.relative_to(exp)}", 1100, photo=True) for p in gallery[:4]]
        + [figure(p, f"{run.name}: {p.relative_to(exp)}", 560, photo=True) for p in others]
    )


def _pointing_html(runs: list[RunLayout]) -> str:
    pointing = [(r.name, read_json(r.pointing)) for r in runs]
    pointing = [(n, p) for n, p in pointing if isinstance(p, dict) and p.get("n_tiles")]
    if not pointing:
        return ""
    rows = [
        [n, method, *(fmt(v["region_mean"].get(r)) for r in REGIONS), fmt(v["pointing_game"]),
         fmt(p["chance"]), p["n_tiles"]]
        for n, p in pointing
        for method, v in p["methods"].items()
    ]  # fmt: skip
    return (
        "<h3>Where the maps point (synthetic ground truth)</h3>"
        "<p class='note'>Mean map value per region and the pointing game (share of tiles whose "
        "map maximum lies on a stained membrane) against chance (the share of such pixels), "
        "on the test tiles with membrane of this run; docs/explain.md.</p>"
        + table(["model", "method", *REGIONS, "pointing game", "chance", "tiles"], rows)
    )


def reflex_html(runs: list[RunLayout], cfg: RunConfig) -> str:
    """The slides the first evaluated run flags for reflex FISH, under the run's own policy."""
    import pandas as pd

    from her2scope.evaluate.calibration import load_calibration
    from her2scope.scoring.reflex import reflex_table

    run = next((r for r in runs if r.predictions.is_file()), None)
    if run is None:
        return missing("reflex-FISH list (runs/<model>/predictions.parquet)", "run evaluate")
    try:
        policy = load_calibration(run.root, cfg.evaluate.reflex_uncertainty).policy
        slides = reflex_table(
            pd.read_parquet(run.predictions),
            policy,
            rule=cfg.evaluate.aggregate,
            percent_threshold=cfg.evaluate.percent_threshold,
        )
    except Exception as exc:
        log.debug("reflex list failed", exc_info=True)
        return missing(f"reflex-FISH list ({reason(exc)})", "")
    flagged = slides[slides["reflex_fish"]]
    head = (
        f"<p>Model <b>{esc(run.name)}</b>: {len(flagged)} of {len(slides)} test slides "
        f"flagged for reflex FISH. Policy: {esc(policy.description)}.</p>"
    )
    if flagged.empty:
        return head
    probs = [c for c in slides.columns if c.startswith("prob_")]
    rows: list[list[Any]] = [
        [r["slide_id"], r["patient_id"], r["label"], r["score"], *[f"{r[c]:.2f}" for c in probs],
         f"{r['uncertainty']:.3f}", r["reason"]]
        for _, r in flagged.iterrows()
    ]  # fmt: skip
    header = ["slide", "patient", "true label", "predicted", *[c[len("prob_") :] for c in probs],
              "uncertainty", "reason"]  # fmt: skip
    return head + table(header, rows)

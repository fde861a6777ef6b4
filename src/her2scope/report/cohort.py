"""Report sections on the data: the cohort (splits, leakage) and preprocessing (tiling, stain)."""

from __future__ import annotations

import logging

from her2scope.config import RunConfig
from her2scope.layout import OutLayout
from her2scope.report._markup import esc, figure, missing, read_json, reason, table

log = logging.getLogger(__name__)


def cohort_section(out: OutLayout, cfg: RunConfig) -> str:
    """Patients, slides and tiles per centre, split and class; the leakage check; the split mode."""
    import pandas as pd

    parts = ["<h2 id='cohort'>Cohort</h2>"]
    tiles = None
    if out.tiles.table.is_file():
        try:
            tiles = pd.read_parquet(out.tiles.table, columns=["slide_id"])
        except Exception as exc:
            parts.append(missing(f"tile table ({exc})", "re-run with --force tile"))
    splits = None
    for run in out.runs(cfg.train.models):
        if run.splits.is_file():
            try:
                from her2scope.cohort import read_splits

                splits = read_splits(run.splits)
            except Exception as exc:
                parts.append(missing(f"splits of {run.name} ({exc})", "re-run training"))
            break
    if splits is None:
        parts.append(
            missing("patient-level splits (runs/<model>/splits.csv)", "the train stage writes them")
        )
        return "".join(parts)
    counts = tiles.groupby("slide_id").size() if tiles is not None else None
    df = splits.copy()
    df["tiles"] = df["slide_id"].map(counts).fillna(0).astype(int) if counts is not None else 0
    rows = []
    for (center, split, label), g in df.groupby(["center", "split", "label"], sort=True):
        rows.append(
            [center, split, label, g["patient_id"].nunique(), len(g), int(g["tiles"].sum())]
        )
    for center, g in df.groupby("center", sort=True):
        rows.append(
            [center, "all", "all", g["patient_id"].nunique(), len(g), int(g["tiles"].sum())]
        )
    parts.append(table(["centre", "split", "class", "patients", "slides", "tiles"], rows))
    if counts is None:
        parts.append("<p class='note'>Tile counts unavailable (no tiles.parquet).</p>")
    try:
        from her2scope.cohort import check_no_leakage

        check_no_leakage(splits)
        n_pat = splits["patient_id"].nunique()
        parts.append(
            f"<p>Leakage check: <span class='ok'>passed</span> — each of the {n_pat} patients "
            "is in exactly one split.</p>"
        )
    except Exception as exc:
        parts.append(f"<p>Leakage check: <span class='bad'>FAILED</span> — {esc(exc)}</p>")
    mode = cfg.cohort.split_mode
    extra = f" (test centres: {', '.join(cfg.cohort.test_centers)})" if mode == "external" else ""
    parts.append(f"<p class='note'>Split mode: {esc(mode)}{esc(extra)}.</p>")
    return "".join(parts)


def preprocessing_section(out: OutLayout, cfg: RunConfig) -> str:
    """Tiling settings, tiles kept and dropped per slide, raw vs normalised tiles per centre."""
    parts = ["<h2 id='preprocessing'>Preprocessing</h2>"]
    t = cfg.tiling
    parts.append(
        f"<p>Tiles of {t.tile_px} px at "
        f"{esc(t.target_mpp if t.target_mpp is not None else 'the slide’s own')} µm/px; "
        f"dropped when more than {t.max_white:.0%} white (R, G, B &gt; {t.white_level}); "
        f"ROI rule: {esc(t.roi_rule)}. Stain normalisation: <b>{esc(cfg.stain.mode)}</b>.</p>"
    )
    parts.append(_tiling_table(out))
    parts.append(_stain_figure(out, cfg))
    return "".join(parts)


def _tiling_table(out: OutLayout) -> str:
    report = read_json(out.tiles.report)
    if not isinstance(report, dict) or not isinstance(report.get("slides"), list):
        return missing("tiling report (tiles/tiling_report.json)", "run the tile stage")
    cols = ["n_grid", "n_kept", "n_dropped_white", "n_dropped_roi", "n_read_errors"]
    rows = [
        [s.get("slide_id", "?"), s.get("status", "?"), *[s.get(c, "—") for c in cols],
         s.get("reason", "")]
        for s in report["slides"]
    ]  # fmt: skip
    header = ["slide", "status", "grid", "kept", "dropped: white", "dropped: outside ROI",
              "read errors", "reason"]  # fmt: skip
    return "<h3>Tiles kept and dropped per slide</h3>" + table(header, rows)


def _stain_figure(out: OutLayout, cfg: RunConfig) -> str:
    from her2scope.stain.show import centre_figure_png

    try:
        png = centre_figure_png(out.tiles.root, cfg.stain)
    except Exception as exc:  # optional artefact: never break the report
        log.debug("raw vs normalised tiles failed", exc_info=True)
        return missing(f"raw vs normalised tiles ({reason(exc)})", "")
    if png is None:
        return missing("raw vs normalised tiles", "no tiles to show")
    return "<h3>Raw vs normalised tiles per centre</h3>" + figure(
        png, f"Top row of each centre: raw; bottom row: {cfg.stain.mode}"
    )

"""The study report: one self-contained HTML file (inline CSS, images as base64) that opens offline.

``write_report(out_dir, cfg)`` reads what the pipeline wrote under ``out_dir`` (see
``her2scope.pipeline``) and renders five sections: cohort, preprocessing, results, explanations
and provenance. Every section tolerates missing inputs: it says what is missing and which stage
produces it, and never raises because an optional artefact is absent. The report has no scripts
and no external references.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from her2scope._io import write_text
from her2scope.config import RunConfig

log = logging.getLogger(__name__)

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
#: Widest embedded image in pixels; larger PNGs are downscaled before embedding.
MAX_IMG_PX = 1400

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;
background:#f6f7f9;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:1rem 2rem 4rem}
h1{margin:.4rem 0}h2{border-bottom:2px solid #d0d5dc;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin-bottom:.3rem}
.banner{background:#b3261e;color:#fff;padding:.8rem 2rem;font-weight:600;font-size:1.05rem}
.note{color:#5b6470;font-size:.92rem}
.missing{background:#fff4e5;border-left:4px solid #e8a33d;padding:.5rem .8rem;margin:.6rem 0}
.ok{color:#1e7d32;font-weight:600}.bad{color:#b3261e;font-weight:600}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem;background:#fff}
th,td{border:1px solid #d0d5dc;padding:.25rem .55rem;text-align:right}
th{background:#eef1f5}td:first-child,th:first-child{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;background:#fff;padding:.5rem;border:1px solid #d0d5dc}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:#5b6470;margin-top:.3rem}
pre{background:#fff;border:1px solid #d0d5dc;padding:.6rem;overflow:auto;font-size:.8rem}
nav a{margin-right:1rem}
"""

SYNTHETIC_TEXT = (
    "SYNTHETIC DATA — every number and image in this report comes from the generated demo "
    "cohort (her2scope synth). It shows that the pipeline works; it is not evidence of "
    "clinical performance."
)


# ----------------------------------------------------------------------------------------------
# Small HTML helpers
# ----------------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """Why a report section is missing, in words (never a raw "KeyError: 'x'")."""
    from her2scope.errors import describe_exception

    return describe_exception(exc)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _missing(what: str, hint: str) -> str:
    return f'<div class="missing">Not available: {_e(what)}. {_e(hint)}</div>'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image_data_uri(png: bytes | Path, max_px: int = MAX_IMG_PX, photo: bool = False) -> str:
    """A ``data:`` URI of a PNG file or bytes, downscaled to at most ``max_px`` wide.

    A downscaled ``photo`` (tiles, CAM overlays) is re-encoded as JPEG (quality 88), plots as PNG.
    Bytes that PIL cannot decode are embedded unchanged (the browser test then flags them).
    """
    data = png.read_bytes() if isinstance(png, Path) else png
    mime = "image/png"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.width > max_px:
                small = im.convert("RGB").resize(
                    (max_px, max(1, round(im.height * max_px / im.width))), Image.Resampling.LANCZOS
                )
                buf = io.BytesIO()
                if photo:
                    small.save(buf, format="JPEG", quality=88)
                    mime = "image/jpeg"
                else:
                    small.save(buf, format="PNG", compress_level=6)
                data = buf.getvalue()
    except Exception:  # not a decodable image: embed as is, the browser test will catch it
        log.debug("could not inspect %s", png, exc_info=True)
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _figure(
    png: bytes | Path, caption: str, width_px: int | None = None, photo: bool = False
) -> str:
    style = f' style="max-width:{width_px}px"' if width_px else ""
    max_px = min(MAX_IMG_PX, round(width_px * 1.5)) if width_px else MAX_IMG_PX
    uri = image_data_uri(png, max_px, photo)
    return (
        f'<figure{style}><img src="{uri}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _metric_cell(m: Any) -> str:
    """``0.912 [0.85, 0.97]`` from ``{"value": v, "ci": [lo, hi]}`` (or a bare number)."""
    if isinstance(m, dict):
        v = m.get("value")
        ci = m.get("ci")
        if v is None:
            return "—" + (f" ({m['reason']})" if m.get("reason") else "")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            return f"{_fmt(v)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"
        return _fmt(v)
    if isinstance(m, (int, float)):
        return _fmt(float(m))
    return "—"


def _is_metric(m: Any) -> bool:
    return isinstance(m, dict) and "value" in m and not isinstance(m.get("value"), (dict, list))


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def _model_dirs(out_dir: Path, cfg: RunConfig) -> list[tuple[str, Path]]:
    from her2scope.pipeline import run_dir_name

    runs = out_dir / "runs"
    names = [run_dir_name(m) for m in dict.fromkeys(cfg.train.models)]
    if runs.is_dir():
        names += sorted(p.name for p in runs.iterdir() if p.is_dir() and p.name not in names)
    return [(n, runs / n) for n in names if (runs / n).is_dir()]


def _cohort_section(out_dir: Path, cfg: RunConfig) -> str:
    import pandas as pd

    parts = ["<h2 id='cohort'>Cohort</h2>"]
    tiles_path = out_dir / "tiles" / "tiles.parquet"
    tiles = None
    if tiles_path.is_file():
        try:
            tiles = pd.read_parquet(tiles_path, columns=["slide_id"])
        except Exception as exc:
            parts.append(_missing(f"tile table ({exc})", "re-run with --force tile"))
    splits = None
    for _, run_dir in _model_dirs(out_dir, cfg):
        if (run_dir / "splits.csv").is_file():
            try:
                from her2scope.cohort import read_splits

                splits = read_splits(run_dir / "splits.csv")
            except Exception as exc:
                parts.append(_missing(f"splits of {run_dir.name} ({exc})", "re-run training"))
            break
    if splits is None:
        parts.append(
            _missing(
                "patient-level splits (runs/<model>/splits.csv)", "the train stage writes them"
            )
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
    parts.append(
        _table(["centre", "split", "class", "patients", "slides", "tiles"], rows)
        + (
            ""
            if counts is not None
            else "<p class='note'>Tile counts unavailable (no tiles.parquet).</p>"
        )
    )
    try:
        from her2scope.cohort import check_no_leakage

        check_no_leakage(splits)
        n_pat = splits["patient_id"].nunique()
        parts.append(
            f"<p>Leakage check: <span class='ok'>passed</span> — each of the {n_pat} patients "
            "is in exactly one split.</p>"
        )
    except Exception as exc:
        parts.append(f"<p>Leakage check: <span class='bad'>FAILED</span> — {_e(exc)}</p>")
    mode = cfg.cohort.split_mode
    extra = f" (test centres: {', '.join(cfg.cohort.test_centers)})" if mode == "external" else ""
    parts.append(f"<p class='note'>Split mode: {_e(mode)}{_e(extra)}.</p>")
    return "".join(parts)


def _preprocessing_section(out_dir: Path, cfg: RunConfig) -> str:
    parts = ["<h2 id='preprocessing'>Preprocessing</h2>"]
    t = cfg.tiling
    parts.append(
        f"<p>Tiles of {t.tile_px} px at "
        f"{_e(t.target_mpp if t.target_mpp is not None else 'the slide’s own')} µm/px; "
        f"dropped when more than {t.max_white:.0%} white (R, G, B &gt; {t.white_level}); "
        f"ROI rule: {_e(t.roi_rule)}. Stain normalisation: <b>{_e(cfg.stain.mode)}</b>.</p>"
    )
    report = _read_json(out_dir / "tiles" / "tiling_report.json")
    if not isinstance(report, dict) or not isinstance(report.get("slides"), list):
        parts.append(_missing("tiling report (tiles/tiling_report.json)", "run the tile stage"))
    else:
        cols = ["n_grid", "n_kept", "n_dropped_white", "n_dropped_roi", "n_read_errors"]
        rows = [
            [
                s.get("slide_id", "?"),
                s.get("status", "?"),
                *[s.get(c, "—") for c in cols],
                s.get("reason", ""),
            ]
            for s in report["slides"]
        ]
        parts.append(
            "<h3>Tiles kept and dropped per slide</h3>"
            + _table(
                [
                    "slide",
                    "status",
                    "grid",
                    "kept",
                    "dropped: white",
                    "dropped: outside ROI",
                    "read errors",
                    "reason",
                ],
                rows,
            )
        )
    try:
        png = _raw_vs_normalised_png(out_dir / "tiles", cfg)
    except Exception as exc:  # optional artefact: never break the report
        log.debug("raw vs normalised tiles failed", exc_info=True)
        parts.append(_missing(f"raw vs normalised tiles ({_reason(exc)})", ""))
    else:
        if png is None:
            parts.append(_missing("raw vs normalised tiles", "no tiles to show"))
        else:
            parts.append(
                "<h3>Raw vs normalised tiles per centre</h3>"
                + _figure(png, f"Top row of each centre: raw; bottom row: {cfg.stain.mode}")
            )
    return "".join(parts)


def _raw_vs_normalised_png(tiles_dir: Path, cfg: RunConfig, per_center: int = 4) -> bytes | None:
    """A grid: for each centre, ``per_center`` raw tiles above the same tiles normalised."""
    import numpy as np
    import pandas as pd

    path = tiles_dir / "tiles.parquet"
    if not path.is_file():
        return None
    tiles = pd.read_parquet(path)
    if tiles.empty or "center" not in tiles:
        return None
    normalizers: dict[str, Any] = {}
    if cfg.stain.mode != "none":
        from her2scope.stain import load_normalizers

        normalizers = load_normalizers(tiles_dir, cfg.stain) or {}
    from her2scope.slide.reader import open_slide

    rng = np.random.default_rng(0)
    rows_img = []
    labels = []
    side = 128
    for center, g in tiles.groupby("center", sort=True):
        pick = g.iloc[rng.choice(len(g), size=min(per_center, len(g)), replace=False)]
        raw_row, norm_row = [], []
        for r in pick.itertuples(index=False):
            slide = open_slide(r.slide_path)
            try:
                rgb = np.asarray(
                    slide.read_tile(
                        (int(r.x), int(r.y)), int(r.level), int(r.read_px), int(r.tile_px)
                    )
                )[..., :3]
            finally:
                close = getattr(slide, "close", None)
                if close is not None:
                    close()
            norm = normalizers.get(r.slide_id)
            out = norm.transform(rgb) if norm is not None else rgb
            raw_row.append(_resize(rgb, side))
            norm_row.append(_resize(np.asarray(out, dtype=np.uint8), side))
        while len(raw_row) < per_center:
            raw_row.append(np.full((side, side, 3), 255, np.uint8))
            norm_row.append(np.full((side, side, 3), 255, np.uint8))
        rows_img += [np.concatenate(raw_row, 1), np.concatenate(norm_row, 1)]
        labels.append(str(center))
    grid = np.concatenate(rows_img, 0)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(grid.shape[1] / 100 + 1.2, grid.shape[0] / 100 + 0.3), dpi=100)
    ax.imshow(grid)
    ax.set_xticks([])
    ax.set_yticks(
        [side * (2 * i + 0.5) for i in range(len(labels))]
        + [side * (2 * i + 1.5) for i in range(len(labels))]
    )
    ax.set_yticklabels([f"{c} raw" for c in labels] + [f"{c}\n{cfg.stain.mode}" for c in labels])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")  # never clip the row labels
    plt.close(fig)
    return buf.getvalue()


def _resize(rgb: Any, side: int) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((side, side)))


def _results_section(out_dir: Path, cfg: RunConfig) -> str:
    parts = ["<h2 id='results'>Results</h2>"]
    split = cfg.evaluate.split
    centres = ", ".join(cfg.cohort.test_centers) if cfg.cohort.test_centers else "—"
    parts.append(
        f"<p>Evaluated on split <b>{_e(split)}</b> (external centre(s): {_e(centres)}); "
        f"{cfg.evaluate.ci:.0%} confidence intervals from {cfg.evaluate.n_boot} bootstrap "
        f"resamples of <b>patients</b>; slide/patient scores by the "
        f"<b>{_e(cfg.evaluate.aggregate)}</b> rule.</p>"
    )
    comp_md = out_dir / "compare" / "comparison.csv"
    if comp_md.is_file():
        try:
            import pandas as pd

            comp = pd.read_csv(comp_md)
            parts.append(
                "<h3>Model comparison</h3>"
                + _table(
                    list(comp.columns),
                    [[_fmt(v) for v in row] for row in comp.itertuples(index=False)],
                )
            )
        except Exception as exc:
            parts.append(_missing(f"comparison table ({exc})", "re-run with --force compare"))
    else:
        parts.append(
            _missing("model comparison (compare/comparison.csv)", "the compare stage writes it")
        )
    models = _model_dirs(out_dir, cfg)
    if not models:
        parts.append(_missing("trained runs (runs/<model>/)", "the train stage writes them"))
    for name, run_dir in models:
        parts.append(f"<h3>{_e(name)}</h3>")
        res = _read_json(run_dir / "results.json")
        if not isinstance(res, dict) or not isinstance(res.get("levels"), dict):
            parts.append(
                _missing(f"results of {name} (results.json)", "the evaluate stage writes it")
            )
        else:
            parts.append(_levels_table(res))
            parts.append(_calibration_html(res.get("calibration")))
            parts.append(_weights_html(run_dir))
            present = res.get("classes_present")
            if present is not None:
                parts.append(
                    f"<p class='note'>Classes present: {_e(', '.join(map(str, present)))}</p>"
                )
        plots = _ordered_plots(run_dir / "plots")
        if plots:
            parts.append(
                "<div class='figs'>"
                + "".join(_figure(p, f"{name}: {p.stem.replace('_', ' ')}", 370) for p in plots)
                + "</div>"
            )
        else:
            parts.append(_missing(f"ROC / confusion / calibration plots of {name}", "run evaluate"))
    return "".join(parts)


def _calibration_html(cal: Any) -> str:
    """ECE before/after temperature scaling and the reflex policy with its test-split outcome."""
    if not isinstance(cal, dict):
        return _missing(
            "calibration and reflex policy (results.json 'calibration')", "re-run evaluate"
        )
    val = cal.get("validation") or {}
    here = cal.get("this_split") or {}
    rf = cal.get("reflex") or {}
    rows = [
        ["temperature T", _fmt(cal.get("temperature")),
         " ".join(x for x in (cal.get("method", ""), cal.get("note", "")) if x)],
        ["ECE, validation tiles (before → after)",
         f"{_fmt(val.get('ece_tile_before'))} → {_fmt(val.get('ece_tile_after'))}",
         f"{val.get('n_tiles', 0)} tiles"],
        ["ECE, evaluated tiles (before → after)",
         f"{_fmt(here.get('ece_tile_before'))} → {_fmt(here.get('ece_tile_after'))}", ""],
        ["reflex threshold (slide uncertainty)", _fmt(rf.get("threshold")),
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
        f"{chosen.get('n_miscalls', '?')} mis-call(s): {_e(chosen.get('why', ''))}. Few validation "
        "slides make this threshold uncertain.</p>"
    )
    return "<h4>Calibration and reflex policy</h4>" + _table(["", "value", "note"], rows) + note


def _weights_html(run_dir: Path) -> str:
    from her2scope.engine.runinfo import load_run_provenance

    w = load_run_provenance(run_dir).get("weights")
    if not isinstance(w, dict):
        return _missing("initial weights (provenance.json)", "retrain with this version")
    loaded = w.get("pretrained_loaded")
    what = (
        "pretrained weights loaded" if loaded else "random initialisation (no pretrained weights)"
    )
    sha = f" · sha256 {_e(str(w['sha256'])[:16])}…" if w.get("sha256") else ""
    return f"<p class='note'>Initial weights: <b>{what}</b> — {_e(w.get('source', ''))}{sha}</p>"


def _ordered_plots(folder: Path) -> list[Path]:
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


def _levels_table(res: dict[str, Any]) -> str:
    """One row per metric (main ones first), one column per level (tile / slide / patient)."""
    levels = {k: v for k, v in res["levels"].items() if isinstance(v, dict)}
    order = [lv for lv in ("tile", "slide", "patient") if lv in levels]
    order += [lv for lv in levels if lv not in order]
    names: list[str] = []
    for lv in order:
        for k, m in levels[lv].items():
            if _is_metric(m) and k not in names:
                names.append(k)
    main = [m for m in MAIN_METRICS if m in names]
    aucs = sorted(n for n in names if n.startswith("auc_"))
    rest = [n for n in names if n not in main and n not in aucs]
    ordered = main[:1] + aucs + main[1:] + rest
    rows = [["n", *[levels[lv].get("n", "—") for lv in order]]]
    rows += [[m, *[_metric_cell(levels[lv].get(m)) for lv in order]] for m in ordered]
    return _table(["metric", *order], rows)


def _explain_section(out_dir: Path, cfg: RunConfig) -> str:
    parts = [
        "<h2 id='explanations'>Explanations</h2>",
        "<p class='note'>Maps are input × gradient on the model input (white = unstained glass as "
        "the baseline; one value per input pixel; one scale per slide), which resolves single "
        "membranes; Grad-CAM on the last block cannot (its grid is 1/8–1/32 of the input). "
        "Their resolution was measured on synthetic ground-truth masks (pointing game against "
        "chance): docs/explain.md.</p>",
    ]
    models = _model_dirs(out_dir, cfg)
    any_figs = False
    for name, run_dir in models:
        exp = run_dir / "explain"
        pngs = sorted(exp.rglob("*.png")) if exp.is_dir() else []
        if not pngs:
            parts.append(
                _missing(
                    f"explanation gallery and slide maps of {name}",
                    "the explain stage writes them (runs/<model>/explain/)",
                )
            )
            continue
        any_figs = True
        gallery = [p for p in pngs if "gallery" in p.name]
        others = [p for p in pngs if p not in gallery][:8]
        parts.append(f"<h3>{_e(name)}: Grad-CAM</h3>")
        parts.append(
            "<div class='figs'>"
            + "".join(
                _figure(p, f"{name}: {p.relative_to(exp)}", 1100, photo=True) for p in gallery[:4]
            )
            + "".join(_figure(p, f"{name}: {p.relative_to(exp)}", 560, photo=True) for p in others)
            + "</div>"
        )
    pointing = [(n, _read_json(d / "explain" / "pointing_game.json")) for n, d in models]
    pointing = [(n, p) for n, p in pointing if p and p.get("n_tiles")]
    if pointing:
        parts.append("<h3>Where the maps point (synthetic ground truth)</h3>")
        parts.append(
            "<p class='note'>Mean map value per region and the pointing game (share of tiles whose "
            "map maximum lies on a stained membrane) against chance (the share of such pixels), "
            "on the test tiles with membrane of this run; docs/explain.md.</p>"
        )
        regions = ("membrane", "nucleus", "cytoplasm", "stroma", "glass")
        rows = [
            [
                n,
                method,
                *(_fmt(v["region_mean"].get(r)) for r in regions),
                _fmt(v["pointing_game"]),
                _fmt(p["chance"]),
                p["n_tiles"],
            ]
            for n, p in pointing
            for method, v in p["methods"].items()
        ]
        parts.append(
            _table(["model", "method", *regions, "pointing game", "chance", "tiles"], rows)
        )
    if not models:
        parts.append(_missing("trained runs", "the train stage writes them"))
    elif not any_figs:
        parts.append("<p class='note'>No Grad-CAM images were found.</p>")
    parts.append("<h3>Reflex-FISH list</h3>")
    parts.append(_reflex_html(out_dir, cfg, models))
    return "".join(parts)


def _grade_table_html(table: dict[str, Any], caption: str) -> str:
    order = table["order"]
    rows = [
        [f"{table['rows']} {g}", *row] for g, row in zip(order, table["confusion"], strict=True)
    ]
    head = [f"{table['rows']} \\ {table['columns']}", *order]
    summary = (
        f"{caption}: {table['n_slides']} slide(s), agreement {_fmt(table.get('agreement'))}, "
        f"quadratic κ {_fmt(table.get('kappa_quadratic'))}"
    )
    return f"<p>{_e(summary)}</p>" + _table(head, rows)


def _cells_section(out_dir: Path, cfg: RunConfig) -> str:
    parts = ["<h2 id='cells'>Cells</h2>"]
    cells_dir = out_dir / "cells"
    agreement = _read_json(cells_dir / "cells_agreement.json")
    if not cfg.cells.enabled and agreement is None:
        parts.append(
            "<p class='note'>Cell-level scoring by the ASCO/CAP rules is off "
            "(cells.enabled: false); see docs/cells.md.</p>"
        )
        return "".join(parts)
    if agreement is None:
        parts.append(_missing("cell-level scoring", "the cells stage writes cells/"))
        return "".join(parts)
    parts.append(
        "<p class='note'>Each test slide's cells scored by the ASCO/CAP membrane rules "
        "(nuclei, membrane DAB OD and completeness; docs/cells.md), beside the CNN's slide call "
        f"of {_e(Path(agreement.get('run', '')).name)}. A slide where the two calls differ is "
        "listed for review. Grades 0 / 1+ / 2+ / 3+ (both kinds of 0 are 0).</p>"
    )
    parts.append(_grade_table_html(agreement["cnn_vs_cells"], "CNN vs cell rules"))
    parts.append(_grade_table_html(agreement["cells_vs_label"], "Labels vs cell rules"))
    parts.append(_grade_table_html(agreement["cnn_vs_label"], "Labels vs CNN"))
    review = agreement.get("review") or []
    parts.append(f"<h3>Slides to review ({len(review)})</h3>")
    if review:
        parts.append(
            _table(
                ["slide", "CNN", "cell rules"],
                [[r["slide_id"], r["cnn_score"], r["cell_call"]] for r in review],
            )
        )
    for line in agreement.get("failures") or []:
        parts.append(f"<p class='note'>Cell scoring failed: {_e(line)}</p>")
    overlays = sorted(cells_dir.glob("*.cells.png"))[:4]
    if overlays:
        parts.append(
            "<div class='figs'>"
            + "".join(
                _figure(p, f"cells of {p.name.removesuffix('.cells.png')}", 560, photo=True)
                for p in overlays
            )
            + "</div>"
        )
    return "".join(parts)


def reflex_table(pred: Any, cfg: RunConfig, policy: Any = None) -> Any:
    """Slides of a tile predictions table with score, probabilities and the reflex-FISH flag.

    Tiles are aggregated per slide with the run's rule (``cfg.evaluate.aggregate``); the flag
    follows :func:`her2scope.evaluate.calibration.reflex_decision` with ``policy`` (the run's
    :class:`~her2scope.evaluate.calibration.ReflexPolicy`; None: the fixed threshold
    ``cfg.evaluate.reflex_uncertainty``).
    """
    import pandas as pd

    from her2scope.evaluate.aggregate import aggregate
    from her2scope.evaluate.calibration import identity_calibration, reflex_decision

    if policy is None:
        policy = identity_calibration(cfg.evaluate.reflex_uncertainty).policy

    classes = [c[len("prob_") :] for c in pred.columns if c.startswith("prob_")]
    slides = aggregate(
        pred,
        by="slide_id",
        rule=cfg.evaluate.aggregate,
        classes=classes,
        percent_threshold=cfg.evaluate.percent_threshold,
    )
    rows = []
    for _, r in slides.iterrows():
        probs = {c: float(r[f"prob_{c}"]) for c in classes}
        flag = reflex_decision(probs, str(r["pred"]), policy)
        rows.append(
            {
                "slide_id": r["slide_id"],
                "patient_id": r.get("patient_id", ""),
                "label": r.get("label", ""),
                "score": str(r["pred"]),
                **{f"prob_{c}": probs[c] for c in classes},
                "uncertainty": float(flag["uncertainty"]),
                "reflex_fish": bool(flag["flag"]),
                "reason": str(flag["reason"]),
            }
        )
    return pd.DataFrame(rows)


def _reflex_html(out_dir: Path, cfg: RunConfig, models: list[tuple[str, Path]]) -> str:
    import pandas as pd

    for name, run_dir in models:
        pred_path = run_dir / "predictions.parquet"
        if not pred_path.is_file():
            continue
        from her2scope.evaluate.calibration import load_calibration

        try:
            policy = load_calibration(run_dir, cfg.evaluate.reflex_uncertainty).policy
            table = reflex_table(pd.read_parquet(pred_path), cfg, policy)
        except Exception as exc:
            log.debug("reflex list failed", exc_info=True)
            return _missing(f"reflex-FISH list ({_reason(exc)})", "")
        flagged = table[table["reflex_fish"]]
        head = (
            f"<p>Model <b>{_e(name)}</b>: {len(flagged)} of {len(table)} test slides "
            f"flagged for reflex FISH. Policy: {_e(policy.description)}.</p>"
        )
        probs = [c for c in table.columns if c.startswith("prob_")]
        rows = [
            [
                r["slide_id"],
                r["patient_id"],
                r["label"],
                r["score"],
                *[f"{r[c]:.2f}" for c in probs],
                f"{r['uncertainty']:.3f}",
                r["reason"],
            ]
            for _, r in flagged.iterrows()
        ]
        return head + (
            _table(
                [
                    "slide",
                    "patient",
                    "true label",
                    "predicted",
                    *[c[5:] for c in probs],
                    "uncertainty",
                    "reason",
                ],
                rows,
            )
            if rows
            else ""
        )
    return _missing("reflex-FISH list (runs/<model>/predictions.parquet)", "run evaluate")


def _versions() -> list[tuple[str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    from her2scope import __version__

    out = [("her2scope", __version__), ("python", platform.python_version())]
    for pkg in (
        "torch",
        "torchvision",
        "timm",
        "numpy",
        "pandas",
        "scikit-learn",
        "openslide-python",
        "openslide-bin",
        "tiffslide",
        "grad-cam",
    ):
        try:
            out.append((pkg, version(pkg)))
        except PackageNotFoundError:
            out.append((pkg, "not installed"))
    return out


def _provenance_section(out_dir: Path, cfg: RunConfig) -> str:
    from her2scope.config import to_dict

    parts = ["<h2 id='provenance'>Provenance</h2>"]
    parts.append(
        f"<p>Seed: <b>{cfg.seed}</b> (split seed {cfg.cohort.split_seed}); "
        f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{_e(platform.node())} ({_e(platform.platform())}).</p>"
    )
    parts.append("<h3>Versions</h3>" + _table(["package", "version"], _versions()))
    timings = _read_json(out_dir / "timings.json")
    if isinstance(timings, dict) and isinstance(timings.get("steps"), list):
        rows = [
            [
                (f"{s['stage']}[{s['model']}]" if s.get("model") else s["stage"]),
                f"{float(s.get('seconds', 0)):.1f}",
                s.get("status", ""),
            ]
            for s in timings["steps"]
            if isinstance(s, dict) and "stage" in s
        ]
        parts.append(
            "<h3>Run times (this invocation)</h3>" + _table(["stage", "seconds", "status"], rows)
        )
    else:
        parts.append(_missing("run times (timings.json)", "written by her2scope run"))
    import yaml

    parts.append(
        "<h3>Configuration</h3><pre>" + _e(yaml.safe_dump(to_dict(cfg), sort_keys=False)) + "</pre>"
    )
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def render_report(out_dir: str | Path, cfg: RunConfig) -> str:
    """The report's HTML text for the pipeline outputs under ``out_dir``."""
    out = Path(out_dir)
    sections = []
    for fn in (
        _cohort_section,
        _preprocessing_section,
        _results_section,
        _explain_section,
        _cells_section,
        _provenance_section,
    ):
        try:
            sections.append(fn(out, cfg))
        except Exception as exc:  # one broken artefact must not cost the whole report
            log.warning("report section %s failed: %s", fn.__name__, exc, exc_info=True)
            sections.append(
                _missing(f"section {fn.__name__.strip('_')} ({_reason(exc)})", "see the log")
            )
    banner = f"<div class='banner' role='alert'>{_e(SYNTHETIC_TEXT)}</div>" if cfg.synthetic else ""
    models = ", ".join(cfg.train.models)
    nav = "".join(
        f"<a href='#{s}'>{s.capitalize()}</a>"
        for s in ("cohort", "preprocessing", "results", "explanations", "cells", "provenance")
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>her2scope report — {_e(models)}</title><style>{_CSS}</style></head><body>"
        f"{banner}<main><h1>her2scope study report</h1>"
        f"<p class='note'>Output folder: {_e(out)} · models: {_e(models)} · "
        "her2scope is a research tool, not a medical device.</p>"
        f"<nav>{nav}</nav>{''.join(sections)}</main></body></html>\n"
    )


def write_report(out_dir: str | Path, cfg: RunConfig, path: str | Path | None = None) -> Path:
    """Write ``report.html`` (default ``out_dir/report.html``) atomically; return its path."""
    path = Path(path) if path is not None else Path(out_dir) / "report.html"
    write_text(path, render_report(out_dir, cfg))
    return path

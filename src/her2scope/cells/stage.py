"""The cell-scoring stage of ``her2scope run`` (``cells.enabled: true``): the ASCO/CAP cell rules
on the slides of one split, beside the CNN, with the agreement of both with the labels.

Reads the manifest (slides, ROIs, µm/px), the run's ``splits.csv`` and ``predictions.parquet``
(tile probabilities, aggregated to slides by the evaluate stage's own rule), and the tiling's stain
sidecars. Stain vectors (``cells.stain_scope``): by default one fit per centre, pooled over its
slides (the manifest's ``center`` column): a centre's vectors belong to its assay and scanner,
and per-slide fits change the DAB gain with the grade; "slide" uses the sidecars' per-slide fits. Writes into ``OUT/cells/`` the per-slide cell outputs of
:func:`her2scope.cells.slide.score_slide_cells`, ``cells_summary.csv`` and
``cells_agreement.json``: CNN vs cell rules (confusion, quadratic κ, slides to review) and each
of them vs the labels. A slide that fails is listed with its reason; the others go on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from her2scope._io import atomic_open, write_json
from her2scope._pool import process_pool
from her2scope.cells.classify import PATTERNS
from her2scope.cells.config import CellConfig
from her2scope.cells.fit import label_index, quadratic_kappa
from her2scope.cells.reconcile import GRADES, agreement_table, reconcile_call
from her2scope.cells.slide import AGREEMENT_JSON, SUMMARY_CSV, score_slide_cells
from her2scope.errors import Her2ScopeError, describe_exception
from her2scope.layout import RunLayout

log = logging.getLogger(__name__)


def _score_job(job: dict[str, Any]) -> dict[str, Any] | Her2ScopeError:
    cfg = CellConfig(**job.pop("cfg"))
    try:
        return score_slide_cells(cfg=cfg, **job)
    except Her2ScopeError as exc:
        return exc
    except Exception as exc:  # a bug or a library failure: this slide fails, the others go on
        log.debug("cells: slide %s", job.get("slide_id"), exc_info=True)
        return Her2ScopeError(describe_exception(exc))


def _grade_table(pairs: list[tuple[int, int]], rows: str, columns: str) -> dict[str, Any]:
    conf = np.zeros((len(GRADES), len(GRADES)), int)
    for r, c in pairs:
        conf[r, c] += 1
    n = len(pairs)
    return {
        "n_slides": n,
        "order": list(GRADES),
        "rows": rows,
        "columns": columns,
        "confusion": conf.tolist(),
        "agreement": float(np.trace(conf) / n) if n else None,
        "kappa_quadratic": quadratic_kappa([r for r, _ in pairs], [c for _, c in pairs], 4)
        if n
        else None,
    }


def run_cells_stage(
    manifest_df: Any,
    run_dir: str | Path,
    tiles_dir: str | Path,
    out_dir: str | Path,
    cfg: CellConfig,
    split: str = "test",
    aggregate_rule: str = "mean",
    percent_threshold: float = 10.0,
    workers: int = 1,
) -> dict[str, Any]:
    """Score the cells of the ``split`` slides of ``run_dir`` and reconcile them with its CNN.

    ``manifest_df`` is the validated manifest (:func:`her2scope.cohort.manifest.load_manifest`:
    absolute ``slide_path``/``roi_path``). Returns the agreement object written to
    ``cells_agreement.json``. Raises :class:`Her2ScopeError` when every slide failed.
    """
    import pandas as pd

    from her2scope.cohort.splits import read_splits

    run_dir, out = Path(run_dir), Path(out_dir)
    run = RunLayout(run_dir)
    splits = read_splits(run.splits)
    wanted = set(splits.loc[splits["split"] == split, "slide_id"])
    rows = manifest_df[manifest_df["slide_id"].isin(wanted)].sort_values("slide_id")
    if rows.empty:
        raise Her2ScopeError(f"cells: no slide of split '{split}' in {run.splits}")
    cnn_call = _cnn_calls(run, aggregate_rule, percent_threshold)
    results = _score_slides(rows, out, Path(tiles_dir), cfg, workers)

    summary, recs, failures = [], [], []
    label_pairs_cells, label_pairs_cnn = [], []
    for r, res in zip(rows.itertuples(index=False), results, strict=True):
        if isinstance(res, Exception):
            failures.append(f"{r.slide_id}: {res}")
            summary.append({"slide_id": r.slide_id, "status": "failed", "error": str(res)})
            continue
        rec = reconcile_call(res, cnn_call.get(r.slide_id), str(run.predictions))
        recs.append(rec)
        truth = label_index(str(r.label))
        cell_idx = label_index(str(rec["cell_call"])) if rec.get("comparable") else None
        if truth is not None and cell_idx is not None:
            label_pairs_cells.append((truth, cell_idx))
        cnn_idx = None if rec.get("cnn_score") is None else label_index(str(rec["cnn_score"]))
        if truth is not None and cnn_idx is not None:
            label_pairs_cnn.append((truth, cnn_idx))
        summary.append(_summary_row(r.slide_id, str(r.label), res, rec))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / SUMMARY_CSV) as fh:
        pd.DataFrame(summary).to_csv(fh, index=False)
    if not recs:
        raise Her2ScopeError(
            f"cells: every slide of split '{split}' failed ({'; '.join(failures[:5])})"
        )
    agreement = {
        "split": split,
        "run": str(run_dir.resolve()),
        "cnn_vs_cells": agreement_table(recs),
        "cells_vs_label": _grade_table(label_pairs_cells, "label", "cell-rule score"),
        "cnn_vs_label": _grade_table(label_pairs_cnn, "label", "CNN score"),
        "review": [
            {"slide_id": s["slide_id"], "cnn_score": s["cnn_score"], "cell_call": s["cell_call"]}
            for s in summary
            if s.get("review")
        ],
        "failures": failures,
    }
    write_json(out / AGREEMENT_JSON, agreement)
    return agreement


def _cnn_calls(run: RunLayout, rule: str, percent_threshold: float) -> dict[str, str]:
    """slide_id → the CNN's slide call: the run's tile predictions aggregated as evaluate does."""
    import pandas as pd

    from her2scope.evaluate.aggregate import aggregate

    pred = pd.read_parquet(run.predictions)
    classes = [c[len("prob_") :] for c in pred.columns if c.startswith("prob_")]
    slides = aggregate(pred, "slide_id", rule, classes, percent_threshold)  # type: ignore[arg-type]
    return dict(zip(slides["slide_id"], slides["pred"], strict=True))


def _mpp_of(row: Any) -> float | None:
    """The row's manifest µm/px (None when empty)."""
    from her2scope.cohort.manifest import mpp_of

    return mpp_of(getattr(row, "mpp", None))


def _group_of(row: Any, scope: str) -> str | None:
    """The stain-fit group of a manifest row: its centre, all of the run, or None (per slide)."""
    if scope == "run":
        return ""
    if scope == "center":
        import pandas as pd

        centre = getattr(row, "center", None)
        if centre is not None and pd.notna(centre) and str(centre).strip():
            return str(centre).strip()
    return None


def stain_groups(
    rows: Any, cfg: CellConfig
) -> dict[str, tuple[np.ndarray, dict[str, Any]] | Her2ScopeError | None]:
    """One stain fit per group of ``rows`` (per centre with ``stain_scope`` "center", one for
    the run with "run"; none with "slide": the tiling's sidecars): group → vectors and their
    provenance, None when the pooled fit failed (those slides use their sidecars), or the error
    that stopped it (those slides fail). A row without a centre is scored with its sidecar.
    """
    from her2scope.cells.slide import fit_run_stain

    members: dict[str, list[Any]] = {}
    for r in rows.itertuples(index=False):
        g = _group_of(r, cfg.stain_scope)
        if g is not None:
            members.setdefault(g, []).append(r)
    out: dict[str, tuple[np.ndarray, dict[str, Any]] | Her2ScopeError | None] = {}
    for g, rs in sorted(members.items()):
        jobs = [
            (Path(r.slide_path), Path(r.roi_path) if getattr(r, "roi_path", "") else None)
            for r in rs
        ]
        try:
            out[g] = fit_run_stain(jobs, cfg, [_mpp_of(r) for r in rs], g or None)
        except Her2ScopeError as exc:
            out[g] = exc
        except Exception as exc:  # a bug or a library failure: this group fails, the others go on
            log.debug("cells: stain fit of %r", g, exc_info=True)
            out[g] = Her2ScopeError(describe_exception(exc))
    return out


def _score_slides(
    rows: Any, out: Path, tiles_dir: Path, cfg: CellConfig, workers: int
) -> list[dict[str, Any] | Her2ScopeError]:
    """Each manifest row's cell scoring (in ``workers`` processes), or the error it ended in."""
    groups = stain_groups(rows, cfg)
    jobs: list[dict[str, Any] | Her2ScopeError] = []
    for r in rows.itertuples(index=False):
        g = _group_of(r, cfg.stain_scope)
        pooled = groups.get(g) if g is not None else None
        if isinstance(pooled, Her2ScopeError):
            jobs.append(Her2ScopeError(f"stain fit of centre {g!r}: {pooled}"))
            continue
        jobs.append(
            {
                "slide_path": r.slide_path,
                "out_dir": str(out),
                "roi_path": (getattr(r, "roi_path", "") or None),
                "cfg": cfg.__dict__.copy(),
                "tiles_dir": str(tiles_dir),
                "mpp": _mpp_of(r),
                "slide_id": r.slide_id,
                "run_stain": pooled,
            }
        )
    todo = [j for j in jobs if isinstance(j, dict)]
    n_workers = max(1, min(int(workers), len(todo)))
    if n_workers == 1:
        done = [_score_job(j) for j in todo]
    else:
        with process_pool(n_workers) as pool:
            done = list(pool.map(_score_job, todo))
    it = iter(done)
    return [next(it) if isinstance(j, dict) else j for j in jobs]


def _summary_row(
    slide_id: str, label: str, res: dict[str, Any], rec: dict[str, Any]
) -> dict[str, Any]:
    """One ``cells_summary.csv`` row of a scored slide."""
    fractions = res.get("pattern_fraction") or {}
    return {
        "slide_id": slide_id,
        "status": "ok",
        "label": label,
        "cell_call": res["call"],
        "cell_score": res["score"],
        "cnn_score": rec.get("cnn_score"),
        "review": bool(rec.get("review")),
        "n_cells": res["n_cells"],
        "h_score": res["h_score"],
        "borderline": res["borderline"],
        **{f"pct_{p}": round(100 * fractions.get(p, 0.0), 3) for p in PATTERNS},
        "rule": res["rule"],
        "error": "",
    }

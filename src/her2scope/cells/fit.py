"""Calibration of the cell rules: a DAB-scale factor per centre from labelled slides, and OD
thresholds from per-cell ground truth.

A centre whose DAB looks stronger or weaker than the one the thresholds were set at (antibody lot,
DAB development time, scanner) shifts every membrane OD by a factor; fitting that one factor per
centre on a few labelled slides is the per-centre calibration. The factors with the best agreement
(slide calls vs labels, quadratic κ) form a plateau; without a reference centre the factor is its
middle, so a small change of the data does not move a slide across a threshold. The plateau is
only as narrow as the labelled slides make it: a centre without 3+ slides leaves its upper end
unpinned. With a **reference centre** (``calibration_reference``: the centre the thresholds were
set at, its labelled slides in the same manifest) the factor is pinned by the cells themselves:
for each grade both centres have, the factor that maps the centre's top-decile membrane OD (the
cells the ">10 %" rules count) onto the reference's, the median over grades, kept inside the
plateau (:func:`matched_scale`).

The factor stretches OD above a **noise floor**, what unstained membranes measure. That floor is
not the same everywhere: a centre whose membranes are thinner or whose scan is softer measures
an offset as well as a gain (blur mixes the membrane with the cytoplasm beside it). Each
centre's floor is measured on its own HER2-0 calibration slides (:func:`noise_floor`) and
mapped onto the reference's ``dab_noise_od``; the factor is fitted above it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from her2scope._io import write_json
from her2scope.cells.classify import (
    CALLS,
    calibrate_od,
    intensity_class,
    pattern_class,
    raw_od,
    slide_call,
)
from her2scope.cells.config import CellConfig
from her2scope.errors import ConfigError

#: Factors searched by :func:`fit_dab_scale` (geometric, 0.25–6).
SCALE_GRID = np.round(np.geomspace(0.25, 6.0, 121), 4)
#: The quantile of cell membrane OD matched between a centre and the reference: the top decile,
#: the cells the ASCO/CAP "> 10 % of tumour cells" rules decide on.
MATCH_QUANTILE = 0.9
#: The quantile of a centre's HER2-0 cells' membrane OD taken as its noise floor
#: (:func:`noise_floor`): at most 10 % of a HER2-0 slide's cells stain.
NOISE_QUANTILE = 0.9


def noise_floor(by_grade: dict[int, np.ndarray]) -> float | None:
    """A centre's noise floor: the NOISE_QUANTILE quantile of its HER2-0 slides' membrane OD.

    By the ASCO/CAP definition at most 10 % of a HER2-0 slide's tumour cells stain (ultralow), so
    its 90th percentile is the OD an unstained membrane measures at that centre: the offset of
    its assay and optics (blur of thin membranes, hematoxylin cross-talk, scanner noise), which a
    DAB factor must not stretch. None without HER2-0 slides.
    """
    if 0 not in by_grade or by_grade[0].size == 0:
        return None
    return float(np.quantile(by_grade[0], NOISE_QUANTILE))


def matched_scale(
    centre: dict[int, np.ndarray],
    reference: dict[int, np.ndarray],
    noise_od: float,
    center_noise_od: float | None = None,
) -> tuple[float | None, dict[str, float]]:
    """The DAB factor that maps a centre's membrane OD distribution onto the reference centre's.

    ``centre`` and ``reference`` map a grade (0–3) to the measured (uncalibrated) membrane OD of
    all the cells of their slides of that grade. For each stained grade (1+ to 3+) both hold,
    the factor ``s`` with ``noise + s · (q_centre − center_noise) = q_reference`` for the
    MATCH_QUANTILE quantiles ``q`` (the calibration model of
    :func:`~her2scope.cells.classify.calibrate_od`; ``center_noise_od`` defaults to
    ``noise_od``); grades where either quantile is within its centre's noise (below twice its
    floor) say nothing and are skipped. Returns the median over grades
    (geometric) and the per-grade factors, or None when no grade qualifies.
    """
    per: dict[str, float] = {}
    m = noise_od if center_noise_od is None else center_noise_od
    for grade in (1, 2, 3):
        if grade not in centre or grade not in reference:
            continue
        qc = float(np.quantile(centre[grade], MATCH_QUANTILE))
        qr = float(np.quantile(reference[grade], MATCH_QUANTILE))
        if qc <= 2 * m or qr <= 2 * noise_od:
            continue
        per[("0", "1+", "2+", "3+")[grade]] = (qr - noise_od) / (qc - m)
    if not per:
        return None, per
    return float(np.exp(np.median(np.log(list(per.values()))))), per


def quadratic_kappa(y_true: list[int], y_pred: list[int], n_classes: int) -> float | None:
    """Cohen's κ with quadratic weights; None when it is undefined (one class in both lists)."""
    t = np.asarray(y_true, np.int64)
    p = np.asarray(y_pred, np.int64)
    if t.size == 0:
        return None
    obs = np.zeros((n_classes, n_classes))
    np.add.at(obs, (t, p), 1.0)
    obs /= obs.sum()
    exp = np.outer(obs.sum(1), obs.sum(0))
    i, j = np.indices((n_classes, n_classes))
    w = (i - j) ** 2 / max((n_classes - 1) ** 2, 1)
    den = float((w * exp).sum())
    if den <= 0:
        return None
    return 1.0 - float((w * obs).sum()) / den


def label_index(label: str) -> int | None:
    """Index of a manifest label in the 4-grade order 0, 1+, 2+, 3+ (0-null and 0-ultralow are 0)."""
    from her2scope.labels import parse_score

    s = str(label).strip()
    if s in ("0-null", "0-ultralow"):
        return 0
    score = parse_score(s)
    return None if score is None else ("0", "1+", "2+", "3+").index(score)


def call_index(call: str | None) -> int | None:
    """Index of a cell-rule call in the 4-grade order (both 0 kinds are 0)."""
    if call is None:
        return None
    return max(0, CALLS.index(call) - 1)


def _calls_at(
    tables: list[tuple[np.ndarray, np.ndarray]],
    scale: float,
    cfg: CellConfig,
    center_noise_od: float | None = None,
) -> list[int]:
    out = []
    for od_raw, comp in tables:
        od = calibrate_od(od_raw, scale, cfg.dab_noise_od, center_noise_od)
        inten = intensity_class(od, cfg)
        c = slide_call(pattern_class(inten, comp, cfg), cfg)["call"]
        out.append(-1 if c is None else int(call_index(c)))  # type: ignore[arg-type]
    return out


def fit_dab_scale(
    manifest: str | Path,
    cells_dir: str | Path,
    out: str | Path | None = None,
    cfg: CellConfig | None = None,
) -> dict[str, Any]:
    """Fit the DAB-scale factor of each centre of ``manifest`` (see the module docstring).

    Calls are made with the thresholds of ``cfg`` (default: the current defaults), on the OD the
    slides measured (their own run's ``dab_scale`` undone). Needs ``<slide_id>.cells.parquet`` and ``.cells.json`` in ``cells_dir`` for the slides; slides
    without them are listed under ``missing``. Writes the result as JSON (default
    ``cells_dir/cells_fit.json``) and returns it with its ``path``.
    """
    from her2scope._io import read_parquet
    from her2scope.cohort.manifest import read_manifest

    manifest = Path(manifest)
    cells_dir = Path(cells_dir)
    df = read_manifest(manifest, scheme=None, required=("slide_id", "label")).df
    missing: list[str] = []
    per_centre: dict[str, list[tuple[np.ndarray, np.ndarray, int, str]]] = {}
    cfg = dataclasses_replace(cfg or CellConfig(), dab_scale=1.0, center_noise_od=None)
    for row in df.itertuples():
        sid = str(row.slide_id)
        lab = label_index(str(row.label))
        pq, js = cells_dir / f"{sid}.cells.parquet", cells_dir / f"{sid}.cells.json"
        if lab is None:
            raise ConfigError(
                f"manifest '{manifest}', slide '{sid}': label {row.label!r} is not a HER2 score"
            )
        if not (pq.is_file() and js.is_file()):
            missing.append(sid)
            continue
        summary = json.loads(js.read_text(encoding="utf-8"))
        used = CellConfig(**summary["config"])
        cells = read_parquet(pq, columns=["membrane_od_p90", "completeness"])
        od_raw = raw_od(
            cells["membrane_od_p90"].to_numpy(np.float32),
            used.dab_scale,
            used.dab_noise_od,
            used.center_noise_od,
        )
        per_centre.setdefault(str(row.center), []).append(
            (od_raw, cells["completeness"].to_numpy(np.float32), lab, sid)
        )
    if not per_centre:
        raise ConfigError(
            f"no cell tables found in '{cells_dir}' for the slides of '{manifest}'; run "
            "`her2scope cells SLIDE... --out` on them first"
        )
    import dataclasses

    result: dict[str, Any] = {
        "grid": [float(SCALE_GRID[0]), float(SCALE_GRID[-1])],
        "thresholds": {
            k: v
            for k, v in dataclasses.asdict(cfg).items()
            if k.startswith(("od_", "complete")) or k == "dab_noise_od"
        },
        "centers": {},
    }
    ref = cfg.calibration_reference
    if ref is not None and ref not in per_centre:
        raise ConfigError(
            f"cells-fit: calibration_reference {ref!r} has no scored slides in '{manifest}' "
            f"(centres: {', '.join(sorted(per_centre))}); score its labelled slides too"
        )

    def by_grade(rows: list[tuple[np.ndarray, np.ndarray, int, str]]) -> dict[int, np.ndarray]:
        out: dict[int, list[np.ndarray]] = {}
        for od, _, lab, _ in rows:
            out.setdefault(lab, []).append(od)
        return {g: np.concatenate(v) for g, v in out.items()}

    ref_od = by_grade(per_centre[ref]) if ref is not None else None
    result["reference"] = ref
    for centre, rows in sorted(per_centre.items()):
        tables = [(od, comp) for od, comp, _, _ in rows]
        labels = [lab for _, _, lab, _ in rows]
        measured_floor = noise_floor(by_grade(rows))
        if measured_floor is not None:  # as written to cells_fit.json and applied from it
            measured_floor = round(measured_floor, 4)
        # the reference's floor is dab_noise_od by definition (its measured one is reported)
        floor = None if centre == ref else measured_floor
        scores = []
        for s in SCALE_GRID:
            pred = _calls_at(tables, float(s), cfg, floor)
            k = quadratic_kappa(labels, [max(p, 0) for p in pred], 4)
            acc = float(np.mean(np.asarray(pred) == np.asarray(labels)))
            scores.append((k if k is not None else -1.0, acc))
        key = np.array([k + 1e-3 * a for k, a in scores])
        best = np.flatnonzero(key >= key.max() - 1e-12)
        # the widest run of consecutive best factors; its middle (geometric) is the factor
        runs = np.split(best, np.flatnonzero(np.diff(best) != 1) + 1)
        run = max(runs, key=len)
        lo, hi = float(SCALE_GRID[run[0]]), float(SCALE_GRID[run[-1]])
        scale = float(np.sqrt(lo * hi))
        method = "plateau middle"
        matched: float | None = None
        per_grade: dict[str, float] = {}
        if ref_od is not None and centre != ref:
            matched, per_grade = matched_scale(by_grade(rows), ref_od, cfg.dab_noise_od, floor)
            if matched is not None:
                scale = float(np.clip(matched, lo, hi))
                method = f"matched to centre {ref}" + (
                    " (clipped to the plateau)" if scale != matched else ""
                )
        before = quadratic_kappa(labels, [max(p, 0) for p in _calls_at(tables, 1.0, cfg)], 4)
        after_pred = _calls_at(tables, scale, cfg, floor)
        after = quadratic_kappa(labels, [max(p, 0) for p in after_pred], 4)
        result["centers"][centre] = {
            "dab_scale": round(scale, 4),
            "noise_od": None if floor is None else round(floor, 4),
            "noise_od_measured": None if measured_floor is None else round(measured_floor, 4),
            "plateau": [lo, hi],
            "method": method,
            "matched": None if matched is None else round(matched, 4),
            "matched_per_grade": {g: round(v, 4) for g, v in per_grade.items()},
            "n_slides": len(rows),
            "kappa_before": before if before is not None else float("nan"),
            "kappa_after": after if after is not None else float("nan"),
            "accuracy_after": float(np.mean(np.asarray(after_pred) == np.asarray(labels))),
        }
    result["missing"] = missing
    path = Path(out) if out is not None else cells_dir / "cells_fit.json"
    for r in result["centers"].values():  # JSON has no NaN: an undefined κ is null
        for name in ("kappa_before", "kappa_after"):
            if r[name] != r[name]:
                r[name] = None
    write_json(path, result)
    result["path"] = str(path)
    return result


def dataclasses_replace(cfg: CellConfig, **changes: Any) -> CellConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def fit_thresholds(
    membrane_od: np.ndarray,
    completeness: np.ndarray,
    true_class: np.ndarray,
    true_complete: np.ndarray,
) -> dict[str, float]:
    """OD thresholds and ``complete_min`` from cells with known classes (e.g. synthetic truth).

    Each boundary (faint, weak, strong) is the OD that best separates the two classes it lies
    between (maximal balanced accuracy of class k vs class k − 1, so the many unstained cells do
    not pull the strong boundary down); ``complete_min`` the completeness that best separates
    complete from incomplete stained membranes.
    """

    def best_split(x: np.ndarray, pos: np.ndarray) -> float:
        if pos.all() or not pos.any():
            raise ConfigError("fit_thresholds: every boundary needs cells on both sides")
        q = np.unique(np.quantile(x, np.linspace(0.005, 0.995, 199)))
        cand = (q[1:] + q[:-1]) / 2 if q.size > 1 else q  # between data values: a margin
        tpr = (x[pos][None, :] >= cand[:, None]).mean(1)
        tnr = (x[~pos][None, :] < cand[:, None]).mean(1)
        bal = (tpr + tnr) / 2
        best = np.flatnonzero(bal >= bal.max() - 1e-9)
        return float(np.median(cand[best]))

    od = np.asarray(membrane_od, np.float64)
    cls = np.asarray(true_class)
    out = {}
    for k, name in ((1, "od_faint"), (2, "od_weak"), (3, "od_strong")):
        pair = (cls == k) | (cls == k - 1)
        out[name] = best_split(od[pair], cls[pair] == k)
    stained = cls >= 1
    out["complete_min"] = best_split(
        np.asarray(completeness, np.float64)[stained], np.asarray(true_complete)[stained]
    )
    return out

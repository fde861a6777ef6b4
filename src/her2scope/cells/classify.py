"""Membrane classes of cells and the slide's ASCO/CAP call with the rule that fired, in words.

Two per-cell labels:

- the **intensity class** (``none < faint < weak_moderate < strong``) from the membrane DAB OD, the
  same four classes as the synthetic cohort's ground truth;
- the **pattern** the ASCO/CAP rules count: ``none``; ``faint_incomplete`` (perceptible staining
  that is not complete at weak–moderate or strong intensity); ``weak_moderate_complete``;
  ``strong_complete``.

The slide call (ASCO/CAP 2018; HER2-0 split into null and ultralow as in the 2023 update):
3+ strong complete in > 10 % of tumour cells; else 2+ weak–moderate or strong complete in > 10 %;
else 1+ perceptible staining in > 10 %; else 0 (ultralow) when faint staining is seen in at least
``ultralow_min_fraction`` (a noise floor) and at most 10 %; else 0 (null).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from her2scope.cells.config import CellConfig

#: Intensity classes, ordinal.
INTENSITY_CLASSES: tuple[str, ...] = ("none", "faint", "weak_moderate", "strong")
#: ASCO/CAP staining patterns, ordinal.
PATTERNS: tuple[str, ...] = (
    "none",
    "faint_incomplete",
    "weak_moderate_complete",
    "strong_complete",
)
#: Slide calls, ordinal.
CALLS: tuple[str, ...] = ("0-null", "0-ultralow", "1+", "2+", "3+")
#: QuPath colours (RGB) of the patterns.
PATTERN_COLOURS: dict[str, tuple[int, int, int]] = {
    "none": (66, 103, 178),
    "faint_incomplete": (250, 214, 75),
    "weak_moderate_complete": (245, 130, 32),
    "strong_complete": (180, 20, 20),
}


def calibrate_od(
    od: np.ndarray, scale: float, noise_od: float, center_noise_od: float | None = None
) -> np.ndarray:
    """Per-centre calibration of background-corrected DAB OD (float32, element-wise).

    ``center_noise_od`` (default ``noise_od``) is the noise floor of the centre the OD was measured
    at (what its unstained membranes measure), ``noise_od`` that of the centre the thresholds were
    set at. OD above the centre's floor is stretched by ``scale`` from there onto the reference's:
    ``noise + scale · (od − center_noise)``; OD below it (unstained) is mapped linearly onto
    0–``noise``. A weak assay (scale > 1) thus lifts stained membranes without lifting unstained
    ones into "faint"; with one floor for both, OD below it is kept. Monotone and continuous, so
    percentiles commute with it.
    """
    od = np.asarray(od, np.float32)
    n = np.float32(noise_od)
    m = n if center_noise_od is None else np.float32(center_noise_od)
    below = od * (n / m) if m > 0 and m != n else od
    return np.where(od > m, n + np.float32(scale) * (od - m), below).astype(np.float32)


def raw_od(
    od: np.ndarray, scale: float, noise_od: float, center_noise_od: float | None = None
) -> np.ndarray:
    """The inverse of :func:`calibrate_od` (measured OD from calibrated OD)."""
    od = np.asarray(od, np.float32)
    n = np.float32(noise_od)
    m = n if center_noise_od is None else np.float32(center_noise_od)
    below = od * (m / n) if n > 0 and m != n else od
    return np.where(od > n, m + (od - n) / np.float32(scale), below).astype(np.float32)


def intensity_class(membrane_od: np.ndarray, cfg: CellConfig) -> np.ndarray:
    """Index into :data:`INTENSITY_CLASSES` of each membrane OD (already calibrated)."""
    bounds = np.array([cfg.od_faint, cfg.od_weak, cfg.od_strong], np.float32)
    return np.searchsorted(bounds, np.asarray(membrane_od, np.float32), side="right").astype(
        np.int8
    )


def pattern_class(
    intensity_idx: np.ndarray, completeness: np.ndarray, cfg: CellConfig
) -> np.ndarray:
    """Index into :data:`PATTERNS` from intensity class indices and completeness (0–1)."""
    idx = np.asarray(intensity_idx)
    complete = np.asarray(completeness) >= cfg.complete_min
    out = np.where(idx >= 1, 1, 0)
    out = np.where((idx == 2) & complete, 2, out)
    out = np.where((idx == 3) & complete, 3, out)
    return out.astype(np.int8)


def slide_call(pattern_idx: np.ndarray, cfg: CellConfig) -> dict[str, Any]:
    """The ASCO/CAP call of a slide's tumour cells, with fractions, the rule and its margin.

    Returns ``call`` (one of :data:`CALLS`, or None without cells), ``rule`` (the rule that fired,
    in words), ``fractions`` (of cells per pattern), ``margin`` (distance, as a fraction of cells,
    from the nearest threshold the decision depends on) and ``borderline`` (margin below
    ``cfg.borderline_margin``: a few cells more or less would change the call).
    """
    p = np.asarray(pattern_idx)
    n = int(p.size)
    if n == 0:
        return {
            "call": None,
            "rule": "no tumour cells were found; no call",
            "n_cells": 0,
            "fractions": None,
            "margin": None,
            "borderline": False,
        }
    strong_c = float(np.count_nonzero(p == 3)) / n
    wm_c = float(np.count_nonzero(p >= 2)) / n
    stained = float(np.count_nonzero(p >= 1)) / n
    t, floor = cfg.positive_fraction, cfg.ultralow_min_fraction
    pct = t * 100
    if strong_c > t:
        call = "3+"
        rule = f"strong complete membrane staining in {strong_c:.1%} of tumour cells (> {pct:g} %)"
        margin = strong_c - t
    elif wm_c > t:
        call = "2+"
        rule = (
            f"weak–moderate complete membrane staining in {wm_c:.1%} of tumour cells (> {pct:g} %); "
            f"strong complete in {strong_c:.1%} (≤ {pct:g} %)"
        )
        margin = min(wm_c - t, t - strong_c)
    elif stained > t:
        call = "1+"
        rule = (
            f"faint/barely perceptible or incomplete membrane staining in {stained:.1%} of tumour "
            f"cells (> {pct:g} %); complete weak–moderate or strong in {wm_c:.1%} (≤ {pct:g} %)"
        )
        margin = min(stained - t, t - wm_c)
    elif stained >= floor:
        call = "0-ultralow"
        rule = (
            f"faint/barely perceptible incomplete membrane staining in {stained:.1%} of tumour "
            f"cells (≥ {floor:.0%} and ≤ {pct:g} %): HER2-0, ultralow"
        )
        margin = min(stained - floor, t - stained)
    else:
        call = "0-null"
        rule = (
            f"no membrane staining (stained cells {stained:.1%}, below the {floor:.0%} noise "
            "floor): HER2-0, null"
        )
        margin = floor - stained
    # at the null/ultralow edge (the noise floor itself) half the floor is the tolerance
    tol = cfg.borderline_margin
    if call == "0-null" or (call == "0-ultralow" and stained - floor < t - stained):
        tol = floor / 2
    fractions = {name: float(np.count_nonzero(p == i)) / n for i, name in enumerate(PATTERNS)}
    return {
        "call": call,
        "rule": rule,
        "n_cells": n,
        "fractions": fractions,
        "margin": round(float(margin), 6),
        "borderline": bool(margin < tol),
    }


def h_score(intensity_idx: np.ndarray) -> float | None:
    """H-score-like summary 0–300: Σ class × % of cells over faint (1), weak–moderate (2), strong (3).

    None without cells.
    """
    idx = np.asarray(intensity_idx)
    if idx.size == 0:
        return None
    counts = np.bincount(idx.astype(np.int64), minlength=4)[:4]
    return float(100.0 * (counts * np.arange(4)).sum() / idx.size)


def call_to_score(call: str | None) -> str | None:
    """The HER2 IHC score ("0", "1+", "2+", "3+") of a call; both 0 kinds are "0"."""
    if call is None:
        return None
    return "0" if call.startswith("0") else call

"""Bootstrap over **patients**: confidence intervals and paired model comparison (no torch).

A resample draws ``P`` patients with replacement (seeded ``numpy.random.default_rng``); each drawn
patient brings all of its slides and tiles. Tiles of one patient are never resampled on their own,
so copying a patient's tiles many times does not narrow an interval, as it would with a tile
bootstrap. Intervals are percentile intervals over the resamples in which the metric is defined (a
resample that happens to miss a class has no macro-AUC); the number of such resamples is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from her2scope.evaluate.metrics import SufficientStats, metrics_from_weights


def patient_weights(n_patients: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_patients]`` multiplicities of each patient in each resample (rows sum to P)."""
    if n_patients < 1:
        raise ValueError("the bootstrap needs at least one patient")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_boot).astype(
        np.float64
    )


def percentile_ci(values: np.ndarray, ci: float = 0.95) -> tuple[float, float, int]:
    """``(lo, hi, n_valid)``: the central ``ci`` percentile interval of the finite ``values``.

    ``lo``/``hi`` are NaN when no value is finite.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return float(lo), float(hi), int(v.size)


def bootstrap_metrics(
    stats: SufficientStats,
    weights: np.ndarray,
    ci: float = 0.95,
) -> dict[str, tuple[float, float, int]]:
    """Percentile CI ``(lo, hi, n_valid)`` of every metric over the resamples ``weights`` [B, P]."""
    samples = metrics_from_weights(stats, weights)
    return {name: percentile_ci(vals, ci) for name, vals in samples.items()}


def paired_difference(
    stats_a: SufficientStats,
    stats_b: SufficientStats,
    metric: str = "macro_auc",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap of ``metric(A) - metric(B)`` on the same patients.

    Both statistics must index the same patients in the same order (``n_units`` equal). Every
    resample draws one set of patients and evaluates both models on it. The two-sided p-value is
    ``min(1, 2 * min(#(d <= 0) + 1, #(d >= 0) + 1) / (n_valid + 1))`` over the valid resamples
    (the +1 keeps it above zero for a finite number of resamples). Returns ``difference`` (on the
    full set), ``ci``, ``p_value``, ``n_boot``, ``n_valid``; values are NaN when undefined.
    """
    if stats_a.n_units != stats_b.n_units:
        raise ValueError(
            f"paired comparison needs the same patients: {stats_a.n_units} vs {stats_b.n_units}"
        )
    ones = np.ones((1, stats_a.n_units))
    diff = float(
        metrics_from_weights(stats_a, ones)[metric][0]
        - metrics_from_weights(stats_b, ones)[metric][0]
    )
    w = patient_weights(stats_a.n_units, n_boot, seed)
    d = metrics_from_weights(stats_a, w)[metric] - metrics_from_weights(stats_b, w)[metric]
    lo, hi, n_valid = percentile_ci(d, ci)
    d = d[np.isfinite(d)]
    if n_valid:
        below = int((d <= 0).sum())
        above = int((d >= 0).sum())
        p = min(1.0, 2.0 * (min(below, above) + 1) / (n_valid + 1))
    else:
        p = float("nan")
    return {
        "metric": metric,
        "difference": diff,
        "ci": [lo, hi],
        "p_value": p,
        "n_boot": int(n_boot),
        "n_valid": n_valid,
        "seed": int(seed),
    }

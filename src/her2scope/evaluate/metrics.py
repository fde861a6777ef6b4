"""Classification metrics for ordinal HER2 classes, written for the patient bootstrap (no torch).

Every metric is computed from **per-patient sufficient statistics** (a confusion matrix, Brier sums,
calibration-bin sums and AUC rank groups per patient) weighted by how many times each patient is
drawn. The point estimate uses weight 1 for every patient; a bootstrap resample uses the
multinomial counts of a resample of patients. This makes a resample of 1,000 patients as cheap as a
matrix product, and guarantees that the tiles of one patient always move together.

Metrics (names as in ``results.json``; ``<c>`` is a class name):

- ``macro_auc``: unweighted mean of the one-vs-rest AUCs of **all** classes (scikit-learn's
  ``roc_auc_score(multi_class="ovr", average="macro")``). Undefined (``None``, with a reason) when
  any class is absent from the evaluated set; ``macro_auc_present`` is the mean over the classes
  present, under its own name. ``auc_<c>``: one-vs-rest AUC with ties counted one half.
- ``accuracy``; ``balanced_accuracy`` (mean per-class sensitivity; undefined when a class is
  absent); ``macro_f1`` (mean of ``2TP / (2TP + FP + FN)`` over all classes; undefined when a class
  is absent).
- ``sensitivity_<c>``, ``specificity_<c>``, ``ppv_<c>``, ``npv_<c>`` (undefined when their
  denominator is zero, e.g. PPV of a class never predicted).
- ``kappa_quadratic``: Cohen's kappa with quadratic weights ``(i - j)^2 / (K - 1)^2`` over the
  ordinal classes.
- ``adjacent_error_rate`` / ``nonadjacent_error_rate``: fraction of all cases called one grade off /
  two or more grades off (classes in ordinal order).
- ``brier``: mean over cases of ``sum_k (p_k - y_k)^2`` (0 best, 2 worst).
- ``ece``: expected calibration error of the top-label confidence ``max_k p_k`` in ``n_bins``
  equal-width bins ``(b/n, (b+1)/n]`` (a confidence of 0 falls in the first bin), weighted by bin size;
  a case is correct when the arg-max of its scores (ties → higher grade) is its label.

Undefined values are ``NaN`` in the arrays returned here; :mod:`her2scope.evaluate.run` turns them
into JSON ``null`` with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from her2scope.evaluate.aggregate import argmax_high

#: Scalar (not per-class) metric names, in display order.
SCALAR_METRICS: tuple[str, ...] = (
    "macro_auc",
    "macro_auc_present",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "kappa_quadratic",
    "adjacent_error_rate",
    "nonadjacent_error_rate",
    "brier",
    "ece",
)
#: Per-class metric prefixes: the metric name is ``f"{prefix}_{class}"``.
PER_CLASS_METRICS: tuple[str, ...] = ("auc", "sensitivity", "specificity", "ppv", "npv")


def metric_names(classes: Sequence[str]) -> list[str]:
    """All metric names for ``classes``, scalar metrics first, then per-class ones."""
    return [*SCALAR_METRICS, *(f"{m}_{c}" for m in PER_CLASS_METRICS for c in classes)]


@dataclass
class _AucGroups:
    """One class's one-vs-rest AUC data, sorted by score and split into tie groups."""

    unit: np.ndarray  # [N] patient index of each sorted case
    positive: np.ndarray  # [N] bool, sorted
    starts: np.ndarray  # [G] index of the first case of each tie group


@dataclass
class SufficientStats:
    """Per-patient statistics from which every metric of one level is computed."""

    classes: tuple[str, ...]
    n_units: int  # patients
    confusion: np.ndarray  # [P, K, K] counts, rows = true class, columns = called class
    brier_sum: np.ndarray  # [P] sum over the patient's cases of sum_k (p_k - y_k)^2
    n_cases: np.ndarray  # [P]
    ece_bins: np.ndarray  # [P, n_bins, 3]: count, sum of confidence, sum of correct
    auc: list[_AucGroups]


def sufficient_stats(
    y_true: np.ndarray,
    scores: np.ndarray,
    y_pred: np.ndarray,
    unit: np.ndarray,
    classes: Sequence[str],
    n_bins: int = 10,
) -> SufficientStats:
    """Build the per-patient statistics of one level.

    ``y_true`` / ``y_pred``: class indices ``[N]``; ``scores``: ``[N, K]`` probabilities (rows sum to
    1); ``unit``: ``[N]`` patient index in ``0..P-1`` (every index must occur). Raises ``ValueError``
    on inconsistent shapes, out-of-range indices or non-finite scores.
    """
    classes = tuple(classes)
    k = len(classes)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    unit = np.asarray(unit, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n = y_true.shape[0]
    if n == 0:
        raise ValueError("no cases to evaluate")
    if scores.shape != (n, k) or y_pred.shape != (n,) or unit.shape != (n,):
        raise ValueError(
            f"shape mismatch: y_true {y_true.shape}, scores {scores.shape} (expected ({n}, {k})), "
            f"y_pred {y_pred.shape}, unit {unit.shape}"
        )
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.min() < 0 or arr.max() >= k:
            raise ValueError(f"{name} has class indices outside 0..{k - 1}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    n_units = int(unit.max()) + 1
    if unit.min() < 0 or np.bincount(unit, minlength=n_units).min() == 0:
        raise ValueError("unit indices must cover 0..P-1 without gaps")

    confusion = np.zeros((n_units, k, k), dtype=np.float64)
    np.add.at(confusion, (unit, y_true, y_pred), 1.0)
    onehot = np.eye(k)[y_true]
    brier_sum = np.bincount(unit, weights=((scores - onehot) ** 2).sum(axis=1), minlength=n_units)
    n_cases = np.bincount(unit, minlength=n_units).astype(np.float64)

    conf = scores.max(axis=1)
    correct = (argmax_high(scores, axis=1) == y_true).astype(np.float64)
    bin_idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece_bins = np.zeros((n_units, n_bins, 3), dtype=np.float64)
    np.add.at(ece_bins[..., 0], (unit, bin_idx), 1.0)  # views: accumulate in place
    np.add.at(ece_bins[..., 1], (unit, bin_idx), conf)
    np.add.at(ece_bins[..., 2], (unit, bin_idx), correct)

    auc = []
    for c in range(k):
        s = scores[:, c]
        order = np.argsort(s, kind="stable")
        s_sorted = s[order]
        starts = np.concatenate([[0], np.nonzero(np.diff(s_sorted) != 0)[0] + 1])
        auc.append(_AucGroups(unit[order], y_true[order] == c, starts))
    return SufficientStats(classes, n_units, confusion, brier_sum, n_cases, ece_bins, auc)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _weighted_auc(g: _AucGroups, weights: np.ndarray, chunk: int = 128) -> np.ndarray:
    """AUC for each row of ``weights`` ``[B, P]`` (ties count one half); NaN when undefined."""
    out = np.empty(weights.shape[0])
    pos = g.positive.astype(np.float64)
    for lo in range(0, weights.shape[0], chunk):
        w = weights[lo : lo + chunk][:, g.unit]  # [b, N] weight of each sorted case
        wp = np.add.reduceat(w * pos, g.starts, axis=1)  # [b, G] positive weight per tie group
        wn = np.add.reduceat(w * (1.0 - pos), g.starts, axis=1)
        neg_below = np.cumsum(wn, axis=1) - wn
        num = (wp * (neg_below + 0.5 * wn)).sum(axis=1)
        den = wp.sum(axis=1) * wn.sum(axis=1)
        out[lo : lo + chunk] = _safe_div(num, den)
    return out


def metrics_from_weights(stats: SufficientStats, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of ``weights`` ``[B, P]`` (patient multiplicities) → ``{name: [B]}``.

    Undefined values are NaN (see the module docstring for when each metric is undefined).
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != stats.n_units:
        raise ValueError(f"weights have {w.shape[1]} columns for {stats.n_units} patients")
    classes = stats.classes
    k = len(classes)
    cm = np.einsum("bp,pij->bij", w, stats.confusion)  # [B, K, K]
    total = cm.sum(axis=(1, 2))
    tp = np.einsum("bii->bi", cm)
    true_n = cm.sum(axis=2)  # [B, K] cases of each true class
    pred_n = cm.sum(axis=1)  # [B, K] cases called each class
    fn = true_n - tp
    fp = pred_n - tp
    tn = total[:, None] - tp - fn - fp
    all_present = (true_n > 0).all(axis=1)

    out: dict[str, np.ndarray] = {}
    aucs = np.stack([_weighted_auc(g, w) for g in stats.auc], axis=1)  # [B, K]
    with np.errstate(invalid="ignore"):
        out["macro_auc"] = np.where(all_present, aucs.mean(axis=1), np.nan)
        present_aucs = np.where(true_n > 0, aucs, np.nan)
        n_present_auc = np.isfinite(present_aucs).sum(axis=1)
        out["macro_auc_present"] = np.where(
            n_present_auc > 0,
            np.nansum(present_aucs, axis=1) / np.maximum(n_present_auc, 1),
            np.nan,
        )
    sens = _safe_div(tp, true_n)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    out["accuracy"] = _safe_div(tp.sum(axis=1), total)
    out["balanced_accuracy"] = np.where(all_present, sens.mean(axis=1), np.nan)
    out["macro_f1"] = np.where(all_present, f1.mean(axis=1), np.nan)

    idx = np.arange(k)
    wq = (idx[:, None] - idx[None, :]) ** 2 / max(k - 1, 1) ** 2
    expected = (
        true_n[:, :, None] * pred_n[:, None, :] / np.where(total > 0, total, 1.0)[:, None, None]
    )
    out["kappa_quadratic"] = 1.0 - _safe_div(
        np.einsum("ij,bij->b", wq, cm), np.einsum("ij,bij->b", wq, expected)
    )
    dist = np.abs(idx[:, None] - idx[None, :])
    out["adjacent_error_rate"] = _safe_div(np.einsum("ij,bij->b", (dist == 1) * 1.0, cm), total)
    out["nonadjacent_error_rate"] = _safe_div(np.einsum("ij,bij->b", (dist >= 2) * 1.0, cm), total)
    out["brier"] = _safe_div(w @ stats.brier_sum, w @ stats.n_cases)
    bins = np.einsum("bp,pnj->bnj", w, stats.ece_bins)  # [B, n_bins, 3]
    gap = np.abs(bins[:, :, 1] - bins[:, :, 2])  # |sum conf - sum correct| = n_b |conf_b - acc_b|
    out["ece"] = _safe_div(gap.sum(axis=1), bins[:, :, 0].sum(axis=1))

    spec = _safe_div(tn, tn + fp)
    ppv = _safe_div(tp, tp + fp)
    npv = _safe_div(tn, tn + fn)
    for j, c in enumerate(classes):
        out[f"auc_{c}"] = aucs[:, j]
        out[f"sensitivity_{c}"] = sens[:, j]
        out[f"specificity_{c}"] = spec[:, j]
        out[f"ppv_{c}"] = ppv[:, j]
        out[f"npv_{c}"] = npv[:, j]
    return out


def point_metrics(stats: SufficientStats) -> dict[str, float]:
    """Every metric on the evaluated set as it is (each patient weighted once); NaN when undefined."""
    return {
        k: float(v[0]) for k, v in metrics_from_weights(stats, np.ones((1, stats.n_units))).items()
    }


def confusion_matrix(stats: SufficientStats) -> np.ndarray:
    """``[K, K]`` integer counts, rows = true class, columns = called class."""
    return stats.confusion.sum(axis=0).round().astype(np.int64)


def classes_present(stats: SufficientStats) -> list[str]:
    """The classes with at least one case among the true labels, in scheme order."""
    n_true = stats.confusion.sum(axis=(0, 2))
    return [c for c, n in zip(stats.classes, n_true, strict=True) if n > 0]

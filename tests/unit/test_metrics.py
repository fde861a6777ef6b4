"""Metrics against scikit-learn and against hand-made answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from her2scope.evaluate.metrics import (
    classes_present,
    confusion_matrix,
    metrics_from_weights,
    point_metrics,
    sufficient_stats,
)

CLASSES = ("1+", "2+", "3+")


def _random_case(seed: int, n: int = 120, k: int = 3, n_units: int = 17):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    # quantise so that ties in scores occur (AUC ties must count one half)
    p = np.exp(np.round(logits, 1))
    p /= p.sum(axis=1, keepdims=True)
    pred = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, y, pred)
    unit = np.concatenate([np.arange(n_units), rng.integers(0, n_units, n - n_units)])
    return y, p, pred, unit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_metrics_match_sklearn(seed: int) -> None:
    y, p, pred, unit = _random_case(seed)
    labels = list(range(3))
    m = point_metrics(sufficient_stats(y, p, pred, unit, CLASSES))
    np.testing.assert_allclose(
        m["macro_auc"], skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), rtol=1e-12
    )
    for j, c in enumerate(CLASSES):
        np.testing.assert_allclose(m[f"auc_{c}"], skm.roc_auc_score(y == j, p[:, j]), rtol=1e-12)
    np.testing.assert_allclose(m["accuracy"], skm.accuracy_score(y, pred))
    np.testing.assert_allclose(m["balanced_accuracy"], skm.balanced_accuracy_score(y, pred))
    np.testing.assert_allclose(m["macro_f1"], skm.f1_score(y, pred, average="macro", labels=labels))
    np.testing.assert_allclose(
        m["kappa_quadratic"], skm.cohen_kappa_score(y, pred, weights="quadratic")
    )
    sens = skm.recall_score(y, pred, average=None, labels=labels)
    ppv = skm.precision_score(y, pred, average=None, labels=labels, zero_division=np.nan)
    for j, c in enumerate(CLASSES):
        np.testing.assert_allclose(m[f"sensitivity_{c}"], sens[j])
        np.testing.assert_allclose(m[f"ppv_{c}"], ppv[j])
        # specificity and NPV are sensitivity and PPV of the complement
        np.testing.assert_allclose(m[f"specificity_{c}"], skm.recall_score(y != j, pred != j))
        np.testing.assert_allclose(m[f"npv_{c}"], skm.precision_score(y != j, pred != j))
    np.testing.assert_allclose(
        m["brier"], skm.brier_score_loss(y, p, labels=labels, scale_by_half=False)
    )
    np.testing.assert_array_equal(
        confusion_matrix(sufficient_stats(y, p, pred, unit, CLASSES)),
        skm.confusion_matrix(y, pred, labels=labels),
    )


def test_weighted_metrics_match_sklearn_sample_weight() -> None:
    """A bootstrap resample is a weighting of patients; check it against sample_weight."""
    y, p, pred, unit = _random_case(5)
    stats = sufficient_stats(y, p, pred, unit, CLASSES)
    rng = np.random.default_rng(9)
    w_units = rng.integers(0, 4, stats.n_units).astype(float)
    w_units[:3] = 1.0
    sw = w_units[unit]
    keep = sw > 0
    m = {k: v[0] for k, v in metrics_from_weights(stats, w_units[None, :]).items()}
    yk, pk, predk, swk = y[keep], p[keep], pred[keep], sw[keep]
    np.testing.assert_allclose(
        m["macro_auc"],
        skm.roc_auc_score(yk, pk, multi_class="ovr", average="macro", sample_weight=swk),
        rtol=1e-12,
    )
    np.testing.assert_allclose(m["accuracy"], skm.accuracy_score(yk, predk, sample_weight=swk))
    np.testing.assert_allclose(
        m["kappa_quadratic"],
        skm.cohen_kappa_score(yk, predk, weights="quadratic", sample_weight=swk),
    )
    np.testing.assert_allclose(
        m["macro_f1"], skm.f1_score(yk, predk, average="macro", sample_weight=swk)
    )


def test_hand_made_known_answers() -> None:
    # 4 cases, classes 0..2. true: 0, 1, 2, 2; called: 0, 2, 0, 2
    y = np.array([0, 1, 2, 2])
    pred = np.array([0, 2, 0, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    m = point_metrics(sufficient_stats(y, p, pred, np.arange(4), CLASSES))
    assert m["accuracy"] == 0.5
    # one error 1 -> 2 (adjacent), one 2 -> 0 (two grades off)
    assert m["adjacent_error_rate"] == 0.25
    assert m["nonadjacent_error_rate"] == 0.25
    # sensitivities 1, 0, 1/2
    np.testing.assert_allclose(m["balanced_accuracy"], 0.5)
    assert m["sensitivity_2+"] == 0.0
    assert math.isnan(m["ppv_2+"])  # 2+ never called: PPV undefined, not 0
    # Brier: (0.04+0.01+0.01) + (0.04+0.49+0.25) + (0.36+0.04+0.64) + (0.01+0.01+0.04) = 1.94
    np.testing.assert_allclose(m["brier"], 1.94 / 4)
    # ECE, 10 bins: conf .8 (correct), .5 (wrong: argmax 2 vs 1), .6 (wrong), .8 (correct)
    # bin (.7,.8]: 2 cases conf .8 acc 1 -> |.8-1|*2; bin (.4,.5]: |.5-0|; bin (.5,.6]: |.6-0|
    np.testing.assert_allclose(m["ece"], (0.4 + 0.5 + 0.6) / 4)
    # class-0 AUC: positives {0.8}, negatives {0.2, 0.6, 0.1} -> 1.0
    assert m["auc_1+"] == 1.0


def test_perfect_and_tied_auc() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.full((4, 2), 0.5)
    m = point_metrics(sufficient_stats(y, p, y, np.arange(4), ("a", "b")))
    assert m["auc_a"] == 0.5 and m["macro_auc"] == 0.5  # all tied -> one half
    assert m["kappa_quadratic"] == 1.0


def test_absent_class_gives_no_macro_auc() -> None:
    y = np.array([0, 0, 2, 2, 0])
    p = np.array(
        [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]]
    )
    stats = sufficient_stats(y, p, p.argmax(1), np.arange(5), CLASSES)
    m = point_metrics(stats)
    assert classes_present(stats) == ["1+", "3+"]
    assert math.isnan(m["macro_auc"])
    assert math.isnan(m["auc_2+"])
    assert math.isnan(m["balanced_accuracy"]) and math.isnan(m["macro_f1"])
    # the separately named mean over the present classes
    expected = np.mean([skm.roc_auc_score(y == 0, p[:, 0]), skm.roc_auc_score(y == 2, p[:, 2])])
    np.testing.assert_allclose(m["macro_auc_present"], expected)


def test_bad_inputs_raise() -> None:
    y = np.array([0, 1])
    p = np.array([[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="outside"):
        sufficient_stats(np.array([0, 2]), p, y, np.arange(2), ("a", "b"))
    with pytest.raises(ValueError, match="NaN"):
        sufficient_stats(y, np.array([[np.nan, 1], [0.5, 0.5]]), y, np.arange(2), ("a", "b"))
    with pytest.raises(ValueError, match="gaps"):
        sufficient_stats(y, p, y, np.array([0, 2]), ("a", "b"))

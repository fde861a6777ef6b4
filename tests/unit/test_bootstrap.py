"""Patient bootstrap: seeded, patient-level (duplicated tiles do not narrow CIs), paired comparison."""

from __future__ import annotations

import numpy as np

from her2scope.evaluate.bootstrap import (
    bootstrap_metrics,
    paired_difference,
    patient_weights,
    percentile_ci,
)
from her2scope.evaluate.metrics import sufficient_stats

CLASSES = ("1+", "2+", "3+")


def _cohort(n_patients: int = 30, seed: int = 0, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n_patients) % 3
    logits = rng.normal(scale=noise, size=(n_patients, 3)) + np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def _width(stats, metric: str, n_boot: int = 1000, seed: int = 0) -> float:
    lo, hi, _ = bootstrap_metrics(stats, patient_weights(stats.n_units, n_boot, seed))[metric]
    return hi - lo


def test_weights_are_seeded_multinomial() -> None:
    w = patient_weights(7, 1000, seed=3)
    assert w.shape == (1000, 7)
    np.testing.assert_array_equal(w.sum(axis=1), 7)
    np.testing.assert_array_equal(w, patient_weights(7, 1000, seed=3))
    assert not np.array_equal(w, patient_weights(7, 1000, seed=4))
    np.testing.assert_allclose(w.mean(axis=0), 1.0, atol=0.1)


def test_percentile_ci_ignores_undefined() -> None:
    lo, hi, n = percentile_ci(np.array([*np.arange(101.0), np.nan]), 0.9)
    np.testing.assert_allclose([lo, hi], [5.0, 95.0], rtol=1e-12)
    assert n == 101
    assert np.isnan(percentile_ci(np.array([np.nan]))[0])


def test_duplicating_a_patients_tiles_does_not_shrink_the_ci() -> None:
    y, p = _cohort()
    n = len(y)
    base = sufficient_stats(y, p, p.argmax(1), np.arange(n), CLASSES)
    w0 = _width(base, "macro_auc")
    assert w0 > 0.05

    # every patient's single tile copied 40 times: identical patient resamples, identical CI
    rep = np.repeat(np.arange(n), 40)
    dup_all = sufficient_stats(y[rep], p[rep], p[rep].argmax(1), rep, CLASSES)
    np.testing.assert_allclose(_width(dup_all, "macro_auc"), w0, rtol=1e-9)
    np.testing.assert_allclose(_width(dup_all, "accuracy"), _width(base, "accuracy"), rtol=1e-9)

    # patient 0's tile copied 200 times
    idx = np.concatenate([np.zeros(200, dtype=int), np.arange(1, n)])
    patient_boot = sufficient_stats(y[idx], p[idx], p[idx].argmax(1), idx, CLASSES)
    tile_boot = sufficient_stats(y[idx], p[idx], p[idx].argmax(1), np.arange(len(idx)), CLASSES)
    w_patient = _width(patient_boot, "accuracy")
    w_tile = _width(tile_boot, "accuracy")
    # one patient dominating the tiles makes the tile-level estimate *less* certain, not more
    assert w_patient >= _width(base, "accuracy")
    # the naive tile bootstrap believes it has 229 independent cases and narrows
    assert w_tile < 0.5 * w_patient


def test_paired_difference_identical_models() -> None:
    y, p = _cohort()
    s = sufficient_stats(y, p, p.argmax(1), np.arange(len(y)), CLASSES)
    res = paired_difference(s, s, "macro_auc", n_boot=1000, seed=1)
    assert res["difference"] == 0.0
    assert res["ci"] == [0.0, 0.0]
    assert res["p_value"] == 1.0
    assert res["n_valid"] == 1000


def test_paired_difference_better_model() -> None:
    y, p_good = _cohort(60, seed=0, noise=0.3)
    _, p_bad = _cohort(60, seed=1, noise=3.0)
    units = np.arange(60)
    good = sufficient_stats(y, p_good, p_good.argmax(1), units, CLASSES)
    bad = sufficient_stats(y, p_bad, p_bad.argmax(1), units, CLASSES)
    res = paired_difference(good, bad, "macro_auc", n_boot=1000, seed=0)
    assert res["difference"] > 0.2
    assert res["ci"][0] > 0
    assert res["p_value"] < 0.01
    flipped = paired_difference(bad, good, "macro_auc", n_boot=1000, seed=0)
    np.testing.assert_allclose(flipped["difference"], -res["difference"])
    np.testing.assert_allclose(flipped["ci"], [-res["ci"][1], -res["ci"][0]])

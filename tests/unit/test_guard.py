"""scoring.guard: when it says a call is robust, no change within the tolerance changes it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from her2scope.evaluate.aggregate import aggregate_probs
from her2scope.evaluate.calibration import ReflexPolicy, reflex_decision, slide_uncertainty
from her2scope.scoring.guard import call_is_robust, entropy_shift_bound, tolerance

CLASSES = ("1+", "2+", "3+")


def _decisions(p: np.ndarray, rule: str, policy: ReflexPolicy) -> tuple[int, bool]:
    slide_p, call = aggregate_probs(p, rule, 10.0)  # type: ignore[arg-type]
    probs = dict(zip(CLASSES, slide_p.tolist(), strict=True))
    return call, bool(reflex_decision(probs, CLASSES[call], policy)["flag"])


def _nudge(p: np.ndarray, tol: float, rng: np.random.Generator) -> np.ndarray | None:
    """``p`` moved by at most ``tol`` per entry, rows still summing to 1 (None if it left [0, 1])."""
    u = rng.uniform(-1, 1, p.shape)
    d = 0.5 * tol * (u - u.mean(axis=1, keepdims=True))
    q = p + d
    return q if (q >= 0).all() and np.abs(q - p).max() <= tol else None


@pytest.mark.parametrize("rule", ["mean", "majority", "percent"])
def test_a_robust_call_never_changes_within_the_tolerance(rule: str) -> None:
    rng = np.random.default_rng(0)
    tol = 0.02
    n_robust = n_fragile = 0
    for _ in range(300):
        n = int(rng.integers(3, 30))
        logits = rng.normal(0, rng.uniform(0.3, 4), (n, 3)) + rng.normal(0, 1.5, 3)
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        policy = ReflexPolicy(threshold=float(rng.uniform(0.2, 0.9)))
        robust, why = call_is_robust(p, CLASSES, rule, 10.0, policy, tol)
        if not robust:
            n_fragile += 1
            assert why
            continue
        n_robust += 1
        base = _decisions(p, rule, policy)
        for _ in range(30):
            q = _nudge(p, tol, rng)
            if q is not None:
                assert _decisions(q, rule, policy) == base
    assert n_robust > 50 and n_fragile > 5  # both branches were exercised


def test_near_ties_and_the_reflex_threshold_are_not_robust() -> None:
    policy = ReflexPolicy(threshold=0.5)
    tie = np.array([[0.45, 0.44, 0.11]] * 4)
    ok, why = call_is_robust(tie, CLASSES, "mean", 10.0, policy, 0.02)
    assert not ok and "top two" in why
    clear = np.array([[0.97, 0.02, 0.01]] * 4)
    assert call_is_robust(clear, CLASSES, "mean", 10.0, policy, 0.02) == (True, "")
    u = slide_uncertainty([0.8, 0.15, 0.05])
    at_threshold = ReflexPolicy(threshold=u + 0.01)
    ok, why = call_is_robust(
        np.array([[0.8, 0.15, 0.05]]), CLASSES, "mean", 10.0, at_threshold, 0.02
    )
    assert not ok and "reflex threshold" in why


def test_percent_rule_counts_ambiguous_tiles() -> None:
    policy = ReflexPolicy(threshold=0.99)
    # 1 of 10 tiles is 3+ by a hair: the 10 % rule could go either way
    p = np.array([[0.9, 0.05, 0.05]] * 9 + [[0.02, 0.485, 0.495]])
    ok, why = call_is_robust(p, CLASSES, "percent", 10.0, policy, 0.02)
    assert not ok and "percent" in why
    # the same tile clearly 3+: nothing ambiguous, exact votes
    p[-1] = [0.02, 0.08, 0.90]
    assert call_is_robust(p, CLASSES, "percent", 10.0, policy, 0.02) == (True, "")


def test_entropy_bound_holds_and_tolerance_grows_below_temperature_one() -> None:
    rng = np.random.default_rng(1)
    for _ in range(2000):
        p = rng.dirichlet(rng.uniform(0.1, 3, 3))
        d = rng.uniform(-0.02, 0.02, 3)
        q = np.clip(p + d, 0, 1)
        q_u = -sum(x * math.log(x) for x in q if x > 0) / math.log(3)
        assert abs(q_u - slide_uncertainty(p)) <= entropy_shift_bound(p, 0.02) + 1e-12
    assert tolerance(2.0) == pytest.approx(0.02) and tolerance(0.5) == pytest.approx(0.04)

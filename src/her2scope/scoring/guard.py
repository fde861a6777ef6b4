"""Is a slide's call safe from bf16 rounding? The decision margin behind predict's fast CPU path.

On a CPU with native bf16, ``her2scope predict`` runs the model in bf16 autocast (about twice the
fp32 speed) and keeps fp32's calls: a slide whose decisions sit within bf16's error of a threshold
is scored again in fp32 (:func:`call_is_robust` says which). bf16 moves calibrated tile
probabilities by a few 1e-3 (docs/performance.md: at most 4.9e-3 measured on the demo run);
:data:`GUARD_TOL` allows four times that, divided by the temperature when it is below 1 (a
temperature < 1 sharpens, and so magnifies, probability differences).

The decisions checked are every one a slide's call is made of:

- the class: for the ``mean`` rule the top two slide probabilities must differ by more than twice
  the tolerance; for the vote rules (``majority``, ``percent``) the tiles whose top two
  probabilities are that close are *ambiguous*, and the call must be the same whichever of their
  two classes they vote for;
- the reflex-FISH flag: the slide's normalised entropy must be further from the policy's threshold
  than the largest change the tolerance allows (bounded exactly per class term), and, for the
  ``her2low`` scheme, the next class's probability further than the tolerance from the equivocal
  mass.

What is reported (probabilities, uncertainty) may differ between CPUs in the third decimal; the
calls may not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Largest change of a calibrated tile probability attributed to bf16 (4x the measured maximum).
GUARD_TOL = 0.02


def tolerance(temperature: float, base: float | None = None) -> float:
    """The probability tolerance after temperature scaling (magnified when ``T < 1``)."""
    return (GUARD_TOL if base is None else base) / min(float(temperature), 1.0)


def _plogp_shift(p: float, tol: float) -> float:
    """Largest change of ``-p log p`` when ``p`` moves by at most ``tol`` within [0, 1]."""

    def h(x: float) -> float:
        return -x * math.log(x) if x > 0 else 0.0

    lo, hi = max(0.0, p - tol), min(1.0, p + tol)
    cands = [lo, hi] + ([1 / math.e] if lo < 1 / math.e < hi else [])
    return max(abs(h(x) - h(p)) for x in cands)


def entropy_shift_bound(probs: Sequence[float] | np.ndarray, tol: float) -> float:
    """Upper bound of the change of the normalised entropy when each probability moves by
    at most ``tol``."""
    p = np.asarray(probs, np.float64)
    return sum(_plogp_shift(float(x), tol) for x in p) / math.log(p.size)


def _vote_call(labels: np.ndarray, k: int, rule: str, percent_threshold: float) -> int:
    """The slide call of the vote rule ``rule`` when tile ``i`` votes for ``labels[i]``."""
    from her2scope.evaluate.aggregate import aggregate_probs

    return aggregate_probs(np.eye(k)[labels], rule, percent_threshold)[1]  # type: ignore[arg-type]


def call_is_robust(
    tile_probs: np.ndarray,
    classes: Sequence[str],
    rule: str,
    percent_threshold: float,
    policy: Any,
    tol: float,
) -> tuple[bool, str]:
    """``(True, "")`` when no change of at most ``tol`` in any calibrated tile probability can
    change the slide's class or reflex flag; else ``(False, why)``. ``policy`` is the run's
    :class:`~her2scope.evaluate.calibration.ReflexPolicy`."""
    from her2scope.evaluate.aggregate import aggregate_probs, argmax_high
    from her2scope.evaluate.calibration import slide_uncertainty
    from her2scope.labels import get_scheme

    p = np.asarray(tile_probs, np.float64)
    n, k = p.shape
    slide_p, call = aggregate_probs(p, rule, percent_threshold)  # type: ignore[arg-type]
    if rule == "mean":
        top2 = np.sort(slide_p)[-2:]
        if top2[1] - top2[0] <= 2 * tol:
            return False, f"top two slide probabilities {top2[1] - top2[0]:.4f} apart"
        slide_tol = tol
    else:
        order = np.argsort(p, axis=1)
        first, second = order[:, -1], order[:, -2]
        gap = p[np.arange(n), first] - p[np.arange(n), second]
        amb = gap <= 2 * tol
        if amb.any():
            labels = argmax_high(p, axis=1)  # as the vote rules count them
            up = labels.copy()
            down = labels.copy()
            up[amb] = np.maximum(first[amb], second[amb])
            down[amb] = np.minimum(first[amb], second[amb])
            if rule == "majority":
                counts = np.sort(np.bincount(labels, minlength=k))
                if counts[-1] - counts[-2] <= 2 * int(amb.sum()):
                    return False, f"{int(amb.sum())} ambiguous tile(s) could change the majority"
            elif {
                _vote_call(up, k, rule, percent_threshold),
                _vote_call(down, k, rule, percent_threshold),
            } != {call}:
                return False, f"{int(amb.sum())} ambiguous tile(s) could change the percent call"
        slide_tol = float(amb.sum()) / n  # each ambiguous tile moves 1/n of a vote
        if slide_tol == 0.0:
            return True, ""  # votes are exact: the flag depends on nothing bf16 can move
    u = slide_uncertainty(slide_p)
    bound = entropy_shift_bound(slide_p, slide_tol)
    if abs(u - float(policy.threshold)) <= bound:
        return False, f"uncertainty {u:.4f} within {bound:.4f} of the reflex threshold"
    low = get_scheme("her2low")
    near_mass = call + 1 < k and (
        abs(float(slide_p[call + 1]) - float(policy.equivocal_mass)) <= slide_tol
    )
    if tuple(classes) == tuple(low.classes) and near_mass:
        return False, "next-class probability near the equivocal mass"
    return True, ""

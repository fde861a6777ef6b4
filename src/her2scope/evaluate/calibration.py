"""Temperature scaling and the reflex-FISH policy, both chosen on the validation split.

``fit_calibration`` (called by training, torch-free here) fits one temperature ``T`` on the
validation tiles (``softmax(log p / T)``, the same as dividing the logits by ``T``), calls the
validation slides with the calibrated probabilities, and picks the reflex threshold from the stated
policy. The result is stored in ``RUN/calibration.json``; ``predict``, ``evaluate`` and the report
read it back with :func:`load_calibration`. Schema and policy: docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from her2scope.errors import ConfigError
from her2scope.layout import CALIBRATION_JSON

CALIBRATION_FILE = CALIBRATION_JSON
#: Temperatures searched (log-uniform bounds); a fit at a bound is reported as such.
T_BOUNDS = (0.05, 20.0)
#: Fewer validation tiles than this: no temperature is fitted (T = 1), the reason is recorded.
MIN_CALIBRATION_TILES = 30
#: A fitted temperature is kept only when it lowers the validation tile ECE by at least this much
#: (a margin: a gain within rounding noise, or a loss, keeps T = 1).
MIN_ECE_GAIN = 0.005
#: The HER2 score that is equivocal under ASCO/CAP.
EQUIVOCAL_SCORE = "2+"


def slide_uncertainty(probabilities: Sequence[float] | np.ndarray) -> float:
    """Normalised Shannon entropy of the slide probabilities: 0 = certain, 1 = uniform.

    Raises ``ValueError`` for fewer than two classes, negative values or a sum far from 1.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1 or p.size < 2:
        raise ValueError(f"need a 1-D vector of >= 2 class probabilities, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1.0) > 1e-3:
        raise ValueError(f"not a probability vector: {p.tolist()}")
    p = p / p.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(p.size))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row-wise; ``T = 1`` returns the probabilities (renormalised)."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, None)
    z = np.log(p) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    q = apply_temperature(probs, temperature)
    return float(-np.mean(np.log(np.clip(q[np.arange(len(y)), y], 1e-12, None))))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``y`` (class indices).

    Bounded scalar search over ``log T`` in :data:`T_BOUNDS`; deterministic.
    """
    from scipy.optimize import minimize_scalar

    probs = np.asarray(probs, np.float64)
    y = np.asarray(y, np.int64)
    if probs.ndim != 2 or len(probs) != len(y) or len(y) == 0:
        raise ValueError(f"need [N>0, K] probabilities and N labels, got {probs.shape}, {y.shape}")
    lo, hi = (math.log(b) for b in T_BOUNDS)
    res = minimize_scalar(
        lambda lt: _nll(probs, y, math.exp(lt)), bounds=(lo, hi), method="bounded",
        options={"xatol": 1e-4},
    )  # fmt: skip
    return float(math.exp(res.x))


def ece(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], n_bins: int = 10) -> float:
    """Top-label expected calibration error, computed by :mod:`her2scope.evaluate.metrics`."""
    from her2scope.evaluate.aggregate import argmax_high
    from her2scope.evaluate.metrics import point_metrics, sufficient_stats

    y = np.asarray(y, np.int64)
    stats = sufficient_stats(
        y, probs, argmax_high(np.asarray(probs), axis=1), np.zeros(len(y), np.int64), classes,
        n_bins=n_bins,
    )  # fmt: skip
    return float(point_metrics(stats)["ece"])


@dataclass(frozen=True)
class ReflexPolicy:
    """When a slide goes to reflex ISH/FISH.

    Flag when the call is equivocal (see :func:`equivocal`) or when the normalised entropy of the
    calibrated slide probabilities is above ``threshold``. ``threshold`` was chosen on validation
    as the largest value (midway between two observed uncertainties, for a margin) that still flags
    ``target_catch`` of the validation mis-calls, capped so that at most ``max_flag_frac`` of the
    validation slides are flagged.
    """

    threshold: float
    target_catch: float = 0.95
    max_flag_frac: float = 0.5
    equivocal_mass: float = 0.25
    description: str = ""
    validation: dict[str, Any] = field(default_factory=dict)


def equivocal(probs: dict[str, float], score: str, equivocal_mass: float) -> str | None:
    """Why a call is equivocal, or None.

    A call of a class that is exactly the 2+ score is equivocal (``study``, ``full``). A call of a
    class that merges 2+ with other scores (``her2low``: ``low`` = 1+/2+) is equivocal when the
    next-higher class holds at least ``equivocal_mass`` of the probability: the 2+ cases of
    ``low`` sit at its boundary with ``positive``.
    """
    from her2scope.labels import get_scheme

    classes = list(probs)
    if score == EQUIVOCAL_SCORE:
        return "predicted 2+ (equivocal)"
    for scheme in ("her2low",):
        s = get_scheme(scheme)
        if tuple(classes) == s.classes and EQUIVOCAL_SCORE in s.members.get(score, ()):
            i = classes.index(score)
            if i + 1 < len(classes) and probs[classes[i + 1]] >= equivocal_mass:
                up = classes[i + 1]
                return (
                    f"predicted {score} with p({up}) {probs[up]:.2f} >= {equivocal_mass:g}: "
                    "probably 2+ (equivocal)"
                )
    return None


def reflex_decision(probs: dict[str, float], score: str, policy: ReflexPolicy) -> dict[str, Any]:
    """``{"flag", "reason", "uncertainty"}`` for one slide under ``policy``."""
    u = slide_uncertainty(list(probs.values()))
    why = equivocal(probs, score, policy.equivocal_mass)
    if why is not None:
        return {"flag": True, "reason": why + ": confirm by ISH/FISH", "uncertainty": u}
    if u > policy.threshold:
        return {
            "flag": True,
            "reason": f"predicted {score} but uncertain (uncertainty {u:.3f} > {policy.threshold:.3f}"
            " chosen on validation): confirm by ISH/FISH",
            "uncertainty": u,
        }
    return {
        "flag": False,
        "reason": f"predicted {score} with uncertainty {u:.3f} <= {policy.threshold:.3f}",
        "uncertainty": u,
    }


def choose_reflex_policy(
    slide_probs: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    classes: Sequence[str],
    target_catch: float = 0.95,
    max_flag_frac: float = 0.5,
    equivocal_mass: float = 0.25,
) -> ReflexPolicy:
    """The reflex threshold from validation slides (calibrated probabilities, labels, calls).

    Policy: flag the fewest slides such that at least ``target_catch`` of the mis-called slides are
    flagged (the equivocal rule counts), but never more than ``max_flag_frac`` of the slides. With
    no mis-call the threshold is 1.0 (only the equivocal rule flags).
    """
    classes = list(classes)
    if not 0.0 < target_catch <= 1.0 or not 0.0 < max_flag_frac <= 1.0:
        raise ConfigError(
            f"reflex policy: target_catch {target_catch} and max_flag_frac {max_flag_frac} must be "
            "in (0, 1]"
        )
    n = len(y)
    u = np.array([slide_uncertainty(p) for p in slide_probs])
    eq = np.array(
        [
            equivocal(dict(zip(classes, map(float, p), strict=True)), classes[k], equivocal_mass)
            is not None
            for p, k in zip(slide_probs, pred, strict=True)
        ],
        dtype=bool,
    )
    wrong = np.asarray(pred) != np.asarray(y)
    n_wrong = int(wrong.sum())

    def flagged(t: float) -> np.ndarray:
        return eq | (u > t)

    # candidate thresholds: 1.0 and midpoints between consecutive distinct uncertainties
    levels = np.unique(u)
    cands = [1.0, *((levels[:-1] + levels[1:]) / 2)[::-1].tolist()]
    if len(levels):
        cands.append(max(0.0, float(levels[0]) / 2))
    chosen, why = 1.0, "no validation mis-call: only the equivocal rule flags"
    if n_wrong:
        chosen, why = 1.0, ""  # the fewest flags, if even they exceed the cap
        for t in cands:  # from the highest threshold (fewest flags) down
            f = flagged(t)
            if f.mean() > max_flag_frac + 1e-12:
                break
            chosen = t
            if (f & wrong).sum() >= target_catch * n_wrong - 1e-9:
                why = f"flags >= {target_catch:.0%} of the validation mis-calls"
                break
        else:  # pragma: no cover - the lowest candidate flags every non-equivocal slide
            why = "lowest threshold"
        if not why:
            why = f"capped: at most {max_flag_frac:.0%} of validation slides flagged"
    f = flagged(chosen)
    val = {
        "n_slides": n,
        "n_miscalls": n_wrong,
        "fraction_flagged": float(f.mean()) if n else None,
        "miscalls_caught": float((f & wrong).sum() / n_wrong) if n_wrong else None,
        "why": why,
    }
    desc = (
        f"flag 2+/equivocal calls, and any call whose calibrated slide uncertainty exceeds "
        f"{chosen:.3f}: the fewest flags catching >= {target_catch:.0%} of validation mis-calls, "
        f"at most {max_flag_frac:.0%} of slides flagged"
    )
    return ReflexPolicy(chosen, target_catch, max_flag_frac, equivocal_mass, desc, val)


@dataclass(frozen=True)
class Calibration:
    """What ``RUN/calibration.json`` holds."""

    temperature: float
    ece_before: float | None
    ece_after: float | None
    n_val_tiles: int
    policy: ReflexPolicy
    level: str = "tile"  # temperature fitted on tiles; ECE reported on the same tiles
    note: str = ""  # why T = 1 was kept, or that the fit hit a search bound

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["method"] = (
            "temperature scaling: p = softmax(log(p_model) / T), fitted on validation tiles"
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = CALIBRATION_FILE) -> Calibration:
        try:
            pol = dict(d["policy"])
            t = float(d["temperature"])
            policy = ReflexPolicy(
                threshold=float(pol["threshold"]),
                target_catch=float(pol.get("target_catch", 0.95)),
                max_flag_frac=float(pol.get("max_flag_frac", 0.5)),
                equivocal_mass=float(pol.get("equivocal_mass", 0.25)),
                description=str(pol.get("description", "")),
                validation=dict(pol.get("validation", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"'{source}': not a calibration file ({exc}); retrain the run"
            ) from None
        if not (math.isfinite(t) and t > 0):
            raise ConfigError(f"'{source}': temperature {t} must be a positive number")
        return cls(
            t, d.get("ece_before"), d.get("ece_after"), int(d.get("n_val_tiles", 0)), policy,
            str(d.get("level", "tile")), str(d.get("note", "")),
        )  # fmt: skip


def identity_calibration(reflex_uncertainty: float) -> Calibration:
    """For runs without ``calibration.json``: T = 1 and the configured fixed threshold."""
    policy = ReflexPolicy(
        threshold=float(reflex_uncertainty),
        description=(
            f"uncalibrated run (no {CALIBRATION_FILE}): fixed threshold "
            f"evaluate.reflex_uncertainty={reflex_uncertainty:g}"
        ),
    )
    return Calibration(1.0, None, None, 0, policy, "none")


def load_calibration(run_dir: str | Path, reflex_uncertainty: float = 0.5) -> Calibration:
    """The run's calibration, or :func:`identity_calibration` when the run has none."""
    import json

    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return identity_calibration(reflex_uncertainty)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"'{path}': cannot read it ({exc}); retrain or delete it") from None
    return Calibration.from_dict(d, str(path))


def fit_calibration(
    tile_probs: np.ndarray,
    tiles: Any,
    classes: Sequence[str],
    rule: str,
    percent_threshold: float,
    n_bins: int = 10,
    target_catch: float = 0.95,
    max_flag_frac: float = 0.5,
    equivocal_mass: float = 0.25,
) -> Calibration:
    """Temperature on validation tiles, then the reflex policy on validation slides.

    ``tiles`` has ``slide_id`` and ``label`` (class names) aligned with ``tile_probs``.
    """
    from her2scope.evaluate.aggregate import aggregate_probs

    classes = list(classes)
    y = np.array([classes.index(str(v)) for v in tiles["label"]], np.int64)
    note = ""
    if len(y) < MIN_CALIBRATION_TILES:
        t = 1.0
        note = (
            f"only {len(y)} validation tiles (< {MIN_CALIBRATION_TILES}): no temperature fitted, "
            "T = 1"
        )
    else:
        t = fit_temperature(tile_probs, y)
        if min(abs(math.log(t / b)) for b in T_BOUNDS) < 1e-2:
            note = (
                f"temperature {t:.3g} at the search bound {T_BOUNDS}: the model is close to "
                "chance (T high) or certain (T low) on validation; calibration is unreliable"
            )
    cal = apply_temperature(tile_probs, t)
    before, after = ece(y, tile_probs, classes, n_bins), ece(y, cal, classes, n_bins)
    if t != 1.0 and not after <= before - MIN_ECE_GAIN:
        note = (
            f"the fitted temperature {t:.3g} (NLL) did not lower the validation ECE by "
            f"{MIN_ECE_GAIN} ({before:.4f} -> {after:.4f}): T = 1 kept"
        )
        t, cal, after = 1.0, tile_probs, before
    slide_ids = np.asarray(tiles["slide_id"]).astype(str)
    sp, sy, spred = [], [], []
    for sid in dict.fromkeys(slide_ids):
        m = slide_ids == sid
        sp.append(cal[m].mean(axis=0))
        sy.append(int(y[m][0]))
        spred.append(int(aggregate_probs(cal[m], rule, percent_threshold)[1]))  # type: ignore[arg-type]
    policy = choose_reflex_policy(
        np.array(sp), np.array(sy), np.array(spred), classes, target_catch, max_flag_frac,
        equivocal_mass,
    )  # fmt: skip
    return Calibration(t, before, after, len(y), policy, note=note)

"""Slide uncertainty and the reflex-FISH rule.

ASCO/CAP practice sends IHC 2+ (equivocal) cases to in-situ hybridisation. her2scope adds a safety
net for the model: a predicted 1+ or 3+ whose slide probabilities are uncertain is flagged too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: The equivocal class that always goes to reflex FISH.
EQUIVOCAL = "2+"


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


def reflex_fish(
    probabilities: Mapping[str, float], score: str, threshold: float
) -> dict[str, object]:
    """``{"flag": bool, "reason": str, "uncertainty": float}`` for one slide.

    Flag when ``score`` is 2+ (equivocal), or when any other score's uncertainty
    (:func:`slide_uncertainty`) is above ``threshold`` (``evaluate.reflex_uncertainty``).
    """
    if score not in probabilities:
        raise ValueError(f"score '{score}' is not one of the classes {list(probabilities)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"reflex uncertainty threshold must be in [0, 1], got {threshold}")
    u = slide_uncertainty(list(probabilities.values()))
    if score == EQUIVOCAL:
        return {
            "flag": True,
            "reason": "predicted 2+ (equivocal): confirm by ISH/FISH",
            "uncertainty": u,
        }
    if u > threshold:
        return {
            "flag": True,
            "reason": f"predicted {score} but uncertain (uncertainty {u:.3f} > {threshold:g}): "
            "confirm by ISH/FISH",
            "uncertainty": u,
        }
    return {
        "flag": False,
        "reason": f"predicted {score} with uncertainty {u:.3f} <= {threshold:g}",
        "uncertainty": u,
    }

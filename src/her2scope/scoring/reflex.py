"""Slide uncertainty and the reflex-FISH rule.

ASCO/CAP practice sends IHC 2+ (equivocal) cases to in-situ hybridisation. her2scope adds a safety
net for the model: a predicted 1+ or 3+ whose slide probabilities are uncertain is flagged too.
``predict`` and the report use the run's policy chosen on validation
(:func:`her2scope.evaluate.calibration.reflex_decision`); :func:`reflex_fish` is the fixed-threshold
rule for runs without ``calibration.json``.
"""

from __future__ import annotations

from collections.abc import Mapping

from her2scope.evaluate.calibration import slide_uncertainty

#: The equivocal class that always goes to reflex FISH.
EQUIVOCAL = "2+"


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

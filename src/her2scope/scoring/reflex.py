"""Slide uncertainty and the reflex-FISH rule.

ASCO/CAP practice sends IHC 2+ (equivocal) cases to in-situ hybridisation. her2scope adds a safety
net for the model: a predicted 1+ or 3+ whose slide probabilities are uncertain is flagged too.
``predict`` and the report use the run's policy chosen on validation
(:func:`her2scope.evaluate.calibration.reflex_decision`); :func:`reflex_fish` is the fixed-threshold
rule for runs without ``calibration.json``. :func:`reflex_table` is the per-slide list the report
shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from her2scope.evaluate.calibration import slide_uncertainty

if TYPE_CHECKING:
    import pandas as pd

    from her2scope.evaluate.aggregate import Rule
    from her2scope.evaluate.calibration import ReflexPolicy

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


def reflex_table(
    pred: pd.DataFrame,
    policy: ReflexPolicy,
    rule: Rule = "mean",
    percent_threshold: float = 10.0,
) -> pd.DataFrame:
    """One row per slide of a tile predictions table (``prob_<class>`` columns): ``slide_id,
    patient_id, label, score, prob_<class>..., uncertainty, reflex_fish, reason``.

    Tiles are aggregated per slide with ``rule`` (:func:`her2scope.evaluate.aggregate.aggregate`,
    as evaluation does); the flag is :func:`~her2scope.evaluate.calibration.reflex_decision` under
    ``policy`` (the run's, from ``load_calibration(run_dir, ...).policy``; a run without
    ``calibration.json`` gets the fixed threshold ``evaluate.reflex_uncertainty``).
    """
    import pandas as pd

    from her2scope.evaluate.aggregate import aggregate
    from her2scope.evaluate.calibration import reflex_decision

    classes = [c[len("prob_") :] for c in pred.columns if c.startswith("prob_")]
    slides = aggregate(
        pred, by="slide_id", rule=rule, classes=classes, percent_threshold=percent_threshold
    )
    rows = []
    for _, r in slides.iterrows():
        probs = {c: float(r[f"prob_{c}"]) for c in classes}
        flag = reflex_decision(probs, str(r["pred"]), policy)
        rows.append(
            {
                "slide_id": r["slide_id"],
                "patient_id": r.get("patient_id", ""),
                "label": r.get("label", ""),
                "score": str(r["pred"]),
                **{f"prob_{c}": probs[c] for c in classes},
                "uncertainty": float(flag["uncertainty"]),
                "reflex_fish": bool(flag["flag"]),
                "reason": str(flag["reason"]),
            }
        )
    return pd.DataFrame(rows)

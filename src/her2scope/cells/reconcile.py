"""Reconciliation of the cell-rule call with the CNN's call of `her2scope predict`.

For a slide scored by both, the two HER2 scores are compared on the 0 / 1+ / 2+ / 3+ scale (both
kinds of 0 are 0). A slide whose calls differ gets ``review: true`` with both calls and the
difference in grades; the set of slides gets an agreement table (confusion matrix and quadratic
κ). Predict's own files are only read, never changed: the reconciliation is written into the
cell stage's outputs (``<slide_id>.cells.json`` and ``cells_agreement.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from her2scope.cells.fit import label_index, quadratic_kappa

#: File name of predict's per-slide result (docs/predict.md).
PREDICT_SUFFIX = ".her2scope.json"
GRADES: tuple[str, ...] = ("0", "1+", "2+", "3+")


def reconcile(cell_summary: dict[str, Any], predict_dir: str | Path) -> dict[str, Any] | None:
    """The reconciliation record of one slide, or None when predict has no result for it.

    ``cell_summary`` is a ``<slide_id>.cells.json`` object. A CNN result that is not a HER2 score
    (a grouped label scheme such as ``low``) or was not scored (QC failed) is reported as not
    comparable, with the reason.
    """
    path = Path(predict_dir) / f"{cell_summary['slide_id']}{PREDICT_SUFFIX}"
    if not path.is_file():
        return None
    try:
        pred = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"source": str(path), "comparable": False, "reason": f"unreadable ({exc})"}
    cnn = pred.get("score") if isinstance(pred, dict) else None
    return reconcile_call(cell_summary, cnn, str(path))


def reconcile_call(cell_summary: dict[str, Any], cnn: str | None, source: str) -> dict[str, Any]:
    """The reconciliation record of one slide's cell-rule call with a CNN score (None: unscored).

    ``source`` says where the CNN score came from (a predict JSON, a run's predictions).
    """
    cell = cell_summary.get("score")
    rec: dict[str, Any] = {
        "source": source,
        "cnn_score": cnn,
        "cell_call": cell_summary.get("call"),
    }
    ci = None if cnn is None else label_index(str(cnn))
    ki = None if cell is None else label_index(str(cell))
    if ci is None or ki is None:
        why = (
            "the CNN did not score the slide"
            if cnn is None
            else f"CNN class {cnn!r} is not a HER2 score"
        )
        if ki is None:
            why = "no cells were found"
        rec.update(comparable=False, reason=why, review=True)
        return rec
    diff = ki - ci
    rec.update(
        comparable=True,
        agree=diff == 0,
        grade_difference=int(diff),
        review=diff != 0,
        reason=(
            "CNN and cell rules agree"
            if diff == 0
            else f"CNN says {GRADES[ci]}, the cell rules say {GRADES[ki]} "
            f"({'higher' if diff > 0 else 'lower'} by {abs(diff)}): review the slide"
        ),
    )
    return rec


def agreement_table(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Confusion matrix (rows CNN, columns cell rules; 0/1+/2+/3+), agreement and quadratic κ."""
    pairs = [
        (label_index(str(r["cnn_score"])), label_index(str(r["cell_call"])))
        for r in records
        if r.get("comparable")
    ]
    conf = np.zeros((4, 4), int)
    for c, k in pairs:
        conf[c, k] += 1
    n = len(pairs)
    kappa = quadratic_kappa([c for c, _ in pairs], [k for _, k in pairs], 4) if n else None  # type: ignore[misc]
    return {
        "n_slides": n,
        "order": list(GRADES),
        "rows": "CNN score",
        "columns": "cell-rule score",
        "confusion": conf.tolist(),
        "agreement": float(np.trace(conf) / n) if n else None,
        "kappa_quadratic": kappa,
        "n_review": sum(1 for r in records if r.get("review")),
    }

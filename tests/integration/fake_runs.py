"""Hand-made evaluation runs (predictions with known structure, results.json from them) shared
by the evaluate and compare tests (plain functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from her2scope._io import write_json
from her2scope.evaluate.config import EvaluateConfig
from her2scope.evaluate.run import evaluate_predictions

CLASSES = ["1+", "2+", "3+"]


def _predictions(
    labels: list[str], tiles_per_slide: int = 5, sharp: float = 2.0, seed: int = 0
) -> pd.DataFrame:
    """One patient per label, two slides each; tile probabilities lean toward the true class."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, lab in enumerate(labels):
        for s in range(2):
            for t in range(tiles_per_slide):
                logit = rng.normal(size=3) + sharp * np.eye(3)[CLASSES.index(lab)]
                prob = np.exp(logit) / np.exp(logit).sum()
                rows.append(
                    {
                        "slide_id": f"P{p:02d}_S{s}",
                        "patient_id": f"P{p:02d}",
                        "center": "B",
                        "label": lab,
                        "x": 256 * t,
                        "y": 0,
                        **{f"prob_{c}": v for c, v in zip(CLASSES, prob, strict=True)},
                    }
                )
    return pd.DataFrame(rows)


def _fake_run(path: Path, pred: pd.DataFrame, name: str, cfg: EvaluateConfig) -> Path:
    path.mkdir(parents=True)
    pred.to_parquet(path / "predictions.parquet", index=False)
    res = evaluate_predictions(pred, CLASSES, cfg)
    write_json(
        path / "results.json", {"model_name": name, "split": "test", "synthetic": True, **res}
    )
    return path

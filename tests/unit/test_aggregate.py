"""Aggregation rules on small hand-made tables with known slide/patient outcomes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from her2scope.errors import ConfigError
from her2scope.evaluate.aggregate import aggregate, aggregate_probs, argmax_high

CLASSES = ["1+", "2+", "3+"]


def _tiles(rows: list[tuple[str, str, str, tuple[float, float, float]]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "slide_id": s,
                "patient_id": p,
                "label": lab,
                **dict(zip([f"prob_{c}" for c in CLASSES], pr, strict=True)),
            }
            for s, p, lab, pr in rows
        ]
    )


def test_argmax_ties_go_to_higher_grade() -> None:
    np.testing.assert_array_equal(
        argmax_high(np.array([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4], [0.6, 0.2, 0.2]]), axis=1),
        [1, 2, 0],
    )


def test_mean_rule() -> None:
    probs = np.array([[0.6, 0.3, 0.1], [0.0, 0.3, 0.7], [0.6, 0.3, 0.1]])
    scores, call = aggregate_probs(probs, "mean")
    np.testing.assert_allclose(scores, [0.4, 0.3, 0.3])
    assert call == 0
    # exact tie of means between 1+ and 3+ -> higher grade
    scores, call = aggregate_probs(np.array([[0.5, 0.0, 0.5]]), "mean")
    assert call == 2


def test_majority_rule_and_tie() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.0, 0.2, 0.8]])
    scores, call = aggregate_probs(probs, "majority")
    np.testing.assert_allclose(scores, [0.25, 0.5, 0.25])
    assert call == 1
    tie = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1]])  # one vote each for 1+ and 2+
    assert aggregate_probs(tie, "majority")[1] == 1


def test_percent_rule_counts_grade_or_higher() -> None:
    # 20 tiles: 17 x 1+, 2 x 2+, 1 x 3+  ->  >= 3+: 5 %, >= 2+: 15 %
    probs = np.array([[0.8, 0.1, 0.1]] * 17 + [[0.1, 0.8, 0.1]] * 2 + [[0.1, 0.1, 0.8]])
    votes, call = aggregate_probs(probs, "percent", percent_threshold=10.0)
    np.testing.assert_allclose(votes, [0.85, 0.10, 0.05])
    assert call == 1  # 2+ reached by 15 % >= 10 %, 3+ by 5 % only
    assert aggregate_probs(probs, "percent", percent_threshold=5.0)[1] == 2  # exactly 5 % counts
    assert aggregate_probs(probs, "percent", percent_threshold=20.0)[1] == 0
    # majority on the same tiles says 1+
    assert aggregate_probs(probs, "majority")[1] == 0


def test_aggregate_table_slide_and_patient() -> None:
    df = _tiles(
        [
            ("S1", "P1", "2+", (0.7, 0.2, 0.1)),
            ("S1", "P1", "2+", (0.1, 0.6, 0.3)),
            ("S1", "P1", "2+", (0.1, 0.7, 0.2)),
            ("S2", "P1", "3+", (0.0, 0.2, 0.8)),
            ("S3", "P2", "1+", (0.9, 0.1, 0.0)),
        ]
    )
    slides = aggregate(df, "slide_id", "mean", CLASSES)
    assert list(slides["slide_id"]) == ["S1", "S2", "S3"]
    assert list(slides["n_tiles"]) == [3, 1, 1]
    assert list(slides["pred"]) == ["2+", "3+", "1+"]
    np.testing.assert_allclose(
        slides.loc[0, ["prob_1+", "prob_2+", "prob_3+"]].to_numpy(float), [0.3, 0.5, 0.2]
    )
    assert list(slides["patient_id"]) == ["P1", "P1", "P2"]

    patients = aggregate(df, "patient_id", "majority", CLASSES)
    assert list(patients["patient_id"]) == ["P1", "P2"]
    # P1 tiles pooled: votes 1+, 2+, 2+, 3+ -> 2+; labels 2+ and 3+ -> highest grade 3+
    assert list(patients["pred"]) == ["2+", "1+"]
    assert list(patients["label"]) == ["3+", "1+"]
    np.testing.assert_allclose(
        patients.loc[0, ["prob_1+", "prob_2+", "prob_3+"]].to_numpy(float), [0.25, 0.5, 0.25]
    )
    pct = aggregate(df, "patient_id", "percent", CLASSES, percent_threshold=25.0)
    assert list(pct["pred"]) == ["3+", "1+"]  # 1 of 4 tiles of P1 is 3+ = 25 %


def test_aggregate_errors() -> None:
    df = _tiles([("S1", "P1", "2+", (0.7, 0.2, 0.1))])
    with pytest.raises(ValueError, match="prob_4\\+"):
        aggregate(df, "slide_id", "mean", [*CLASSES, "4+"])
    with pytest.raises(ConfigError, match="median"):
        aggregate(df, "slide_id", "median", CLASSES)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="percent_threshold"):
        aggregate(df, "slide_id", "percent", CLASSES, percent_threshold=0)
    with pytest.raises(ValueError, match="empty"):
        aggregate(df.iloc[:0], "slide_id", "mean", CLASSES)

"""Reflex-FISH rule and slide uncertainty on hand-set probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from her2scope.scoring.reflex import reflex_fish, slide_uncertainty
from her2scope.scoring.score import aggregate_tiles, parse_shard, slide_id_of


def test_uncertainty_extremes_and_value() -> None:
    assert slide_uncertainty([1.0, 0.0, 0.0]) == 0.0
    assert slide_uncertainty([1 / 3, 1 / 3, 1 / 3]) == pytest.approx(1.0)
    p = [0.5, 0.5, 0.0]
    assert slide_uncertainty(p) == pytest.approx(math.log(2) / math.log(3))


@pytest.mark.parametrize("bad", [[0.5], [0.7, 0.7], [-0.1, 1.1], [np.nan, 1.0]])
def test_uncertainty_rejects_non_probabilities(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        slide_uncertainty(bad)


def test_2plus_always_flagged_even_when_certain() -> None:
    r = reflex_fish({"1+": 0.0, "2+": 1.0, "3+": 0.0}, "2+", threshold=0.5)
    assert r["flag"] is True
    assert "2+" in str(r["reason"])


def test_confident_1plus_and_3plus_not_flagged() -> None:
    for score, p in (("1+", [0.95, 0.04, 0.01]), ("3+", [0.01, 0.04, 0.95])):
        r = reflex_fish(dict(zip(("1+", "2+", "3+"), p, strict=True)), score, threshold=0.5)
        assert r["flag"] is False, r
        assert r["uncertainty"] < 0.5


def test_uncertain_3plus_flagged_and_threshold_is_strict() -> None:
    probs = {"1+": 0.1, "2+": 0.35, "3+": 0.55}
    u = slide_uncertainty(list(probs.values()))
    assert 0.5 < u < 1.0
    assert reflex_fish(probs, "3+", threshold=0.5)["flag"] is True
    assert "uncertain" in str(reflex_fish(probs, "3+", threshold=0.5)["reason"])
    assert reflex_fish(probs, "3+", threshold=u)["flag"] is False  # equal is not above
    assert reflex_fish(probs, "3+", threshold=u - 1e-6)["flag"] is True


def test_reflex_rejects_unknown_score_and_bad_threshold() -> None:
    with pytest.raises(ValueError, match="not one of the classes"):
        reflex_fish({"1+": 0.5, "3+": 0.5}, "2+", threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        reflex_fish({"1+": 0.5, "3+": 0.5}, "1+", threshold=1.5)


def test_aggregate_rules() -> None:
    classes = ("1+", "2+", "3+")
    # 6 tiles: 3 predicted 1+ (weakly), 2 predicted 3+ (strongly), 1 predicted 2+
    probs = np.array(
        [[0.5, 0.3, 0.2]] * 3 + [[0.0, 0.05, 0.95]] * 2 + [[0.1, 0.8, 0.1]], dtype=np.float64
    )
    mean, score, pct = aggregate_tiles(probs, classes, "mean", 10.0)
    np.testing.assert_allclose(mean, probs.mean(axis=0))
    assert score == "3+"  # mean probabilities: 1+ 0.267, 2+ 0.3, 3+ 0.433
    np.testing.assert_allclose(pct, [50.0, 100 / 6, 100 / 3])
    assert aggregate_tiles(probs, classes, "majority", 10.0)[1] == "1+"
    assert aggregate_tiles(probs, classes, "percent", 10.0)[1] == "3+"
    # percent: the highest grade k such that >= X % of tiles are graded k or higher (the same
    # rule as `her2scope evaluate`): >=3+ is 33 %, >=2+ is 50 %, >=1+ is 100 %
    assert aggregate_tiles(probs, classes, "percent", 40.0)[1] == "2+"
    assert aggregate_tiles(probs, classes, "percent", 60.0)[1] == "1+"


def test_shard_parsing_and_slide_ids() -> None:
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard("3/4") == (3, 4)
    from her2scope.errors import ConfigError

    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    assert slide_id_of("/x/P01_A.svs") == "P01_A"
    assert slide_id_of("P02.ome.tiff") == "P02"

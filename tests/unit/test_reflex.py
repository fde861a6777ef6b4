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


# ---- calibration and the reflex policy chosen on validation --------------------------------

from her2scope.evaluate.calibration import (  # noqa: E402
    Calibration,
    apply_temperature,
    choose_reflex_policy,
    ece,
    equivocal,
    fit_temperature,
    identity_calibration,
    load_calibration,
    reflex_decision,
)

CLASSES = ("1+", "2+", "3+")


def _overconfident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softened probabilities, reported sharpened (T_true = 2.5)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 3))
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in true_p])
    sharp = np.exp(2.5 * z) / np.exp(2.5 * z).sum(1, keepdims=True)
    return sharp, y


def test_temperature_recovers_the_overconfidence_and_lowers_ece() -> None:
    probs, y = _overconfident()
    t = fit_temperature(probs, y)
    assert t == pytest.approx(2.5, rel=0.2)
    cal = apply_temperature(probs, t)
    np.testing.assert_allclose(cal.sum(1), 1.0, atol=1e-12)
    assert (cal.argmax(1) == probs.argmax(1)).all()  # temperature never changes a call
    before, after = ece(y, probs, CLASSES), ece(y, cal, CLASSES)
    assert after < 0.6 * before


def test_temperature_one_is_the_identity() -> None:
    probs, _ = _overconfident(20)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, rtol=1e-9, atol=1e-12)


def test_policy_flags_the_fewest_slides_that_catch_the_target_of_miscalls() -> None:
    # 10 validation slides, all called 1+ or 3+ (no equivocal call); 2 mis-calls, the most
    # uncertain ones sit at entropies 0.6 and 0.4, correct calls at 0.1 … 0.5
    p_at = {  # slide probabilities with a chosen normalised entropy
        u: _probs_with_entropy(u) for u in (0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6)
    }
    us = [0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.1, 0.2]
    probs = np.array([p_at[u] for u in us])
    pred = np.zeros(10, int)  # all called 1+
    y = np.zeros(10, int)
    y[[4, 7]] = 2  # the slides at 0.4 and 0.6 are really 3+
    pol = choose_reflex_policy(probs, y, pred, CLASSES, target_catch=0.95, max_flag_frac=0.8)
    # catching both needs u > t for 0.4: t midway between 0.3 and 0.4
    assert pol.threshold == pytest.approx(
        slide_uncertainty(p_at[0.3]) / 2 + slide_uncertainty(p_at[0.4]) / 2
    )
    assert pol.validation["miscalls_caught"] == 1.0
    assert pol.validation["fraction_flagged"] == pytest.approx(0.4)  # 0.4, 0.45, 0.5, 0.6
    # a cap of 20 % flags only the two most uncertain and says so
    capped = choose_reflex_policy(probs, y, pred, CLASSES, target_catch=0.95, max_flag_frac=0.2)
    assert capped.validation["fraction_flagged"] == pytest.approx(0.2)
    assert capped.validation["miscalls_caught"] == 0.5
    assert "capped" in capped.validation["why"]


def test_policy_without_miscalls_flags_only_equivocal_calls() -> None:
    probs = np.array([_probs_with_entropy(0.3), _probs_with_entropy(0.5)])
    pol = choose_reflex_policy(probs, np.array([0, 0]), np.array([0, 0]), CLASSES)
    assert pol.threshold == 1.0 and pol.validation["fraction_flagged"] == 0.0


def _probs_with_entropy(u: float) -> np.ndarray:
    """A 3-class vector (a, b, b) whose normalised entropy is ``u`` (bisection)."""
    lo, hi = 1 / 3, 1.0
    for _ in range(80):
        a = (lo + hi) / 2
        p = np.array([a, (1 - a) / 2, (1 - a) / 2])
        if slide_uncertainty(p) > u:
            lo = a
        else:
            hi = a
    return p


def test_every_scheme_has_an_equivocal_rule() -> None:
    assert equivocal({"1+": 0.2, "2+": 0.5, "3+": 0.3}, "2+", 0.25) is not None
    assert equivocal({"0": 0.1, "1+": 0.2, "2+": 0.5, "3+": 0.2}, "2+", 0.25) is not None
    low = {"0": 0.1, "low": 0.6, "positive": 0.3}
    assert "2+" in str(equivocal(low, "low", 0.25))  # low next to positive: probably 2+
    assert equivocal({"0": 0.3, "low": 0.65, "positive": 0.05}, "low", 0.25) is None
    assert equivocal({"0": 0.05, "low": 0.15, "positive": 0.8}, "positive", 0.25) is None


def test_reflex_decision_follows_the_stored_policy(tmp_path) -> None:
    import json

    cal = Calibration(
        1.7, 0.2, 0.05, 100,
        choose_reflex_policy(np.array([_probs_with_entropy(0.2)]), np.array([2]), np.array([0]), CLASSES),
    )  # fmt: skip
    (tmp_path / "calibration.json").write_text(json.dumps(cal.to_dict()))
    back = load_calibration(tmp_path)
    assert back.temperature == 1.7 and back.policy.threshold == cal.policy.threshold
    p = dict(zip(CLASSES, _probs_with_entropy(0.5), strict=True))
    assert reflex_decision(p, "1+", back.policy)["flag"] is (back.policy.threshold < 0.5)
    assert reflex_decision({"1+": 0.1, "2+": 0.8, "3+": 0.1}, "2+", back.policy)["flag"] is True
    # a run without calibration.json: T = 1 and the configured threshold
    plain = load_calibration(tmp_path / "nothing", reflex_uncertainty=0.4)
    assert plain == identity_calibration(0.4) and plain.temperature == 1.0


def test_policy_never_flags_more_than_the_equivocal_calls_need_when_capped() -> None:
    # 3 of 4 slides are called 2+ (always flagged): 75 % > the 50 % cap already; the 1+ mis-call
    # must not push the threshold down to flag everything
    probs = np.array([[0.1, 0.8, 0.1]] * 3 + [list(_probs_with_entropy(0.6))])
    pred = np.array([1, 1, 1, 0])
    y = np.array([1, 1, 1, 2])
    pol = choose_reflex_policy(probs, y, pred, CLASSES, max_flag_frac=0.5)
    assert pol.threshold == 1.0
    assert pol.validation["fraction_flagged"] == 0.75
    assert "capped" in pol.validation["why"]


def test_too_few_validation_tiles_keep_t_one_and_say_why() -> None:
    import pandas as pd

    from her2scope.evaluate.calibration import fit_calibration

    probs, y = _overconfident(12)
    tiles = pd.DataFrame({"slide_id": ["S1"] * 6 + ["S2"] * 6, "label": [CLASSES[i] for i in y]})
    cal = fit_calibration(probs, tiles, CLASSES, "mean", 10.0)
    assert cal.temperature == 1.0 and "only 12 validation tiles" in cal.note
    assert cal.ece_after == pytest.approx(cal.ece_before, rel=1e-9)
    probs, y = _overconfident(300)
    tiles = pd.DataFrame({"slide_id": [f"S{i % 5}" for i in range(300)],
                          "label": [CLASSES[i] for i in y]})  # fmt: skip
    cal = fit_calibration(probs, tiles, CLASSES, "mean", 10.0)
    assert cal.temperature > 1.5 and cal.note == "" and cal.ece_after < cal.ece_before


def test_a_temperature_that_does_not_lower_the_validation_ece_is_not_kept() -> None:
    """Labels drawn from the reported probabilities themselves: already calibrated, so the NLL
    fit lands near 1 and any ECE change is noise below MIN_ECE_GAIN; T = 1 is kept, said why,
    and the ECE after equals the ECE before."""
    import pandas as pd

    from her2scope.evaluate.calibration import MIN_ECE_GAIN, fit_calibration

    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.5, size=(2000, 3))
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in probs])
    t_fit = fit_temperature(probs, y)
    gain = ece(y, probs, CLASSES) - ece(y, apply_temperature(probs, t_fit), CLASSES)
    assert t_fit != 1.0 and gain < MIN_ECE_GAIN  # the case this test is about
    tiles = pd.DataFrame({"slide_id": [f"S{i % 7}" for i in range(len(y))],
                          "label": [CLASSES[i] for i in y]})  # fmt: skip
    cal = fit_calibration(probs, tiles, CLASSES, "mean", 10.0)
    assert cal.temperature == 1.0
    assert "did not lower the validation ECE" in cal.note
    assert cal.ece_after == cal.ece_before


def test_reflex_table_aggregates_slides_and_follows_the_policy() -> None:
    import pandas as pd

    from her2scope.evaluate.calibration import identity_calibration
    from her2scope.scoring.reflex import reflex_table

    rows = []
    # S1: clearly 2+ (always reflex); S2: confident 3+; S3: 1+ but nearly uniform
    for sid, probs in {
        "S1": (0.1, 0.8, 0.1),
        "S2": (0.01, 0.02, 0.97),
        "S3": (0.4, 0.25, 0.35),
    }.items():
        for _ in range(3):
            rows.append(
                {
                    "slide_id": sid,
                    "patient_id": "P" + sid,
                    "center": "B",
                    "label": "2+",
                    "prob_1+": probs[0],
                    "prob_2+": probs[1],
                    "prob_3+": probs[2],
                }
            )
    policy = identity_calibration(0.5).policy
    table = reflex_table(pd.DataFrame(rows), policy).set_index("slide_id")
    assert table["score"].to_dict() == {"S1": "2+", "S2": "3+", "S3": "1+"}
    assert table["reflex_fish"].to_dict() == {"S1": True, "S2": False, "S3": True}
    assert table["patient_id"].to_dict() == {"S1": "PS1", "S2": "PS2", "S3": "PS3"}
    p = np.array([0.4, 0.25, 0.35])
    expected_u = -(p * np.log(p)).sum() / np.log(3)
    np.testing.assert_allclose(table.loc["S3", "uncertainty"], expected_u, rtol=1e-9)
    # the aggregation rule is applied: two tiles call 1+, one tile is sure of 3+
    tiles = [(0.5, 0.1, 0.4), (0.5, 0.1, 0.4), (0.0, 0.0, 1.0)]
    s4 = pd.DataFrame(
        [{"slide_id": "S4", "prob_1+": a, "prob_2+": b, "prob_3+": c} for a, b, c in tiles]
    )
    assert reflex_table(s4, policy)["score"].tolist() == ["3+"]  # mean (0.33, 0.07, 0.60)
    assert reflex_table(s4, policy, rule="majority")["score"].tolist() == ["1+"]  # 2 of 3 tiles

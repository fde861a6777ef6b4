"""Leave-one-centre-out (issue 11): a centre's patients are only ever tested on, never trained on."""

from __future__ import annotations

import pandas as pd
import pytest

from her2scope.cohort import make_splits
from her2scope.cohort.config import CohortConfig
from her2scope.cohort.loco import check_held_out, fold_config, loco_splits
from her2scope.engine.loco import fold_run_dir
from her2scope.errors import ConfigError, LeakageError

from .test_splits import _slides


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_centre_patient_reaches_its_own_training_set(seed: int) -> None:
    slides = _slides(3, centers=("A", "B", "C"))
    cfg = CohortConfig(split_mode="leave_one_center_out", val_fraction=0.25, split_seed=seed)
    folds = loco_splits(slides, cfg)
    assert sorted(folds) == ["A", "B", "C"]
    for centre, sp in folds.items():
        at = sp["center"] == centre
        held = set(sp.loc[at, "patient_id"])
        trained = set(sp.loc[sp["split"].isin(["train", "val"]), "patient_id"])
        assert held and not held & trained
        assert set(sp.loc[sp["split"] == "test", "center"]) == {centre}
        assert set(sp.loc[~at, "split"]) <= {"train", "val"}
        assert (sp["split"] == "train").any() and (sp["split"] == "val").any()
        assert len(sp) == len(slides)


def test_check_held_out_catches_a_leaked_patient() -> None:
    slides = _slides(2, centers=("A", "B"))
    sp = make_splits(slides, fold_config(CohortConfig(), "B"))
    check_held_out(sp, "B")
    bad = sp.copy()
    first_b = bad.index[bad["center"] == "B"][0]
    bad.loc[first_b, "split"] = "train"
    with pytest.raises(LeakageError, match="fold 'B'"):
        check_held_out(bad, "B")


def test_loco_mode_without_a_centre_plans_every_fold_and_refuses_several() -> None:
    slides = _slides(2, centers=("A", "B", "C"))
    cfg = CohortConfig(split_mode="leave_one_center_out")
    sp = make_splits(slides, cfg)  # what validate_all does: the first fold
    assert set(sp.loc[sp["split"] == "test", "center"]) == {"A"}
    with pytest.raises(ConfigError, match="one centre at a time"):
        make_splits(
            slides, CohortConfig(split_mode="leave_one_center_out", test_centers=("A", "B"))
        )
    with pytest.raises(ConfigError, match="at least two centres"):
        loco_splits(slides[slides["center"] == "A"], cfg)
    assert fold_run_dir("runs/alexnet", "C").name == "alexnet_heldout_C"
    assert isinstance(sp, pd.DataFrame)

"""Leave-one-centre-out: one external-centre split per centre of the cohort (issue 11).

``cohort.split_mode: leave_one_center_out`` means "for each centre in turn: test on it, train and
validate on every other centre". One fold is an ordinary external split whose ``test_centers`` is
that one centre (:func:`fold_config`); :func:`loco_splits` makes every fold's table and checks that
no patient of the held-out centre reaches its own training or validation set. The runner that
trains and evaluates each fold is :func:`her2scope.evaluate.loco.run_leave_one_center_out`.
"""

from __future__ import annotations

import pandas as pd

from her2scope.cohort.config import CohortConfig
from her2scope.cohort.splits import (  # the fold rules live with the other split modes
    LOCO_MODE,
    centres_of,
    fold_config,
    loco_split_of,
    make_splits,
)
from her2scope.errors import LeakageError

__all__ = [
    "LOCO_MODE",
    "centres_of",
    "check_held_out",
    "fold_config",
    "loco_split_of",
    "loco_splits",
]


def check_held_out(splits_df: pd.DataFrame, centre: str) -> None:
    """Raise ``LeakageError`` if a slide or patient of ``centre`` is outside the test split, or a
    test slide comes from another centre."""
    at_centre = splits_df["center"].astype(str) == str(centre)
    test = splits_df["split"] == "test"
    trained = splits_df.loc[~test]
    held_patients = set(splits_df.loc[at_centre, "patient_id"].astype(str))
    leaked = sorted(held_patients & set(trained["patient_id"].astype(str)))
    wrong_centre = sorted(splits_df.loc[test & ~at_centre, "slide_id"].astype(str))
    if leaked or not at_centre[~test].eq(False).all() or wrong_centre:
        raise LeakageError(
            f"leave-one-centre-out fold '{centre}': patient(s) {', '.join(leaked[:10]) or '-'} of "
            f"the held-out centre are in train/val, test slide(s) {', '.join(wrong_centre[:10]) or '-'} "
            "come from another centre; a centre's patients must only be tested on"
        )


def loco_splits(slides: pd.DataFrame, cfg: CohortConfig) -> dict[str, pd.DataFrame]:
    """``{centre: splits table}``, one fold per centre, each checked with :func:`check_held_out`."""
    out: dict[str, pd.DataFrame] = {}
    for centre in centres_of(slides):
        splits = make_splits(slides, fold_config(cfg, centre))
        check_held_out(splits, centre)
        out[centre] = splits
    return out

"""Leave-one-centre-out: one external-centre split per centre of the cohort (issue 11).

``cohort.split_mode: leave_one_center_out`` means "for each centre in turn: test on it, train and
validate on every other centre". One fold is an ordinary external split whose ``test_centers`` is
that one centre (:func:`fold_config`); :func:`loco_splits` makes every fold's table and checks that
no patient of the held-out centre reaches its own training or validation set. The runner that
trains and evaluates each fold is :func:`her2scope.evaluate.loco.run_leave_one_center_out`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

import pandas as pd

from her2scope.cohort.config import CohortConfig
from her2scope.cohort.splits import make_splits
from her2scope.errors import ConfigError, LeakageError

LOCO_MODE: Final = "leave_one_center_out"


def loco_split_of(patients: pd.DataFrame, cfg: CohortConfig) -> dict[str, str]:
    """``make_splits`` for ``leave_one_center_out``: with one ``test_centers`` entry, that fold (an
    external split); with none, every fold is planned and checked and the first centre's returned
    (what ``validate_all`` needs; the runner trains each fold with :func:`fold_config`)."""
    from her2scope.cohort.splits import _external

    if len(cfg.test_centers) > 1:
        raise ConfigError(
            f"cohort.split_mode=leave_one_center_out holds out one centre at a time; "
            f"cohort.test_centers={list(cfg.test_centers)} names several (leave it empty)"
        )
    if cfg.test_centers:
        return _external(patients, cfg)
    folds = [_external(patients, fold_config(cfg, c)) for c in centres_of(patients)]
    return folds[0]


def centres_of(slides: pd.DataFrame) -> list[str]:
    """The cohort's centres, sorted; at least two are needed to hold one out."""
    if "center" not in slides:
        raise ConfigError("leave-one-centre-out needs a 'center' column in the slide table")
    centres = sorted(slides["center"].astype(str).unique())
    if len(centres) < 2:
        raise ConfigError(
            f"leave-one-centre-out needs at least two centres; the cohort has {centres or 'none'}"
        )
    return centres


def fold_config(cfg: CohortConfig, centre: str) -> CohortConfig:
    """The cohort settings of the fold that holds out ``centre`` (an external split)."""
    return replace(cfg, split_mode=LOCO_MODE, test_centers=(str(centre),))


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

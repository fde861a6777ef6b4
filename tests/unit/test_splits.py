"""Patient-level splits: external centre, k-fold, from a file, and the leakage assertion."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from her2scope.cohort import (
    check_no_leakage,
    format_split_table,
    make_splits,
    read_splits,
    split_table,
    write_splits,
)
from her2scope.cohort.config import CohortConfig
from her2scope.errors import ConfigError, LeakageError, ManifestError


def _slides(n_per_class: int = 4, centers: tuple[str, ...] = ("A", "B")) -> pd.DataFrame:
    """n_per_class patients per class and centre; every third patient has two slides."""
    rows = []
    k = 0
    for c in centers:
        for lab in ("1+", "2+", "3+"):
            for _ in range(n_per_class):
                pid = f"P{k:03d}"
                for s in range(2 if k % 3 == 0 else 1):
                    rows.append(
                        {"slide_id": f"{pid}_S{s}", "patient_id": pid, "center": c, "label": lab}
                    )
                k += 1
    return pd.DataFrame(rows)


def _patients(df: pd.DataFrame, split: str) -> set[str]:
    return set(df.loc[df["split"] == split, "patient_id"])


def test_external_split() -> None:
    slides = _slides()
    cfg = CohortConfig(split_mode="external", test_centers=("B",), val_fraction=0.25)
    out = make_splits(slides, cfg)
    assert list(out.columns) == ["slide_id", "patient_id", "center", "label", "split"]
    assert len(out) == len(slides)
    assert _patients(out, "test") == set(slides.loc[slides.center == "B", "patient_id"])
    val = out[out["split"] == "val"]
    # 4 centre-A patients per class, 25 % of each → exactly one validation patient per class
    assert val.groupby("label")["patient_id"].nunique().to_dict() == {"1+": 1, "2+": 1, "3+": 1}
    assert _patients(out, "train") | _patients(out, "val") == set(
        slides.loc[slides.center == "A", "patient_id"]
    )
    # a two-slide patient is never split
    assert out.groupby("patient_id")["split"].nunique().max() == 1
    # same seed → same split; another seed → another validation set
    assert make_splits(slides, cfg).equals(out)
    other = make_splits(slides, replace(cfg, split_seed=5))
    assert _patients(other, "val") != _patients(out, "val")


def test_external_split_errors() -> None:
    slides = _slides()
    with pytest.raises(
        ConfigError, match=r"cohort.test_centers is empty.*centres in this cohort: A, B"
    ):
        make_splits(slides, CohortConfig(test_centers=()))
    with pytest.raises(ConfigError, match="cohort.test_centers C not in the cohort"):
        make_splits(slides, CohortConfig(test_centers=("C",)))
    with pytest.raises(ConfigError, match="nothing is left to train on"):
        make_splits(slides, CohortConfig(test_centers=("A", "B")))
    moved = slides.copy()
    moved.loc[1, "center"] = "B"  # P000's second slide in another centre
    with pytest.raises(ConfigError, match="P000 have slides in more than one centre"):
        make_splits(moved, CohortConfig(test_centers=("B",)))


def test_kfold_covers_every_patient_once() -> None:
    slides = _slides(n_per_class=5, centers=("A",))
    tests: list[set[str]] = []
    for fold in range(5):
        out = make_splits(
            slides, CohortConfig(split_mode="kfold", n_folds=5, fold=fold, val_fraction=0.25)
        )
        test = out[out["split"] == "test"]
        # stratified: one patient of each class per fold
        assert test.groupby("label")["patient_id"].nunique().to_dict() == {
            "1+": 1,
            "2+": 1,
            "3+": 1,
        }
        assert _patients(out, "val").isdisjoint(_patients(out, "test"))
        tests.append(_patients(out, "test"))
    assert sum(len(t) for t in tests) == 15
    assert set().union(*tests) == set(slides["patient_id"])
    with pytest.raises(ConfigError, match="cohort.fold must be in 0..4"):
        make_splits(slides, CohortConfig(split_mode="kfold", n_folds=5, fold=5))
    with pytest.raises(ConfigError, match="fewer than cohort.n_folds=6"):
        make_splits(slides, CohortConfig(split_mode="kfold", n_folds=6))


def test_splits_file_roundtrip_and_checks(tmp_path: Path) -> None:
    slides = _slides()
    made = make_splits(slides, CohortConfig(test_centers=("B",)))
    path = write_splits(made, tmp_path / "splits.csv")
    again = make_splits(slides, CohortConfig(split_mode="file", splits_csv=str(path)))
    pd.testing.assert_frame_equal(again, made)

    short = made[made.slide_id != "P000_S0"]
    write_splits(short, tmp_path / "short.csv")
    with pytest.raises(ManifestError, match=r"cohort slide\(s\) without a split: P000_S0"):
        make_splits(slides, CohortConfig(split_mode="file", splits_csv=str(tmp_path / "short.csv")))

    bad = made.copy()
    bad.loc[0, "split"] = "holdout"
    write_splits(bad, tmp_path / "bad.csv")
    with pytest.raises(ManifestError, match="split 'holdout' for slide .* is not train/val/test"):
        read_splits(tmp_path / "bad.csv")


def test_leaking_split_file_is_refused(tmp_path: Path) -> None:
    slides = _slides()
    made = make_splits(slides, CohortConfig(test_centers=("B",)))
    leaking = made.copy()
    # P000 has two slides; put its second slide in another split than its first
    first = leaking.index[leaking.slide_id == "P000_S0"][0]
    second = leaking.index[leaking.slide_id == "P000_S1"][0]
    leaking.loc[second, "split"] = "test" if leaking.loc[first, "split"] != "test" else "train"
    with pytest.raises(
        LeakageError, match=r"1 patient\(s\) appear in more than one split: 'P000' in"
    ):
        check_no_leakage(leaking)
    write_splits(leaking, tmp_path / "leak.csv")
    with pytest.raises(LeakageError, match="'P000'"):
        make_splits(slides, CohortConfig(split_mode="file", splits_csv=str(tmp_path / "leak.csv")))
    # without patient ids in the file, the leak is found after joining the manifest
    write_splits(leaking.drop(columns="patient_id"), tmp_path / "leak2.csv")
    with pytest.raises(LeakageError, match="'P000'"):
        make_splits(slides, CohortConfig(split_mode="file", splits_csv=str(tmp_path / "leak2.csv")))


def test_split_table_counts() -> None:
    splits = pd.DataFrame(
        {
            "slide_id": ["a", "b", "c", "d"],
            "patient_id": ["p1", "p1", "p2", "p3"],
            "center": ["A", "A", "A", "B"],
            "label": ["1+", "1+", "3+", "3+"],
            "split": ["train", "train", "val", "test"],
        }
    )
    tiles = pd.DataFrame({"slide_id": ["a"] * 3 + ["b"] * 2 + ["c"] * 4})
    table = split_table(splits, tiles, ("1+", "2+", "3+")).set_index(["split", "class"])
    assert table.loc[("train", "1+")].tolist() == [1, 2, 5]
    assert table.loc[("train", "all")].tolist() == [1, 2, 5]
    assert table.loc[("val", "3+")].tolist() == [1, 1, 4]
    assert table.loc[("test", "3+")].tolist() == [1, 1, 0]
    assert table.loc[("test", "2+")].tolist() == [0, 0, 0]
    text = format_split_table(split_table(splits, tiles, ("1+", "2+", "3+")))
    assert text.splitlines()[2].split() == ["train", "1/2/5", "0/0/0", "0/0/0", "1/2/5"]


def test_tiny_cohort_unstratifiable_validation() -> None:
    # one patient per class in the training centre: validation takes one patient overall
    slides = pd.DataFrame(
        {
            "slide_id": ["a", "b", "c", "d"],
            "patient_id": ["p1", "p2", "p3", "p4"],
            "center": ["A", "A", "A", "B"],
            "label": ["1+", "2+", "3+", "1+"],
        }
    )
    out = make_splits(slides, CohortConfig(test_centers=("B",), val_fraction=0.34))
    assert out["split"].value_counts().to_dict() == {"train": 2, "val": 1, "test": 1}

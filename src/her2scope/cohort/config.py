"""Settings of the cohort stage: manifest, label scheme and splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CohortConfig:
    manifest: str = "manifest.csv"
    label_scheme: Literal["study", "full", "her2low"] = "study"
    allow_absolute_paths: bool = False
    split_mode: Literal["external", "kfold", "file"] = "external"
    test_centers: tuple[str, ...] = ()  # external mode: centres held out for testing
    val_fraction: float = 0.2  # fraction of training patients used for validation
    n_folds: int = 5
    fold: int = 0
    splits_csv: str | None = None  # split_mode="file"
    split_seed: int = 0  # shuffles patients before the validation/fold assignment

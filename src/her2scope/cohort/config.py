"""Settings of the cohort stage: manifest, label scheme and splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CohortConfig:
    manifest: str = "manifest.csv"
    label_scheme: Literal["study", "full", "her2low"] = "study"
    allow_absolute_paths: bool = False
    split_mode: Literal["external", "kfold", "file", "leave_one_center_out"] = "external"
    test_centers: tuple[str, ...] = ()  # external mode: centres held out for testing
    val_fraction: float = 0.2  # fraction of training patients used for validation
    n_folds: int = 5
    fold: int = 0
    splits_csv: str | None = None  # split_mode="file"
    split_seed: int = 0  # shuffles patients before the validation/fold assignment

    def problems(self) -> list[str]:
        """Every out-of-range setting as one line each (empty when all are fine).

        Checks the settings alone; whether ``test_centers`` exist in the manifest is checked by
        :func:`her2scope.config.validate_all`, which reads the manifest.
        """
        from pathlib import Path

        from her2scope.config import check_range

        out: list[str] = []
        if not self.manifest.strip():
            out.append("cohort.manifest is empty; give the manifest CSV (cohort.manifest=PATH)")
        check_range(
            out,
            "cohort.val_fraction",
            self.val_fraction,
            0,
            1,
            lo_open=True,
            hi_open=True,
            hint="the fraction of training patients used for validation, e.g. 0.2",
        )
        if self.split_mode == "external" and not any(c.strip() for c in self.test_centers):
            out.append(
                "cohort.test_centers is empty; the external split needs the held-out centre(s), "
                "e.g. cohort.test_centers=[B]"
            )
        if self.split_mode == "kfold":
            check_range(out, "cohort.n_folds", self.n_folds, 2, hint="at least two folds")
            check_range(out, "cohort.fold", self.fold, 0, max(0, self.n_folds - 1))
        if self.split_mode == "file":
            if not self.splits_csv:
                out.append("cohort.split_mode = 'file' needs cohort.splits_csv (a splits CSV)")
            elif not Path(self.splits_csv).expanduser().is_file():
                out.append(f"cohort.splits_csv = {self.splits_csv!r}: file not found")
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem of :meth:`problems`."""
        from her2scope.errors import ConfigError

        if problems := self.problems():
            raise ConfigError("; ".join(problems))

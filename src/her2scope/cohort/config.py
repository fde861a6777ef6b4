"""Settings of the cohort stage: manifest, label scheme and splits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from her2scope._configbase import Names, PathText, Problem, config_section, problem


@config_section("cohort")
class CohortConfig:
    manifest: Annotated[
        PathText, Field(description="manifest CSV; its relative paths are relative to it")
    ] = "manifest.csv"
    label_scheme: Annotated[
        Literal["study", "full", "her2low"],
        Field(description="classes: study 1+/2+/3+, full 0/1+/2+/3+, her2low 0/low/positive"),
    ] = "study"
    allow_absolute_paths: Annotated[
        bool, Field(description="accept manifest paths that are absolute or leave its folder")
    ] = False
    split_mode: Annotated[
        Literal["external", "kfold", "file", "leave_one_center_out"],
        Field(description="how patients are split into train / val / test"),
    ] = "external"
    test_centers: Annotated[
        Names, Field(description="external split: the centres held out for testing, e.g. [B]")
    ] = ()
    val_fraction: Annotated[
        float,
        Field(
            gt=0,
            lt=1,
            description="the fraction of training patients used for validation, e.g. 0.2",
        ),
    ] = 0.2
    n_folds: Annotated[int, Field(ge=2, description="kfold split: at least two folds")] = 5
    fold: Annotated[int, Field(ge=0, description="kfold split: the test fold, from 0")] = 0
    splits_csv: Annotated[
        PathText | None, Field(description="split_mode file: the splits CSV to use")
    ] = None
    split_seed: Annotated[
        int,
        Field(ge=0, le=2**32 - 1, description="shuffles patients before the val/fold assignment"),
    ] = 0

    @field_validator("manifest")
    @classmethod
    def _manifest(cls, value: str) -> str:
        if not value.strip():
            raise problem(
                "cohort.manifest",
                "cohort.manifest is empty; give the manifest CSV (cohort.manifest=PATH)",
            )
        return value

    @model_validator(mode="after")
    def _split(self) -> CohortConfig:
        if self.split_mode == "kfold" and self.fold >= self.n_folds:
            raise problem(
                "cohort.fold",
                f"cohort.fold must be in 0..{self.n_folds - 1} (one of cohort.n_folds="
                f"{self.n_folds} folds); got cohort.fold={self.fold}",
            )
        if self.split_mode == "file" and not self.splits_csv:
            raise problem(
                "cohort.split_mode",
                "cohort.split_mode='file' needs cohort.splits_csv (a splits CSV)",
            )
        return self

    def problems(self) -> list[Problem]:
        """What a run needs beyond valid settings: held-out centres, the splits file on disk.

        Whether ``test_centers`` exist in the manifest is checked by
        :func:`her2scope.config.validate_all`, which reads the manifest.
        """
        from pathlib import Path

        out: list[Problem] = []
        if self.split_mode == "external" and not any(c.strip() for c in self.test_centers):
            out.append(
                (
                    "cohort.test_centers",
                    "cohort.test_centers is empty; the external split needs the held-out "
                    "centre(s), e.g. cohort.test_centers=[B]",
                )
            )
        missing = self.split_mode == "file" and self.splits_csv is not None
        if missing and not Path(str(self.splits_csv)).expanduser().is_file():
            out.append(
                ("cohort.splits_csv", f"cohort.splits_csv={self.splits_csv!r}: file not found")
            )
        return out

"""Settings of the evaluation stage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from her2scope._configbase import config_section

#: The splits a run can be evaluated on (``her2scope.cohort.splits.SPLITS``).
Split = Literal["train", "val", "test"]


@config_section("evaluate")
class EvaluateConfig:
    split: Annotated[Split, Field(description="the split evaluated")] = "test"
    aggregate: Annotated[
        Literal["mean", "majority", "percent"],
        Field(description="tile → slide/patient rule"),
    ] = "mean"
    percent_threshold: Annotated[
        float,
        Field(
            ge=0,
            le=100,
            description="a percentage of tiles: the percent rule's highest grade reached by "
            ">= this % of tiles",
        ),
    ] = 10.0
    n_boot: Annotated[int, Field(ge=1, le=1_000_000, description="patient-bootstrap resamples")] = (
        1000
    )
    ci: Annotated[
        float, Field(gt=0, lt=1, description="confidence level of the intervals, e.g. 0.95")
    ] = 0.95
    seed: Annotated[int, Field(ge=0, le=2**32 - 1, description="bootstrap seed")] = 0
    ece_bins: Annotated[
        int,
        Field(ge=1, le=1000, description="equal-width confidence bins of the calibration error"),
    ] = 10
    batch_size: Annotated[
        int, Field(ge=1, le=65536, description="tiles per forward pass when predicting")
    ] = 64
    plots: Annotated[bool, Field(description="write the PNG plots")] = True
    reflex_uncertainty: Annotated[
        float,
        Field(ge=0, le=1, description="flag 1+/3+ for reflex FISH when uncertainty is above this"),
    ] = 0.5

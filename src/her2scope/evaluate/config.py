"""Settings of the evaluation stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    aggregate: Literal["mean", "majority", "percent"] = "mean"
    percent_threshold: float = 10.0  # "percent" rule: highest grade reached by >= this % of tiles
    n_boot: int = 1000  # patient-bootstrap resamples
    ci: float = 0.95
    seed: int = 0  # bootstrap seed
    ece_bins: int = 10  # equal-width confidence bins of the calibration error / reliability plot
    batch_size: int = 64  # tiles per forward pass when predicting the split
    plots: bool = True
    reflex_uncertainty: float = 0.5  # flag 1+/3+ for reflex FISH when uncertainty is above this

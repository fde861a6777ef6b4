"""Settings of the evaluation stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    aggregate: Literal["mean", "majority", "percent"] = "mean"
    percent_threshold: float = 10.0  # "percent" rule: highest grade reached by >= this % of tiles
    n_boot: int = 1000
    ci: float = 0.95
    reflex_uncertainty: float = 0.5  # flag 1+/3+ for reflex FISH when uncertainty is above this

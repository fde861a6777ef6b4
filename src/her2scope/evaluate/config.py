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

    def problems(self) -> list[str]:
        """Every out-of-range setting as one line each (empty when all are fine)."""
        from her2scope.cohort.splits import SPLITS
        from her2scope.config import check_range

        out: list[str] = []
        if self.split not in SPLITS:
            out.append(f"evaluate.split = {self.split!r}: choose one of {', '.join(SPLITS)}")
        check_range(
            out,
            "evaluate.percent_threshold",
            self.percent_threshold,
            0,
            100,
            hint="a percentage of tiles",
        )
        check_range(out, "evaluate.n_boot", self.n_boot, 1, 1_000_000, hint="bootstrap resamples")
        check_range(out, "evaluate.ci", self.ci, 0, 1, lo_open=True, hi_open=True, hint="e.g. 0.95")
        check_range(out, "evaluate.ece_bins", self.ece_bins, 1, 1000)
        check_range(out, "evaluate.batch_size", self.batch_size, 1, 65536)
        check_range(out, "evaluate.reflex_uncertainty", self.reflex_uncertainty, 0, 1)
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem of :meth:`problems`."""
        from her2scope.errors import ConfigError

        if problems := self.problems():
            raise ConfigError("; ".join(problems))

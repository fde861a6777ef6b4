"""her2scope.evaluate stage: tile → slide → patient aggregation, metrics, patient bootstrap, comparison.

``aggregate``, ``metrics`` and ``bootstrap`` need only numpy/pandas; ``evaluate_run`` loads torch
through the engine when it is called.
"""

from __future__ import annotations

from her2scope.evaluate.aggregate import aggregate, aggregate_probs
from her2scope.evaluate.config import EvaluateConfig

__all__ = [
    "EvaluateConfig",
    "aggregate",
    "aggregate_probs",
    "compare_runs",
    "evaluate_predictions",
    "evaluate_run",
]


def __getattr__(name: str):
    if name in ("evaluate_run", "evaluate_predictions"):
        from her2scope.evaluate import run

        return getattr(run, name)
    if name == "compare_runs":
        from her2scope.evaluate.compare import compare_runs

        return compare_runs
    raise AttributeError(f"module 'her2scope.evaluate' has no attribute {name!r}")

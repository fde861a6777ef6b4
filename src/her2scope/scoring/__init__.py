"""Scoring of new slides: tile, predict, aggregate, reflex-FISH flag, heatmap and QuPath export.

``score_slides`` is imported lazily so that ``import her2scope.scoring`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["reflex_fish", "score_slides", "slide_uncertainty"]


def __getattr__(name: str) -> Any:
    if name == "score_slides":
        from her2scope.scoring.score import score_slides

        return score_slides
    if name in ("reflex_fish", "slide_uncertainty"):
        from her2scope.scoring import reflex

        return getattr(reflex, name)
    raise AttributeError(f"module 'her2scope.scoring' has no attribute {name!r}")

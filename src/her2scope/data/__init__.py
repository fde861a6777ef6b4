"""Data stage: ``TileDataset`` reads tiles lazily from their slides (torch imported on use)."""

from __future__ import annotations

from typing import Any

__all__ = ["TileDataset"]


def __getattr__(name: str) -> Any:
    if name == "TileDataset":
        from her2scope.data.dataset import TileDataset

        return TileDataset
    raise AttributeError(f"module 'her2scope.data' has no attribute {name!r}")

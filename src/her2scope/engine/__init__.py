"""Training, prediction and checkpoints (torch is imported only when one of these is used)."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "train_model": "her2scope.engine.train",
    "predict_tiles": "her2scope.engine.predict",
    "save_checkpoint": "her2scope.engine.checkpoint",
    "load_checkpoint": "her2scope.engine.checkpoint",
    "load_run_model": "her2scope.engine.checkpoint",
    "RunMeta": "her2scope.engine.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'her2scope.engine' has no attribute {name!r}")

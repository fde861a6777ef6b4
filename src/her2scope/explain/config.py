"""Settings of the explain stage (Grad-CAM)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExplainConfig:
    n_tiles: int = 16  # tiles per class in the gallery
    heatmap_max_px: int = 1024

    def problems(self) -> list[str]:
        """Every out-of-range setting as one line each (empty when all are fine)."""
        from her2scope.config import check_range

        out: list[str] = []
        check_range(out, "explain.n_tiles", self.n_tiles, 1, 1000)
        check_range(out, "explain.heatmap_max_px", self.heatmap_max_px, 64, 16384)
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem of :meth:`problems`."""
        from her2scope.errors import ConfigError

        if problems := self.problems():
            raise ConfigError("; ".join(problems))

"""Settings of the stain stage (normalisation and augmentation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class StainConfig:
    mode: Literal["preserve_dab", "standard", "none"] = "preserve_dab"
    reference: str | None = None  # JSON written by fit_reference; None: the packaged default
    fit_tiles: int = 64  # tiles sampled per slide to fit its stain matrix

    def problems(self) -> list[str]:
        """Every out-of-range setting as one line each (empty when all are fine)."""
        from pathlib import Path

        from her2scope.config import check_range

        out: list[str] = []
        check_range(out, "stain.fit_tiles", self.fit_tiles, 1, 100_000)
        if self.reference is not None and not Path(self.reference).expanduser().is_file():
            out.append(
                f"stain.reference = {self.reference!r}: file not found (a JSON written by "
                "fit_reference; leave it empty for the packaged reference)"
            )
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem of :meth:`problems`."""
        from her2scope.errors import ConfigError

        if problems := self.problems():
            raise ConfigError("; ".join(problems))

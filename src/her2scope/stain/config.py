"""Settings of the stain stage (normalisation and augmentation)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from her2scope._configbase import PathText, Problem, config_section


@config_section("stain")
class StainConfig:
    mode: Annotated[
        Literal["preserve_dab", "standard", "none"],
        Field(description="preserve_dab keeps each tile's DAB intensity; none: no normalisation"),
    ] = "preserve_dab"
    reference: Annotated[
        PathText | None,
        Field(description="JSON written by fit_reference; null: the packaged reference"),
    ] = None
    fit_tiles: Annotated[
        int, Field(ge=1, le=100_000, description="tiles sampled per slide to fit its stain matrix")
    ] = 64

    def problems(self) -> list[Problem]:
        """The reference file must exist where the run reads it."""
        from pathlib import Path

        if self.reference is not None and not Path(self.reference).expanduser().is_file():
            return [
                (
                    "stain.reference",
                    f"stain.reference={self.reference!r}: file not found (a JSON written by "
                    "fit_reference; leave it empty for the packaged reference)",
                )
            ]
        return []

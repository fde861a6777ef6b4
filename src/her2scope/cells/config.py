"""Settings of the cell-level membrane scoring stage (``her2scope cells``).

Optical densities here are **base-10** DAB OD (``OD = −log10(I / I0)``, the convention of QuPath
and of the synthetic cohort), measured along the slide's fitted DAB vector. Lengths are in µm and
areas in µm², never pixels, so the same settings work at any scan resolution.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from her2scope._configbase import Problem, config_section, problems_error

#: A positive number (µm, µm², OD or a factor).
Positive = Annotated[float, Field(gt=0)]


@config_section("cells")
class CellConfig:
    """How nuclei are found, cells grown, membranes measured and classed, and a slide called.

    Membrane classes (per cell, from ``membrane_od`` = the 90th percentile of background-corrected
    DAB OD in the membrane band, calibrated by :func:`her2scope.cells.classify.calibrate_od` with
    ``dab_scale``): ``none`` below ``od_faint``; ``faint`` up to
    ``od_weak``; ``weak_moderate`` up to ``od_strong``; ``strong`` above. A membrane is complete
    when at least ``complete_min`` of its angular sectors are stained. The defaults were set on the
    SYNTHETIC cohort's training centre (see docs/cells.md); re-fit them on your own labelled slides
    with ``her2scope cells fit``.
    """

    enabled: Annotated[
        bool, Field(description="her2scope run: score the cells of the test split beside the CNN")
    ] = False
    # reading
    target_mpp: Annotated[Positive, Field(description="µm/px the slide is analysed at")] = 0.5
    finest_mpp: Annotated[
        Positive,
        Field(
            description="a slide scanned finer than target_mpp is analysed at its own µm/px, "
            "down to this (thin membranes are not averaged away); = target_mpp: always resample"
        ),
    ] = 0.25
    region_um: Annotated[
        Positive, Field(description="side of one read region (bounded memory)")
    ] = 1024.0
    halo_um: Annotated[
        float, Field(ge=0, description="overlap read around a region so border cells are whole")
    ] = 24.0
    stain_scope: Annotated[
        Literal["slide", "center", "run"],
        Field(
            description="stain vectors per slide; pooled per centre (her2scope run: the "
            "manifest's center column; cells: with --center); or once for all slides of the run"
        ),
    ] = "center"
    # nuclei (hematoxylin channel)
    nucleus_h_od: Annotated[
        Positive,
        Field(description="lowest H OD threshold (base 10) of nucleus pixels (else Otsu)"),
    ] = 0.08
    nucleus_smooth_um: Annotated[float, Field(description="Gaussian σ before thresholding")] = 0.6
    nucleus_min_area_um2: Annotated[Positive, Field(description="smallest nucleus kept")] = 12.0
    nucleus_max_area_um2: Annotated[
        float, Field(description="largest nucleus kept; above nucleus_min_area_um2")
    ] = 200.0
    nucleus_max_elongation: Annotated[
        float, Field(description="major / minor axis; fibroblast spindles are excluded")
    ] = 3.0
    split_min_distance_um: Annotated[
        float, Field(description="touching nuclei: seeds at least this far apart")
    ] = 3.0
    # cells and membranes
    cell_expand_um: Annotated[
        Positive, Field(description="a cell reaches at most this far beyond its nucleus")
    ] = 5.0
    band_um: Annotated[
        Positive, Field(description="half-width of the membrane band around a cell's boundary")
    ] = 1.5
    membrane_smooth_um: Annotated[
        float,
        Field(ge=0, description="Gaussian σ on DAB OD before membranes are measured"),
    ] = 0.2
    n_sectors: Annotated[
        int, Field(ge=4, le=64, description="angular sectors of the membrane for completeness")
    ] = 16
    complete_rel: Annotated[
        float,
        Field(description="a sector is stained at >= this fraction of the cell's membrane OD"),
    ] = 0.4
    # classes (base-10 DAB OD)
    od_faint: Annotated[float, Field(description="membrane OD from which a cell is faint")] = 0.05
    od_weak: Annotated[
        float, Field(description="membrane OD from which a cell is weak/moderate")
    ] = 0.17
    od_strong: Annotated[float, Field(description="membrane OD from which a cell is strong")] = 0.42
    complete_min: Annotated[
        float, Field(gt=0, le=1, description="share of stained sectors of a complete membrane")
    ] = 0.65
    dab_scale: Annotated[
        Positive,
        Field(description="per-centre factor on membrane DAB OD above the noise floor"),
    ] = 1.0
    calibration_reference: Annotated[
        str | None,
        Field(
            description="cells-fit: the centre the thresholds were set at; other centres' "
            "factors are matched to its cells (else: the middle of the best-κ plateau)"
        ),
    ] = None
    dab_noise_od: Annotated[
        float,
        Field(
            ge=0,
            description="noise floor of the centre the thresholds were set at (unstained "
            "membranes measure up to it): dab_scale does not stretch it",
        ),
    ] = 0.03
    center_noise_od: Annotated[
        float | None,
        Field(
            gt=0,
            description="this centre's noise floor (cells-fit: the 90th percentile of its "
            "HER2-0 slides' membrane OD); mapped onto dab_noise_od. null: dab_noise_od",
        ),
    ] = None
    # slide call (ASCO/CAP 2018 with the 2023 HER2-0 null / ultralow split)
    positive_fraction: Annotated[float, Field(description="'> 10 % of tumour cells'")] = 0.10
    ultralow_min_fraction: Annotated[
        float, Field(description="below this, stained cells are noise: 0 (null)")
    ] = 0.01
    borderline_margin: Annotated[
        float, Field(description="a call within this fraction of a rule's edge is flagged")
    ] = 0.02

    @model_validator(mode="after")
    def _rules(self) -> CellConfig:
        out: list[Problem] = []
        if not self.nucleus_max_area_um2 > self.nucleus_min_area_um2:
            out.append(
                (
                    "cells.nucleus_max_area_um2",
                    f"cells.nucleus_max_area_um2={self.nucleus_max_area_um2}: must exceed "
                    f"cells.nucleus_min_area_um2 ({self.nucleus_min_area_um2})",
                )
            )
        if self.finest_mpp > self.target_mpp:
            out.append(
                (
                    "cells.finest_mpp",
                    f"cells.finest_mpp={self.finest_mpp}: must not exceed cells.target_mpp "
                    f"({self.target_mpp})",
                )
            )
        if not 0 < self.od_faint < self.od_weak < self.od_strong:
            out.append(
                (
                    "cells.od_faint",
                    f"cells OD thresholds must rise: 0 < od_faint ({self.od_faint}) < od_weak "
                    f"({self.od_weak}) < od_strong ({self.od_strong})",
                )
            )
        if not 0 <= self.ultralow_min_fraction < self.positive_fraction < 1:
            out.append(
                (
                    "cells.ultralow_min_fraction",
                    "cells: need 0 <= ultralow_min_fraction < positive_fraction < 1 "
                    f"(got {self.ultralow_min_fraction}, {self.positive_fraction})",
                )
            )
        if out:
            raise problems_error(out)
        return self

"""Settings of the cell-level membrane scoring stage (``her2scope cells``).

Optical densities here are **base-10** DAB OD (``OD = −log10(I / I0)``, the convention of QuPath
and of the synthetic cohort), measured along the slide's fitted DAB vector. Lengths are in µm and
areas in µm², never pixels, so the same settings work at any scan resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from her2scope.errors import ConfigError


@dataclass(frozen=True)
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

    enabled: bool = False  # `her2scope run`: score the cells of the test split beside the CNN
    # reading
    target_mpp: float = 0.5  # µm/px the slide is analysed at
    region_um: float = 1024.0  # side of one read region (bounded memory)
    halo_um: float = 24.0  # overlap read around a region so border cells are whole
    # nuclei (hematoxylin channel)
    nucleus_h_od: float = 0.08  # lowest H OD threshold (base 10) of nucleus pixels (else Otsu)
    nucleus_smooth_um: float = 0.6  # Gaussian σ before thresholding
    nucleus_min_area_um2: float = 12.0
    nucleus_max_area_um2: float = 200.0
    nucleus_max_elongation: float = 3.0  # major / minor axis; fibroblast spindles are excluded
    split_min_distance_um: float = 3.0  # touching nuclei: seeds at least this far apart
    # cells and membranes
    cell_expand_um: float = 5.0  # a cell reaches at most this far beyond its nucleus
    band_um: float = 1.5  # half-width of the membrane band around a cell's boundary
    n_sectors: int = 16  # angular sectors of the membrane for completeness
    complete_rel: float = 0.4  # a sector is stained at ≥ this fraction of the cell's membrane OD
    # classes (base-10 DAB OD)
    od_faint: float = 0.05
    od_weak: float = 0.17
    od_strong: float = 0.39
    complete_min: float = 0.65
    dab_scale: float = 1.0  # per-centre factor on membrane DAB OD above the noise floor
    dab_noise_od: float = 0.03  # OD of unstained membranes (noise): dab_scale does not stretch it
    # slide call (ASCO/CAP 2018 with the 2023 HER2-0 null / ultralow split)
    positive_fraction: float = 0.10  # "> 10 % of tumour cells"
    ultralow_min_fraction: float = 0.01  # below this, stained cells are noise: 0 (null)
    borderline_margin: float = 0.02  # a call within this fraction of a rule's edge is flagged

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "target_mpp",
            "region_um",
            "nucleus_h_od",
            "nucleus_min_area_um2",
            "cell_expand_um",
            "band_um",
            "dab_scale",
        ):
            if not getattr(self, name) > 0:
                problems.append(f"cells.{name}={getattr(self, name)}: must be > 0")
        if not self.dab_noise_od >= 0:
            problems.append(f"cells.dab_noise_od={self.dab_noise_od}: must be ≥ 0")
        if not self.halo_um >= 0:
            problems.append(f"cells.halo_um={self.halo_um}: must be ≥ 0")
        if not self.nucleus_max_area_um2 > self.nucleus_min_area_um2:
            problems.append("cells.nucleus_max_area_um2 must exceed cells.nucleus_min_area_um2")
        if not 0 < self.od_faint < self.od_weak < self.od_strong:
            problems.append(
                f"cells OD thresholds must rise: 0 < od_faint ({self.od_faint}) < od_weak "
                f"({self.od_weak}) < od_strong ({self.od_strong})"
            )
        if not 0 < self.complete_min <= 1:
            problems.append(f"cells.complete_min={self.complete_min}: use a fraction in (0, 1]")
        if not 4 <= self.n_sectors <= 64:
            problems.append(f"cells.n_sectors={self.n_sectors}: use 4 to 64")
        if not 0 <= self.ultralow_min_fraction < self.positive_fraction < 1:
            problems.append(
                "cells: need 0 ≤ ultralow_min_fraction < positive_fraction < 1 "
                f"(got {self.ultralow_min_fraction}, {self.positive_fraction})"
            )
        if problems:
            raise ConfigError("; ".join(problems))

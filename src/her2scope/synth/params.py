"""Physical constants and per-centre / per-grade parameters of the synthetic HER2 IHC cohort.

Everything here is plain data: stain vectors (optical density per unit concentration, RGB order),
scanner profiles of the centres, and the membrane-staining model that turns a HER2 grade into a
distribution of per-cell membrane DAB optical density following the ASCO/CAP definitions.

Optical density uses base 10: ``I = I0 · 10^(−OD)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: Ruifrok & Johnston (2001) hematoxylin and DAB vectors (unit length, RGB order).
RJ_HEMATOXYLIN = (0.650, 0.704, 0.286)
RJ_DAB = (0.268, 0.570, 0.776)
#: Unstained tissue (section thickness, mounting medium): a nearly neutral, faintly pink absorber.
TISSUE_RESIDUAL = (0.42, 0.60, 0.68)

#: Level-0 resolution of every synthetic slide, µm/px (a 20× scan).
SLIDE_MPP = 0.5

#: Membrane classes in ordinal order (the ``membrane_class`` column of ``cells/<slide_id>.parquet``).
MEMBRANE_CLASSES: tuple[str, ...] = ("none", "faint", "weak_moderate", "strong")
#: Lower membrane DAB OD bound of each class above "none" (faint, weak_moderate, strong).
MEMBRANE_OD_BOUNDS: tuple[float, float, float] = (0.06, 0.25, 0.65)
#: A membrane counts as complete (circumferential) when this fraction of it is stained.
COMPLETE_MIN = 0.9

#: Median membrane DAB OD of the tumour cells of a slide, per HER2 grade (before patient offsets).
GRADE_MEDIAN_OD: dict[str, float] = {"0": 0.02, "1+": 0.14, "2+": 0.34, "3+": 0.85}
#: Log-normal spreads of membrane DAB OD: per patient, per slide, spatial field, per cell.
SIGMA_PATIENT = 0.2
SIGMA_SLIDE = 0.08
SIGMA_SPATIAL = 0.5
SIGMA_CELL = 0.30
#: Length scale of the within-slide heterogeneity field, µm.
SPATIAL_SCALE_UM = 400.0


def unit(v: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


@dataclass(frozen=True)
class CenterProfile:
    """How one centre stains and scans: what makes its raw colours differ from another's.

    ``h_vector``/``dab_vector`` are unit OD vectors (RGB); ``h_strength`` scales the counterstain
    concentration (the biological DAB amount is never changed: it carries the grade; ``dab_scale``
    models a weaker or stronger assay rendering it, see ``THIRD_CENTER_PHYSICS``); ``white_rgb`` is the
    scanner's white level per channel (white balance); ``gamma`` is applied to the 0–1 intensity
    (``out = in ** gamma``); ``blur_px`` is the optical blur sigma in level-0 pixels; ``jpeg_quality``
    is the compression quality of the slide tiles.
    """

    name: str
    h_vector: tuple[float, float, float]
    dab_vector: tuple[float, float, float]
    h_strength: float
    white_rgb: tuple[float, float, float]
    gamma: float
    blur_px: float
    jpeg_quality: int
    noise_sd: float = 1.5  # sensor noise, grey levels
    # physical parameters (issue 11); the defaults are centres A and B
    mpp: float = SLIDE_MPP  # scanner level-0 µm/px
    dab_scale: float = 1.0  # assay sensitivity: rendered membrane DAB OD = biological OD × this
    membrane_scale: float = 1.0  # membrane half-width multiplier
    cell_scale: float = 1.0  # tumour cell diameter multiplier
    nucleus_scale: float = 1.0  # nucleus semi-axis multiplier

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "h_vector": [round(float(x), 4) for x in self.h_vector],
            "dab_vector": [round(float(x), 4) for x in self.dab_vector],
            "h_strength": self.h_strength,
            "white_rgb": list(self.white_rgb),
            "gamma": self.gamma,
            "blur_px": self.blur_px,
            "jpeg_quality": self.jpeg_quality,
            "noise_sd": self.noise_sd,
            "mpp": self.mpp,
            "dab_scale": self.dab_scale,
            "membrane_scale": self.membrane_scale,
            "cell_scale": self.cell_scale,
            "nucleus_scale": self.nucleus_scale,
        }


def _tuple3(v: np.ndarray) -> tuple[float, float, float]:
    u = unit(v)
    return (round(float(u[0]), 4), round(float(u[1]), 4), round(float(u[2]), 4))


#: Centre A: textbook stain vectors, neutral white, sharp scan, high JPEG quality.
CENTER_A = CenterProfile(
    name="A",
    h_vector=_tuple3(np.array(RJ_HEMATOXYLIN)),
    dab_vector=_tuple3(np.array(RJ_DAB)),
    h_strength=1.0,
    white_rgb=(244.0, 242.0, 238.0),
    gamma=1.0,
    blur_px=0.5,
    jpeg_quality=90,
)
#: Centre B: bluer hematoxylin, redder DAB, stronger counterstain, cool white balance, darker
#: gamma, softer optics and stronger JPEG compression.
CENTER_B = CenterProfile(
    name="B",
    h_vector=_tuple3(np.array([0.56, 0.70, 0.44])),
    dab_vector=_tuple3(np.array([0.21, 0.52, 0.83])),
    h_strength=1.35,
    white_rgb=(232.0, 238.0, 250.0),
    gamma=1.18,
    blur_px=1.0,
    jpeg_quality=72,
)


#: Centre C's physics: a 40× scanner (0.25 µm/px), a weaker assay (membrane DAB OD 0.4× that of
#: A and B for the same biology), thinner membranes, smaller cells with larger nuclei, a weaker
#: counterstain and a softer scan. Hard in the ways real external centres are (issue 11).
THIRD_CENTER_PHYSICS: dict[str, Any] = {
    "mpp": 0.25,
    "dab_scale": 0.4,
    "membrane_scale": 0.7,
    "cell_scale": 0.85,
    "nucleus_scale": 1.05,
    "h_strength": 0.8,
    "blur_px": 1.6,
    "jpeg_quality": 80,
}


def center_name(index: int) -> str:
    """``A``, ``B``, … ``Z`` for index 0 … 25."""
    return chr(ord("A") + index)


def center_profiles(n_centers: int, seed: int) -> list[CenterProfile]:
    """Profiles of ``n_centers`` centres: A and B are fixed; C onwards are drawn from ``seed``."""
    fixed = [CENTER_A, CENTER_B]
    out = fixed[:n_centers]
    rng = np.random.default_rng([seed, 0xC0FFEE])
    for i in range(len(out), n_centers):
        h = unit(RJ_HEMATOXYLIN) + rng.normal(0, 0.12, 3)
        d = unit(RJ_DAB) + rng.normal(0, 0.08, 3)
        out.append(
            CenterProfile(
                name=center_name(i),
                h_vector=_tuple3(np.abs(h)),
                dab_vector=_tuple3(np.abs(d)),
                h_strength=round(float(rng.uniform(0.8, 1.4)), 3),
                white_rgb=tuple(round(float(x), 1) for x in rng.uniform(228, 250, 3)),  # type: ignore[arg-type]
                gamma=round(float(rng.uniform(0.85, 1.2)), 3),
                blur_px=round(float(rng.uniform(0.4, 1.2)), 2),
                jpeg_quality=int(rng.integers(70, 95)),
            )
        )
    if n_centers >= 3:  # C: colours drawn from the seed as D, E, …; physics of a hard centre
        out[2] = replace(out[2], **THIRD_CENTER_PHYSICS)
    return out


def membrane_class_index(od: np.ndarray) -> np.ndarray:
    """Membrane class index (into :data:`MEMBRANE_CLASSES`) of each membrane DAB OD."""
    return np.searchsorted(np.asarray(MEMBRANE_OD_BOUNDS), od, side="right").astype(np.int8)


#: Fraction of stained (faint) tumour cells drawn for a HER2-0 "ultralow" slide: inside the
#: ASCO/CAP 2023 ultralow band (> 0 and ≤ 10 %) with a margin on both sides.
ULTRALOW_RANGE: tuple[float, float] = (0.03, 0.08)
#: The two kinds of HER2 0 (ASCO/CAP 2023): no staining, or faint incomplete staining in ≤ 10 %.
ZERO_KINDS: tuple[str, str] = ("0-null", "0-ultralow")


def asco_cap_call(class_idx: np.ndarray, completeness: np.ndarray) -> str:
    """:func:`asco_cap_score` with HER2 0 split as in the ASCO/CAP 2023 update.

    ``0-null``: no tumour cell with perceptible membrane staining; ``0-ultralow``: some (at most
    10 %) faint, incomplete staining; otherwise the score (``1+``, ``2+``, ``3+``).
    """
    score = asco_cap_score(class_idx, completeness)
    if score != "0":
        return score
    return "0-ultralow" if np.count_nonzero(np.asarray(class_idx) >= 1) else "0-null"


def asco_cap_score(class_idx: np.ndarray, completeness: np.ndarray) -> str:
    """HER2 IHC score of a set of tumour cells by the ASCO/CAP membrane-staining rules.

    ``class_idx`` indexes :data:`MEMBRANE_CLASSES`; ``completeness`` is the stained fraction of each
    membrane (0–1). 3+: strong complete staining in >10 % of cells; 2+: weak–moderate (or strong)
    complete staining in >10 %; 1+: perceptible (mostly faint, incomplete) staining in >10 %;
    otherwise 0. An empty set of cells is an error.
    """
    class_idx = np.asarray(class_idx)
    n = class_idx.size
    if n == 0:
        raise ValueError("cannot score a slide without tumour cells")
    complete = np.asarray(completeness) >= COMPLETE_MIN
    strong_complete = np.count_nonzero((class_idx == 3) & complete) / n
    wm_complete = np.count_nonzero((class_idx >= 2) & complete) / n
    stained = np.count_nonzero(class_idx >= 1) / n
    if strong_complete > 0.10:
        return "3+"
    if wm_complete > 0.10:
        return "2+"
    if stained > 0.10:
        return "1+"
    return "0"

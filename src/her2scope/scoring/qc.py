"""Quality-control gates that decide whether a slide may be scored at all.

Each gate is a named check with its measured value, its threshold and a verdict; ``predict``
writes them into the slide JSON (``qc``) and refuses to score a slide that fails one
(``status = "qc_failed"``) unless forced. The thresholds and the values they were chosen from
are documented in docs/predict.md ("Quality gates").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from her2scope._configbase import config_section


@config_section("qc")
class QCConfig:
    """Thresholds of the slide QC gates (degrees, µm/px ratios, tile counts).

    Defaults were chosen with margins on both sides from real H&E / Ki67 / FHL2 / DICOM files and
    the synthetic centres; the measured values are tabulated in docs/predict.md.
    """

    max_h_angle_deg: Annotated[
        float,
        Field(gt=0, le=90, description="fitted hematoxylin within this of the reference one"),
    ] = 25.0
    max_dab_angle_deg: Annotated[
        float,
        Field(gt=0, le=90, description="fitted second stain within this of the reference DAB"),
    ] = 25.0
    min_eosin_margin_deg: Annotated[
        float,
        Field(ge=-90, le=90, description="second stain this much closer to DAB than to eosin"),
    ] = 10.0
    max_off_plane_share: Annotated[
        float,
        Field(gt=0, le=1, description="share of tissue pixels > 15° outside the H-DAB plane"),
    ] = 0.05
    max_background_chroma: Annotated[
        float,
        Field(
            gt=0,
            le=255,
            description="glass colour: max(R,G,B) - min(R,G,B) of the brightest 5 %",
        ),
    ] = 60.0
    max_mpp_rel_diff: Annotated[
        float,
        Field(gt=0, lt=1, description="tile µm/px within this of the training tiles' µm/px"),
    ] = 0.10
    min_tiles: Annotated[int, Field(ge=1, description="at least this many tumour tiles")] = 8
    max_passthrough_frac: Annotated[
        float, Field(ge=0, le=1, description="at most this fraction of tiles left unnormalised")
    ] = 0.5


@dataclass(frozen=True)
class QCCheck:
    """One gate: what was measured, against what, and whether it passed."""

    check: str
    value: float | None
    threshold: float
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["value"], float):
            d["value"] = round(d["value"], 4)
        return d


def failed(checks: Sequence[QCCheck]) -> list[QCCheck]:
    """The checks that did not pass."""
    return [c for c in checks if not c.passed]


def reasons(checks: Sequence[QCCheck]) -> list[str]:
    """One readable line per failed check (``check: detail``)."""
    return [f"{c.check}: {c.detail}" for c in failed(checks)]


def check_stain_identity(
    stain_matrix: np.ndarray | None, reason: str, cfg: QCConfig
) -> list[QCCheck]:
    """Is the slide hematoxylin + DAB? Three checks on the fitted stain vectors (rows H, DAB).

    Without a fit (``stain_matrix`` None) all three fail with ``reason``. The angles are to the
    packaged reference vectors (:func:`her2scope.stain.default_reference`) and to the Ruifrok
    eosin vector: an H&E slide's second stain is eosin, closer to eosin than to DAB.
    """
    from her2scope.stain import default_reference
    from her2scope.stain.qc import EOSIN_OD, angle_deg

    names = ("stain_hematoxylin_angle", "stain_dab_angle", "stain_dab_vs_eosin_margin")
    limits = (cfg.max_h_angle_deg, cfg.max_dab_angle_deg, cfg.min_eosin_margin_deg)
    if stain_matrix is None:
        why = f"no hematoxylin + DAB stain fit ({reason or 'passthrough'}); is this an IHC slide?"
        return [QCCheck(n, None, t, False, why) for n, t in zip(names, limits, strict=True)]
    ref = default_reference().stain_matrix
    h_angle = angle_deg(stain_matrix[0], ref[0])
    dab_angle = angle_deg(stain_matrix[1], ref[1])
    margin = angle_deg(stain_matrix[1], EOSIN_OD) - dab_angle
    note = f" ({reason})" if reason else ""
    return [
        QCCheck(
            names[0], h_angle, limits[0], h_angle <= limits[0],
            f"first stain {h_angle:.1f}° from the reference hematoxylin (limit {limits[0]:g}°)"
            + note,
        ),
        QCCheck(
            names[1], dab_angle, limits[1], dab_angle <= limits[1],
            f"second stain {dab_angle:.1f}° from the reference DAB (limit {limits[1]:g}°): "
            + ("a DAB stain" if dab_angle <= limits[1] else "not DAB (H&E or another chromogen?)"),
        ),
        QCCheck(
            names[2], margin, limits[2], margin >= limits[2],
            f"second stain is {margin:.1f}° closer to DAB than to eosin (need >= {limits[2]:g}°)"
            + ("" if margin >= limits[2] else ": looks like eosin, an H&E slide is not scored"),
        ),
    ]  # fmt: skip


def check_third_stain(off_plane: float | None, cfg: QCConfig) -> QCCheck:
    """Tissue colours must be mixes of the fitted H and DAB (no eosin or other third stain)."""
    if off_plane is None:
        return QCCheck(
            "stain_third_stain", None, cfg.max_off_plane_share, False,
            "no stain fit or no tissue pixels: cannot tell which stains the slide carries",
        )  # fmt: skip
    from her2scope.stain.qc import OFF_PLANE_DEG

    ok = off_plane <= cfg.max_off_plane_share
    detail = (
        f"{off_plane:.1%} of tissue pixels are more than {OFF_PLANE_DEG:g}° away from any mix of "
        f"the fitted hematoxylin and DAB (limit {cfg.max_off_plane_share:.0%})"
    )
    if not ok:
        detail += ": a third stain (eosin in an H&E slide?) is present; only H + DAB IHC is scored"
    return QCCheck("stain_third_stain", off_plane, cfg.max_off_plane_share, ok, detail)


def check_background(thumbnail: np.ndarray, cfg: QCConfig) -> QCCheck:
    """Glass must be near grey; a YCbCr image read as RGB (glass ≈ (245, 128, 128)) is not."""
    from her2scope.stain.qc import background_chroma

    chroma, colour = background_chroma(thumbnail)
    ok = chroma <= cfg.max_background_chroma
    detail = f"brightest 5 % of the slide have colour {tuple(colour)}, chroma {chroma:.0f}"
    if not ok:
        detail += (
            f" > {cfg.max_background_chroma:g}: colours are wrong (a YCbCr file read as RGB, or a"
            " strong colour cast); fix the scan export or the white balance"
        )
    return QCCheck("background_neutral", chroma, cfg.max_background_chroma, ok, detail)


def check_resolution(tile_mpp: float, train_mpp: float | None, cfg: QCConfig) -> QCCheck:
    """Tiles must have the training tiles' µm/px within ``max_mpp_rel_diff``."""
    if train_mpp is None or not math.isfinite(train_mpp) or train_mpp <= 0:
        return QCCheck(
            "resolution", tile_mpp, cfg.max_mpp_rel_diff, False,
            f"tiles at {tile_mpp:.4g} µm/px but the run does not record its training µm/px; "
            "retrain with this version, or set tiling.target_mpp in the run",
        )  # fmt: skip
    rel = abs(tile_mpp / train_mpp - 1.0)
    ok = rel <= cfg.max_mpp_rel_diff
    detail = (
        f"tiles at {tile_mpp:.4g} µm/px, training tiles at {train_mpp:.4g} µm/px ({rel:.1%} apart)"
    )
    if not ok:
        detail += (
            f" > {cfg.max_mpp_rel_diff:.0%}: the model would see tissue at the wrong scale; "
            f"tile at {train_mpp:.4g} µm/px (train with tiling.target_mpp set) or give the right --mpp"
        )
    return QCCheck("resolution", rel, cfg.max_mpp_rel_diff, ok, detail)


def check_scan_resolution(slide_mpp: float, train_mpp: float | None, cfg: QCConfig) -> QCCheck:
    """The scan must not be coarser than the training tiles (tiles upsampled from it lack detail).

    Value: ``slide_mpp / train_mpp − 1`` (negative: a finer scan, which is fine).
    """
    if train_mpp is None or not math.isfinite(train_mpp) or train_mpp <= 0:
        return QCCheck(
            "scan_resolution", None, cfg.max_mpp_rel_diff, False,
            f"scan at {slide_mpp:.4g} µm/px but the run does not record its training µm/px",
        )  # fmt: skip
    rel = slide_mpp / train_mpp - 1.0
    ok = rel <= cfg.max_mpp_rel_diff
    detail = f"scanned at {slide_mpp:.4g} µm/px, training tiles at {train_mpp:.4g} µm/px"
    if not ok:
        detail += (
            f": the scan is {rel:.0%} coarser, its tiles would be upsampled and lack the detail "
            "the model was trained on; rescan at a higher magnification"
        )
    return QCCheck("scan_resolution", rel, cfg.max_mpp_rel_diff, ok, detail)


def check_tiles(n_tiles: int, cfg: QCConfig) -> QCCheck:
    ok = n_tiles >= cfg.min_tiles
    detail = f"{n_tiles} tumour tile(s) (need >= {cfg.min_tiles})"
    if not ok:
        detail += ": too little tumour to score; check the ROI and the tiling settings"
    return QCCheck("tumour_tiles", float(n_tiles), float(cfg.min_tiles), ok, detail)


def check_stain_fit(passthrough_frac: float | None, reason: str, cfg: QCConfig) -> QCCheck:
    """Fraction of tiles left unnormalised; None (run without normalisation) passes."""
    if passthrough_frac is None:
        return QCCheck(
            "stain_fit", None, cfg.max_passthrough_frac, True,
            "the run does not normalise stains (stain.mode=none)",
        )  # fmt: skip
    ok = passthrough_frac <= cfg.max_passthrough_frac
    detail = f"{passthrough_frac:.0%} of tiles left unnormalised"
    if reason:
        detail += f" ({reason})"
    return QCCheck("stain_fit", passthrough_frac, cfg.max_passthrough_frac, ok, detail)


def run_checks(
    fitted: Any,
    images: Sequence[np.ndarray],
    normalises: bool,
    thumbnail: np.ndarray,
    tiles: Any,
    train_mpp: float | None,
    cfg: QCConfig,
    slide_mpp: float | None = None,
) -> list[QCCheck]:
    """Every gate for one slide, in a fixed order.

    ``fitted`` is the slide's fitted :class:`~her2scope.stain.StainNormalizer` (read for its stain
    vectors even when the run does not normalise, ``normalises=False``), ``images`` the tiles it
    was fitted on; ``thumbnail`` an RGB
    overview of the whole slide; ``tiles`` the slide's tile table (``mpp`` column);
    ``slide_mpp`` the scan's level-0 µm/px (None: the scan check is skipped).
    """
    matrix = None if fitted is None else fitted.stain_matrix
    reason = "" if fitted is None else fitted.reason
    from her2scope.stain.qc import off_plane_share

    checks = check_stain_identity(matrix, reason, cfg)
    off = None if matrix is None else off_plane_share(list(images), matrix, fitted.io, fitted.beta)
    checks.append(check_third_stain(off, cfg))
    checks.append(check_background(thumbnail, cfg))
    tile_mpp = float(np.median(np.asarray(tiles["mpp"], np.float64)))
    checks.append(check_resolution(tile_mpp, train_mpp, cfg))
    if slide_mpp is not None:
        checks.append(check_scan_resolution(float(slide_mpp), train_mpp, cfg))
    checks.append(check_tiles(len(tiles), cfg))
    if normalises:
        frac = 1.0 if fitted is None or fitted.passthrough else 0.0
        checks.append(check_stain_fit(frac, reason if frac else "", cfg))
    else:
        checks.append(check_stain_fit(None, "", cfg))
    return checks

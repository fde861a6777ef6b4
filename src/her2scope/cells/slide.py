"""Cell scoring of whole slides: stain vectors, region-by-region analysis, outputs, summary.

Per slide, in ``out_dir`` (names from :func:`output_paths`):

- ``<slide_id>.cells.parquet``: one row per cell (:data:`her2scope.cells.export.CELL_COLUMNS`);
- ``<slide_id>.cells.json``: the slide summary (call, rule, fractions, H-score, provenance);
- ``<slide_id>.cells.geojson``: QuPath cells (``objectType: "cell"``, nucleus geometry);
- ``<slide_id>.cells.png``: the overlay (cells coloured by pattern on the slide, ROI outline).

Memory is bounded by the region size: the ROI's bounding box is walked region by region
(``cfg.region_um`` squares on a grid anchored at the slide origin, each read with a
``cfg.halo_um`` margin at ``cfg.target_mpp``); a cell belongs to the region holding its nucleus
centroid, so no cell is counted twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from her2scope._io import write_json
from her2scope._pool import process_pool
from her2scope._progress import track
from her2scope.cells.classify import (
    INTENSITY_CLASSES,
    PATTERNS,
    call_to_score,
    h_score,
    intensity_class,
    pattern_class,
    slide_call,
)
from her2scope.cells.config import CellConfig
from her2scope.cells.export import CELL_COLUMNS
from her2scope.cells.segment import analyse_region, outlines
from her2scope.errors import ConfigError, Her2ScopeError
from her2scope.layout import CELLS_AGREEMENT_JSON, CELLS_SUMMARY_CSV

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: Suffixes of the per-slide outputs (after ``<slide_id>``).
OUTPUT_SUFFIXES: dict[str, str] = {
    "cells": ".cells.parquet",
    "summary": ".cells.json",
    "geojson": ".cells.geojson",
    "overlay": ".cells.png",
}
SUMMARY_CSV = CELLS_SUMMARY_CSV
AGREEMENT_JSON = CELLS_AGREEMENT_JSON
#: Longest side of the overlay PNG, px.
OVERLAY_MAX_PX = 2048
#: Regions sampled (of SAMPLE_UM, spread over the ROI) to fit the stain vectors when no fitted
#: ones are given, and to set the slide's nucleus threshold.
FIT_REGIONS = 12
SAMPLE_UM = 512.0
NOT_A_DEVICE = (
    "Research software, not a medical device: a cell-rule HER2 call from her2scope is a second "
    "opinion for a pathologist, not a diagnosis."
)


def output_paths(out_dir: str | Path, slide_id: str) -> dict[str, Path]:
    """The per-slide output files (see the module docstring)."""
    out = Path(out_dir)
    return {k: out / f"{slide_id}{suffix}" for k, suffix in OUTPUT_SUFFIXES.items()}


def check_outputs_not_inputs(outputs: dict[str, Path], inputs: Sequence[Path | None]) -> None:
    """Refuse to run when an output file would replace an input file."""
    ins = {Path(p).resolve() for p in inputs if p is not None}
    clash = [str(p) for p in outputs.values() if p.resolve() in ins]
    if clash:
        raise ConfigError(
            f"output {', '.join(clash)} would replace an input file; choose another --out folder"
        )


def load_stain_matrix(
    stain: dict[str, Any] | None, sample: Sequence[np.ndarray]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The (2, 3) H/DAB unit OD vectors to separate stains with, and where they came from.

    ``stain`` is a slide sidecar's ``stain`` object (from ``her2scope stain fit``); without one, or
    when it is a passthrough, the vectors are fitted on ``sample`` (RGB regions of the slide); when
    that fit fails too, the reference vectors are used and the reason is recorded.
    """
    from her2scope.stain import StainNormalizer

    if stain is not None:
        norm = StainNormalizer.from_dict(stain)
        if norm.stain_matrix is not None:
            return norm.stain_matrix, {"source": "sidecar", "reason": norm.reason}
    norm = StainNormalizer()
    if sample:
        norm.fit(list(sample))
        if norm.stain_matrix is not None:
            why = f"fitted on {len(sample)} region(s) of the slide"
            return norm.stain_matrix, {
                "source": "fitted",
                "reason": f"{why}; {norm.reason}" if norm.reason else why,
            }
    reason = norm.reason if sample else "no tissue regions to fit on"
    log.warning("stain fit failed (%s); using the reference H and DAB vectors", reason)
    return norm.reference.stain_matrix, {
        "source": "reference",
        "reason": f"fit failed ({reason}); reference vectors used",
    }


def _read_sidecar_stain(tiles_dir: Path | None, slide_id: str) -> dict[str, Any] | None:
    if tiles_dir is None:
        return None
    path = tiles_dir / "slides" / f"{slide_id}.json"
    try:
        side = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s: no readable sidecar %s; fitting the stain on the slide", slide_id, path)
        return None
    stain = side.get("stain")
    return stain if isinstance(stain, dict) else None


@dataclass
class _Plan:
    level: int
    downsample: float
    step0: int  # region side, level-0 px
    halo0: int  # halo, level-0 px
    out_px: int  # region + halos, analysis px
    read_px: int  # region + halos, level px
    scale0: float  # level-0 px per analysis px


def analysis_mpp(slide_mpp: float, cfg: CellConfig) -> float:
    """µm/px a slide scanned at ``slide_mpp`` is analysed at: ``cfg.target_mpp``, or the slide's
    own resolution when finer, but not finer than ``cfg.finest_mpp``."""
    return max(min(float(cfg.target_mpp), float(slide_mpp)), float(cfg.finest_mpp))


def at_analysis_mpp(cfg: CellConfig, slide_mpp: float) -> CellConfig:
    """``cfg`` with ``target_mpp`` set to :func:`analysis_mpp`, and ``region_um`` shrunk by the
    same factor so a region holds as many pixels (bounded memory) as at ``cfg.target_mpp``."""
    mpp = analysis_mpp(slide_mpp, cfg)
    if mpp == cfg.target_mpp:
        return cfg
    return dataclasses.replace(cfg, target_mpp=mpp, region_um=cfg.region_um * mpp / cfg.target_mpp)


def _plan(slide: Any, cfg: CellConfig) -> _Plan:
    from her2scope.tiling.grid import plan_geometry

    mpp0 = float(slide.mpp[0])
    region_px = max(64, round(cfg.region_um / cfg.target_mpp))
    halo_px = round(cfg.halo_um / cfg.target_mpp)
    g = plan_geometry(mpp0, slide.level_downsamples, region_px, cfg.target_mpp)
    level_mpp = mpp0 * g.downsample
    halo_read = round(halo_px * cfg.target_mpp / level_mpp)
    read_px = g.read_px + 2 * halo_read
    out_px = region_px + 2 * halo_px
    return _Plan(
        level=g.level,
        downsample=g.downsample,
        step0=g.level0_px,
        halo0=round(halo_read * g.downsample),
        out_px=out_px,
        read_px=read_px,
        scale0=read_px * g.downsample / out_px,
    )


def _read(slide: Any, plan: _Plan, x0: int, y0: int) -> np.ndarray:
    """Region with halo at the analysis resolution; level-0 origin ``(x0 − halo0, y0 − halo0)``."""
    import cv2

    rgb = slide.read_region((x0 - plan.halo0, y0 - plan.halo0), plan.level, (plan.read_px,) * 2)
    if plan.read_px != plan.out_px:
        interp = cv2.INTER_AREA if plan.read_px > plan.out_px else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (plan.out_px, plan.out_px), interpolation=interp)
    return rgb


def _region_origins(
    width: int, height: int, step: int, bbox: tuple[float, float, float, float]
) -> list[tuple[int, int]]:
    """Top-left corners of the grid squares (anchored at 0) that touch ``bbox``, edges included."""
    from her2scope.tiling.grid import grid_origins

    # pad the extent by one step so the partial strip at the right/bottom edge is covered too
    xs, ys = grid_origins(width + step, height + step, step, bbox)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True) if x < width and y < height]


def _sample(slide: Any, area: Any, cfg: CellConfig, width: int, height: int) -> list[np.ndarray]:
    """Up to FIT_REGIONS regions of SAMPLE_UM spread over ``area`` that hold tissue."""
    from shapely.geometry import box

    splan = _plan(slide, dataclasses.replace(cfg, region_um=SAMPLE_UM, halo_um=0.0))
    origins = [
        (x, y)
        for x, y in _region_origins(width, height, splan.step0, area.bounds)
        if area.intersects(box(x, y, x + splan.step0, y + splan.step0))
    ]
    out: list[np.ndarray] = []
    if not origins:
        return out
    pick = np.unique(np.linspace(0, len(origins) - 1, min(FIT_REGIONS, len(origins))).round())
    for i in pick.astype(int):
        rgb = _read(slide, splan, *origins[i])
        if (rgb.max(axis=-1) < 220).mean() > 0.05:
            out.append(rgb)
    return out


def _slide_h_threshold(sample: list[np.ndarray], matrix: np.ndarray, cfg: CellConfig) -> float:
    """Otsu's nucleus threshold over the pooled sample (``cfg.nucleus_h_od`` without a sample)."""
    from her2scope.cells.segment import nucleus_threshold, smooth_h, stain_concentrations

    if not sample:
        return float(cfg.nucleus_h_od)
    hs, vs = [], []
    for rgb in sample:
        h, _, valid = stain_concentrations(rgb, matrix)
        hs.append(smooth_h(h, cfg.target_mpp, cfg).ravel())
        vs.append(valid.ravel())
    return nucleus_threshold(np.concatenate(hs), np.concatenate(vs), cfg)


def score_slide_cells(
    slide_path: str | Path,
    out_dir: str | Path,
    roi_path: str | Path | None = None,
    cfg: CellConfig | None = None,
    tiles_dir: str | Path | None = None,
    mpp: float | None = None,
    roi_classes: Sequence[str] | None = None,
    slide_id: str | None = None,
    run_stain: tuple[np.ndarray, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Find, measure and class the cells of one slide inside its ROI; write the four outputs.

    Without ROI the whole slide is analysed (regions that are almost all glass are skipped).
    ``tiles_dir`` points at a tiling output whose ``slides/<slide_id>.json`` holds the stain fit
    of ``her2scope stain fit``; without it the stain vectors are fitted on the slide's own
    regions. ``run_stain`` (stain vectors and their provenance, from :func:`fit_run_stain`)
    overrides both. Returns the summary written to ``<slide_id>.cells.json``. Raises
    :class:`ConfigError` when an output would replace an input, and :class:`SlideError` /
    :class:`RoiError` for unreadable inputs.
    """
    from shapely import contains_xy
    from shapely.geometry import box

    from her2scope.layout import slide_id_of
    from her2scope.slide.reader import open_slide

    user_cfg = cfg or CellConfig()
    slide_path = Path(slide_path)
    slide_id = slide_id or slide_id_of(slide_path)  # a manifest's id, else the file's
    tiles = Path(tiles_dir) if tiles_dir is not None else None
    outs = output_paths(out_dir, slide_id)
    sidecar = tiles / "slides" / f"{slide_id}.json" if tiles is not None else None
    check_outputs_not_inputs(
        outs, [slide_path, Path(roi_path) if roi_path is not None else None, sidecar]
    )

    with open_slide(slide_path, mpp=mpp) as slide:
        width, height = slide.dimensions
        cfg = at_analysis_mpp(user_cfg, float(slide.mpp[0]))
        roi, notes, area = _analysed_area(slide, slide_path, slide_id, roi_path, roi_classes)
        plan = _plan(slide, cfg)
        origins = _region_origins(width, height, plan.step0, area.bounds)
        origins = [
            (x, y) for x, y in origins if area.intersects(box(x, y, x + plan.step0, y + plan.step0))
        ]

        # a fixed sample of the area (independent of the region size): stain vectors (the
        # sidecar's, else fitted on it, else the reference) and the slide's nucleus threshold
        sample = _sample(slide, area, cfg, width, height)
        if run_stain is not None:
            stain_matrix, stain_info = run_stain
        else:
            stain_matrix, stain_info = load_stain_matrix(
                _read_sidecar_stain(tiles, slide_id), sample
            )
        h_threshold = _slide_h_threshold(sample, stain_matrix, cfg)
        del sample

        parts: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAY_KEYS}
        cell_polys: list[np.ndarray] = []
        nuc_polys: list[np.ndarray] = []
        n_skipped = 0
        for x0, y0 in track(origins, f"cells: {slide_id}", total=len(origins)):
            rgb = _read(slide, plan, x0, y0)
            if (rgb.max(axis=-1) < 220).mean() < 0.01:
                n_skipped += 1
                continue
            rc = analyse_region(rgb, stain_matrix, cfg.target_mpp, cfg, h_threshold=h_threshold)
            if rc.n == 0:
                continue
            # analysis px → level-0 px; keep cells whose nucleus centroid is in this region's core
            ox, oy = x0 - plan.halo0, y0 - plan.halo0
            lx = ox + (rc.x + 0.5) * plan.scale0 - 0.5
            ly = oy + (rc.y + 0.5) * plan.scale0 - 0.5
            keep = (lx >= x0) & (lx < x0 + plan.step0) & (ly >= y0) & (ly < y0 + plan.step0)
            keep &= (lx < width) & (ly < height)
            if roi is not None:
                keep &= contains_xy(roi, lx, ly)
            if not keep.any():
                continue
            sub = rc.subset(keep)
            sub.x, sub.y = lx[keep].astype(np.float32), ly[keep].astype(np.float32)
            for k in _ARRAY_KEYS:
                parts[k].append(getattr(sub, k))
            assert rc.cells is not None and rc.nuclei is not None
            for polys, lab in ((cell_polys, rc.cells), (nuc_polys, rc.nuclei)):
                for i, p in enumerate(outlines(lab, rc.n, keep)):
                    polys.append(
                        _to_level0(p, ox, oy, plan.scale0, float(sub.x[i]), float(sub.y[i]))
                    )

        arrays = {
            k: (np.concatenate(v) if v else np.zeros(0, np.float32)) for k, v in parts.items()
        }
        arrays["intensity_idx"] = intensity_class(arrays["membrane_od_p90"], cfg)
        arrays["pattern_idx"] = pattern_class(arrays["intensity_idx"], arrays["completeness"], cfg)
        overlay = _overlay(slide, area, arrays, roi)

    from her2scope.cells.export import (
        cells_frame,
        write_cells_geojson,
        write_cells_parquet,
        write_png,
    )

    df = cells_frame(arrays)
    call = slide_call(arrays["pattern_idx"], cfg)
    n = len(df)
    roi_mm2 = float(area.area) * float(slide.mpp[0]) * float(slide.mpp[1]) / 1e6
    summary: dict[str, Any] = {
        "slide_id": slide_id,
        "slide_path": str(slide_path),
        "roi_path": None if roi_path is None else str(roi_path),
        "call": call["call"],
        "score": call_to_score(call["call"]),
        "rule": call["rule"],
        "margin": call["margin"],
        "borderline": call["borderline"],
        "n_cells": n,
        "pattern_fraction": call["fractions"],
        "intensity_fraction": (
            None
            if n == 0
            else {
                c: float(np.count_nonzero(arrays["intensity_idx"] == i)) / n
                for i, c in enumerate(INTENSITY_CLASSES)
            }
        ),
        "h_score": h_score(arrays["intensity_idx"]),
        "analysed_area_mm2": round(roi_mm2, 6),
        "cells_per_mm2": round(n / roi_mm2, 2) if roi_mm2 > 0 else None,
        "n_regions": len(origins),
        "n_regions_glass": n_skipped,
        "mpp": [float(slide.mpp[0]), float(slide.mpp[1])],
        "target_mpp": user_cfg.target_mpp,
        "analysis_mpp": cfg.target_mpp,
        "stain": {**stain_info, "stain_matrix": np.round(stain_matrix, 6).tolist()},
        "nucleus_h_threshold": round(h_threshold, 6),
        "roi_notes": notes,
        "config": dataclasses.asdict(user_cfg),
        "outputs": {k: p.name for k, p in outs.items()},
        "note": NOT_A_DEVICE,
    }
    write_cells_parquet(outs["cells"], df)
    write_cells_geojson(outs["geojson"], df, cell_polys, nuc_polys)
    write_png(outs["overlay"], overlay)
    write_json(outs["summary"], summary)
    return summary


def _analysed_area(
    slide: Any,
    slide_path: Path,
    slide_id: str,
    roi_path: str | Path | None,
    roi_classes: Sequence[str] | None,
) -> tuple[Any, list[str], Any]:
    """The slide's ROI (None without one), the notes of clipping it, and the area to analyse."""
    from shapely.geometry import box

    from her2scope.slide.rois import clip_to_slide, load_rois

    width, height = slide.dimensions
    if roi_path is None:
        return None, [], box(0, 0, width, height)
    roi, notes = clip_to_slide(load_rois(roi_path, roi_classes), width, height)
    for note in notes:
        log.warning("%s: %s", slide_id, note)
    if roi is None:
        raise Her2ScopeError(
            f"slide '{slide_path}': the ROI file '{roi_path}' holds no usable ROI "
            "inside the slide; check the file or run without --roi"
        )
    return roi, notes, roi


#: Every RUN_STAIN_STEP-th pixel (each axis) of each slide's sample goes into a run's stain fit.
RUN_STAIN_STEP = 4


def fit_run_stain(
    jobs: Sequence[tuple[Path, Path | None]],
    cfg: CellConfig,
    mpp: float | Sequence[float | None] | None = None,
    center: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """One set of stain vectors for all the slides of a run, or of one centre (``center``).

    A centre's H and DAB vectors belong to its assay and scanner, not to a slide; fitted per
    slide, a HER2 0 or 1+ slide holds too little DAB to pin the DAB vector, and the fitted
    vector, hence the DAB gain, changes from slide to slide with the grade — which no
    per-centre ``dab_scale`` can undo. Here the sample of every slide (``jobs``: slide and ROI
    paths), thinned to every RUN_STAIN_STEP-th pixel, is pooled into one fit. Returns None when
    that fit fails (each slide then fits its own). ``mpp`` is the µm/px of files without one
    (one for all, or one per job).
    """
    from her2scope.layout import slide_id_of
    from her2scope.slide.reader import open_slide
    from her2scope.stain import StainNormalizer

    pooled: list[np.ndarray] = []
    mpps = list(mpp) if isinstance(mpp, Sequence) else [mpp] * len(jobs)
    skipped = 0
    for (path, roi_path), slide_mpp in zip(jobs, mpps, strict=True):
        try:
            with open_slide(path, mpp=slide_mpp) as slide:
                width, height = slide.dimensions
                _, _, area = _analysed_area(slide, path, slide_id_of(path), roi_path, None)
                scfg = at_analysis_mpp(cfg, float(slide.mpp[0]))
                for rgb in _sample(slide, area, scfg, width, height):
                    pooled.append(np.ascontiguousarray(rgb[::RUN_STAIN_STEP, ::RUN_STAIN_STEP]))
        except Exception as exc:  # that slide fails on its own later; the others are pooled
            log.warning("stain fit: slide '%s' left out (%s)", path, exc)
            skipped += 1
    if not pooled:
        return None
    norm = StainNormalizer()
    norm.fit(pooled)
    if norm.stain_matrix is None:
        log.warning("run stain fit failed (%s); each slide fits its own", norm.reason)
        return None
    whose = "the run" if center is None else f"centre {center}"
    why = f"fitted once for {whose} on {len(pooled)} region(s) of {len(jobs) - skipped} slide(s)"
    return norm.stain_matrix, {
        "source": "run" if center is None else "center",
        "reason": f"{why}; {norm.reason}" if norm.reason else why,
    }


#: The per-cell measurement arrays (the numeric leading columns of CELL_COLUMNS).
_ARRAY_KEYS = CELL_COLUMNS[: CELL_COLUMNS.index("completeness") + 1]


def _to_level0(
    poly: np.ndarray, ox: int, oy: int, scale0: float, cx: float, cy: float
) -> np.ndarray:
    """Region-px outline → level-0 px; a degenerate outline becomes a 2 px box at the centroid."""
    if len(poly) < 3:
        return np.array([[cx - 1, cy - 1], [cx + 1, cy - 1], [cx + 1, cy + 1], [cx - 1, cy + 1]])
    return np.stack(
        [ox + (poly[:, 0] + 0.5) * scale0 - 0.5, oy + (poly[:, 1] + 0.5) * scale0 - 0.5], 1
    )


def _overlay(slide: Any, area: Any, arrays: dict[str, np.ndarray], roi: Any) -> np.ndarray:
    """The analysed area, at most OVERLAY_MAX_PX on a side, with cells and the ROI outline."""
    from her2scope.cells.export import draw_overlay

    minx, miny, maxx, maxy = (float(v) for v in area.bounds)
    w0, h0 = max(1.0, maxx - minx), max(1.0, maxy - miny)
    ds = max(1.0, max(w0, h0) / OVERLAY_MAX_PX)
    level = slide.best_level_for_downsample(ds)
    lds = float(slide.level_downsamples[level])
    import cv2

    img = slide.read_region(
        (math.floor(minx), math.floor(miny)),
        level,
        (max(1, round(w0 / lds)), max(1, round(h0 / lds))),
    )
    out_w, out_h = max(1, round(w0 / ds)), max(1, round(h0 / ds))
    if img.shape[1] != out_w or img.shape[0] != out_h:
        img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
    xy = np.stack([(arrays["x"] - minx) / ds, (arrays["y"] - miny) / ds], axis=1)
    rings = []
    if roi is not None:
        geoms = getattr(roi, "geoms", [roi])
        for g in geoms:
            ring = np.asarray(g.exterior.coords)
            rings.append(np.stack([(ring[:, 0] - minx) / ds, (ring[:, 1] - miny) / ds], 1))
    radius = 4.0 / float(slide.mpp[0]) / ds  # a ~4 µm ring per cell
    return draw_overlay(img, xy, arrays["pattern_idx"], radius, rings)


# ----------------------------------------------------------------------------------------------
# many slides
# ----------------------------------------------------------------------------------------------


@dataclass
class CellsReport:
    """What :func:`run_cells` did: one summary row per slide and the failures."""

    summary: pd.DataFrame
    summary_path: Path
    failures: list[tuple[str, str]] = field(default_factory=list)  # (slide path, message)


def _resolve_roi(rois: Path | None, slide: Path, n_slides: int) -> Path | None:
    from her2scope.layout import slide_id_of
    from her2scope.slide.rois import resolve_roi_argument

    return resolve_roi_argument(rois, slide_id_of(slide), n_slides, "analysing the whole slide")


def _one(
    job: tuple[
        str,
        str | None,
        str,
        dict[str, Any],
        str | None,
        float | None,
        tuple[np.ndarray, dict[str, Any]] | None,
    ],
) -> Any:
    slide, roi, out, cfg_d, tiles, mpp, run_stain = job
    try:
        return score_slide_cells(
            slide, out, roi, CellConfig(**cfg_d), tiles, mpp, run_stain=run_stain
        )
    except Her2ScopeError as exc:
        return exc
    except Exception as exc:  # a bug or a library failure: report it, go on with other slides
        from her2scope.errors import describe_exception

        log.debug("%s", traceback.format_exc())
        return Her2ScopeError(describe_exception(exc))


def run_cells(
    slides: Sequence[str | Path],
    out_dir: str | Path,
    rois: str | Path | None = None,
    cfg: CellConfig | None = None,
    tiles_dir: str | Path | None = None,
    workers: int = 1,
    mpp: float | None = None,
    predict_dir: str | Path | None = None,
    center: str | None = None,
) -> CellsReport:
    """Score every slide's cells into ``out_dir``; a failing slide is recorded and the rest go on.

    ``rois`` is one ROI file (one slide) or a folder of ``<slide_id>.geojson|.json|.xml``.
    Writes the per-slide outputs and ``cells_summary.csv`` (one row per slide with its status).
    With ``predict_dir`` (an output folder of ``her2scope predict``), each slide's cell call is
    reconciled with the CNN's (:mod:`her2scope.cells.reconcile`): a ``reconciliation`` object in
    its ``.cells.json``, ``cnn_score``/``review`` columns, and ``cells_agreement.json``.
    Stain vectors: one fit for all the slides with ``stain_scope`` "run", or "center" and
    ``center`` given (all the slides are that centre's); else per slide (``tiles_dir``'s
    sidecars when given).
    """
    import pandas as pd

    cfg = cfg or CellConfig()
    if workers < 1:
        raise ConfigError(f"--workers {workers}: use 1 or more")
    paths = [Path(s) for s in slides]
    if not paths:
        raise ConfigError("no slides given")
    out = Path(out_dir)
    roi_dir = Path(rois) if rois is not None else None
    slide_rois = [(p, _resolve_roi(roi_dir, p, len(paths))) for p in paths]
    run_stain = None
    pooled = cfg.stain_scope == "run" or (cfg.stain_scope == "center" and center is not None)
    if pooled and len(paths) > 1:
        run_stain = fit_run_stain(slide_rois, cfg, mpp, center)
    jobs = [
        (
            str(p),
            None if r is None else str(r),
            str(out),
            dataclasses.asdict(cfg),
            None if tiles_dir is None else str(tiles_dir),
            mpp,
            run_stain,
        )
        for p, r in slide_rois
    ]
    if workers > 1 and len(jobs) > 1:
        with process_pool(min(workers, len(jobs))) as pool:
            results = list(pool.map(_one, jobs))
    else:
        results = [_one(j) for j in jobs]
    rows, failures = [], []
    recs: list[dict[str, Any]] = []
    if predict_dir is not None:
        from her2scope.cells.reconcile import reconcile

        for res in results:
            if isinstance(res, Exception):
                continue
            rec = reconcile(res, predict_dir)
            if rec is not None:
                res["reconciliation"] = rec
                recs.append(rec)
                write_json(output_paths(out, res["slide_id"])["summary"], res)
    for (slide, *_), res in zip(jobs, results, strict=True):
        if isinstance(res, Exception):
            failures.append((slide, str(res)))
            rows.append({"slide_path": slide, "status": "failed", "error": str(res)})
            continue
        fr = res["pattern_fraction"] or {}
        rows.append(
            {
                "slide_id": res["slide_id"],
                "slide_path": slide,
                "status": "ok",
                "call": res["call"],
                "score": res["score"],
                "n_cells": res["n_cells"],
                "h_score": res["h_score"],
                "borderline": res["borderline"],
                **{f"pct_{p}": round(100 * fr.get(p, 0.0), 3) for p in PATTERNS},
                "rule": res["rule"],
                **(
                    {
                        "cnn_score": res.get("reconciliation", {}).get("cnn_score"),
                        "review": res.get("reconciliation", {}).get("review"),
                    }
                    if predict_dir is not None
                    else {}
                ),
                "error": "",
            }
        )
    df = pd.DataFrame(rows)
    if predict_dir is not None:
        from her2scope.cells.reconcile import agreement_table

        write_json(out / AGREEMENT_JSON, agreement_table(recs))
    summary_path = out / SUMMARY_CSV
    from her2scope._io import atomic_open

    with atomic_open(summary_path) as fh:
        df.to_csv(fh, index=False)
    return CellsReport(df, summary_path, failures)

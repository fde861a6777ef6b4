"""Cut slides into tiles: ``tile_slide`` for one slide, ``tile_cohort`` for a manifest.

A tile is a row of coordinates, not an image: its pixels are
``open_slide(slide_path).read_tile((x, y), level, read_px, tile_px)``. A grid position becomes a
tile when it lies in the ROI (``roi_rule``) and its white fraction is at most ``max_white``; see
``docs/tiling.md`` for the rules and ``docs/formats.md`` for the output files.

Speed: candidate positions are found on a thumbnail (tissue mask) or from the ROI first, so glass
is never read; the candidates are read in row-major chunks (each JPEG tile of the file decoded
about once), optionally by worker processes that each open the slide themselves. Memory per
process is a few tiles, whatever the size of the slide.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2scope._io import atomic_path, write_json
from her2scope._progress import track
from her2scope.errors import Her2ScopeError, RoiError, SlideError
from her2scope.tiling.background import box_coverage, tissue_mask, white_fraction
from her2scope.tiling.config import TilingConfig
from her2scope.tiling.grid import TileGeometry, grid_origins, n_grid, plan_geometry

log = logging.getLogger(__name__)

#: Column order of ``tiles.parquet``.
TILE_COLUMNS = (
    "slide_id",
    "patient_id",
    "center",
    "label",
    "slide_path",
    "x",
    "y",
    "level",
    "read_px",
    "tile_px",
    "mpp",
    "white_frac",
    "roi_cover",
)
_COPIED = ("patient_id", "center", "label")
#: Per-slide tile counts, in the sidecar and in the tiling report.
COUNT_KEYS = ("n_grid", "n_kept", "n_dropped_white", "n_dropped_roi", "n_read_errors")
_CHUNK = 64  # most tiles per work item


def empty_tile_table() -> pd.DataFrame:
    """A tile table with no rows and the right column types."""
    return pd.DataFrame(
        {
            "slide_id": pd.Series([], dtype=str),
            "patient_id": pd.Series([], dtype=str),
            "center": pd.Series([], dtype=str),
            "label": pd.Series([], dtype=str),
            "slide_path": pd.Series([], dtype=str),
            "x": pd.Series([], dtype=np.int64),
            "y": pd.Series([], dtype=np.int64),
            "level": pd.Series([], dtype=np.int64),
            "read_px": pd.Series([], dtype=np.int64),
            "tile_px": pd.Series([], dtype=np.int64),
            "mpp": pd.Series([], dtype=np.float64),
            "white_frac": pd.Series([], dtype=np.float64),
            "roi_cover": pd.Series([], dtype=np.float64),
        }
    )


# ----------------------------------------------------------------------------------------------
# One slide
# ----------------------------------------------------------------------------------------------


def tile_slide(
    slide_path: str | Path,
    slide_id: str,
    cfg: TilingConfig,
    roi_path: str | Path | None = None,
    mpp: float | None = None,
    qc_path: str | Path | None = None,
    extra_columns: dict[str, Any] | None = None,
    *,
    workers: int = 1,
    export_dir: str | Path | None = None,
    executor: Executor | None = None,
    show_progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Tile one slide; return its tile table (``TILE_COLUMNS``) and its sidecar dictionary.

    ``mpp`` (level-0 µm/px) is used only when the file has none. Without ``roi_path`` the
    thumbnail tissue mask decides which positions are read. ``extra_columns`` fills columns such as
    ``patient_id`` (missing ones are empty strings). ``qc_path`` writes the QC thumbnail PNG;
    ``export_dir`` writes every kept tile as ``<slide_id>_x<x>_y<y>.png`` there. ``workers > 1``
    reads in that many processes (or pass a shared ``executor``). Read errors of single tiles are
    counted (``n_read_errors``) and the tile dropped; an unreadable slide or ROI file raises
    :class:`SlideError` / :class:`RoiError`, and so does an ROI file that leaves no ROI (none of
    ``cfg.roi_classes``, exclusions covering it, or every ROI outside the slide): such a slide
    fails, it is never "ok, 0 tiles". Needs no manifest (used to score single slides).
    """
    from her2scope.slide.reader import open_slide
    from her2scope.slide.rois import clip_to_slide, read_rois

    _check_cfg(cfg)
    slide_path = Path(slide_path).resolve()
    warnings: list[str] = []
    with open_slide(slide_path, mpp=mpp, reader=cfg.reader) as slide:
        mpp_x, mpp_y = slide.mpp
        if abs(mpp_x - mpp_y) > 0.01 * mpp_x:
            warnings.append(
                f"non-square pixels ({mpp_x:.4g} × {mpp_y:.4g} µm); tiles use the x resolution"
            )
        geo = plan_geometry(mpp_x, slide.level_downsamples, cfg.tile_px, cfg.target_mpp)
        w0, h0 = slide.dimensions
        step = geo.level0_px
        total = n_grid(w0, h0, step)
        need_thumb = roi_path is None or qc_path is not None
        thumb = slide.thumbnail(_thumb_px(w0, h0, step)) if need_thumb else None
        roi = None
        n_excluded = 0
        if roi_path is not None:
            rs = read_rois(roi_path, cfg.roi_classes)
            if rs.geometry is None:  # an ROI file that gives no ROI fails its slide, loudly
                raise RoiError(roi_path, rs.empty_reason)
            n_excluded = rs.n_excluded
            warnings += rs.warnings
            roi, clip_notes = clip_to_slide(rs.geometry, w0, h0, f"ROI file '{roi_path}'")
            if roi is None:
                raise RoiError(
                    roi_path,
                    f"every ROI lies outside the slide ({w0}×{h0} px at level 0; ROI bounds "
                    f"{_bounds_txt(rs.geometry.bounds)}); are the coordinates for another slide "
                    "or another pyramid level?",
                )
            warnings += clip_notes
            xs, ys, cover = _roi_candidates(roi, w0, h0, step, cfg)
        else:
            assert thumb is not None
            mask = tissue_mask(thumb, cfg.white_level)
            xs, ys = grid_origins(w0, h0, step)
            scale = (thumb.shape[1] / w0, thumb.shape[0] / h0)
            cover = box_coverage(mask, scale, xs, ys, step)
            keep = cover > 0
            xs, ys, cover = xs[keep], ys[keep], cover[keep]
        backend = slide.info.backend
        level_dims = slide.level_dimensions
    for w in warnings:
        log.warning("slide '%s': %s", slide_id, w)

    white, errors, first_error = _scan(
        slide_path, mpp, cfg, geo, xs, ys, slide_id, workers, executor, export_dir, show_progress
    )
    ok = ~errors
    kept = ok & (white <= cfg.max_white)
    n_read_errors = int(errors.sum())
    if first_error:
        warnings.append(f"{n_read_errors} tile(s) could not be read; first: {first_error}")
    extra = dict(extra_columns or {})
    df = pd.DataFrame(
        {
            "slide_id": str(slide_id),
            **{c: str(extra.get(c, "") or "") for c in _COPIED},
            "slide_path": str(slide_path),
            "x": xs[kept].astype(np.int64),
            "y": ys[kept].astype(np.int64),
            "level": np.int64(geo.level),
            "read_px": np.int64(geo.read_px),
            "tile_px": np.int64(geo.tile_px),
            "mpp": float(geo.mpp),
            "white_frac": white[kept].astype(np.float64),
            "roi_cover": cover[kept].astype(np.float64),
        },
        columns=list(TILE_COLUMNS),
    )
    if len(df) == 0:
        df = empty_tile_table()
    sidecar: dict[str, Any] = {
        "slide_id": str(slide_id),
        "slide_path": str(slide_path),
        "mpp_x": float(mpp_x),
        "mpp_y": float(mpp_y),
        "level0_width": int(w0),
        "level0_height": int(h0),
        "n_grid": int(total),
        "n_kept": int(kept.sum()),
        "n_dropped_white": int((ok & ~kept).sum()),
        "n_dropped_roi": int(total - len(xs)),
        "n_read_errors": n_read_errors,
        "read_level": geo.level,
        "read_downsample": geo.downsample,
        "read_px": geo.read_px,
        "tile_px": geo.tile_px,
        "tile_mpp": geo.mpp,
        "level0_tile_px": step,
        "level_dimensions": [list(d) for d in level_dims],
        "backend": backend,
        "roi_path": str(Path(roi_path).resolve()) if roi_path is not None else None,
        "roi_rule": cfg.roi_rule if roi_path is not None else "tissue_mask",
        "roi_area_px": float(roi.area) if roi is not None else None,
        "roi_n_excluded": n_excluded,
        "max_white": cfg.max_white,
        "white_level": cfg.white_level,
        "warnings": warnings,
    }
    if qc_path is not None and thumb is not None:
        draw_qc(qc_path, thumb, (w0, h0), roi, df["x"].to_numpy(), df["y"].to_numpy(), step)
    return df, sidecar


def _check_cfg(cfg: TilingConfig) -> None:
    """Nothing left to check: a TilingConfig is validated when it is built."""


def _bounds_txt(bounds: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = bounds
    return f"x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f}"


def _thumb_px(w0: int, h0: int, step: int) -> int:
    """Thumbnail size: at least 4 px per tile, between 1024 and 4096 px on the long side."""
    return int(min(4096, max(1024, 4 * math.ceil(max(w0, h0) / step))))


def _roi_candidates(
    roi: Any, w0: int, h0: int, step: int, cfg: TilingConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid positions kept by the ROI rule, with the fraction of each tile the ROI covers."""
    import shapely

    empty = np.zeros(0, np.int64)
    if roi is None:
        return empty, empty, np.zeros(0)
    xs, ys = grid_origins(w0, h0, step, roi.bounds)
    if len(xs) == 0:
        return empty, empty, np.zeros(0)
    boxes = shapely.box(xs, ys, xs + step, ys + step)
    shapely.prepare(roi)
    touch = shapely.intersects(roi, boxes)
    inside = shapely.contains_properly(roi, boxes)
    cover = np.where(inside, 1.0, 0.0)
    edge = touch & ~inside
    if edge.any():
        cover[edge] = shapely.area(shapely.intersection(boxes[edge], roi)) / float(step * step)
    cover = np.clip(cover, 0.0, 1.0)
    if cfg.roi_rule == "centre":
        keep = shapely.contains_xy(roi, xs + step / 2, ys + step / 2)
    else:
        keep = cover >= cfg.min_roi_cover - 1e-12
    return xs[keep], ys[keep], cover[keep]


# ----------------------------------------------------------------------------------------------
# Reading the candidates (in this process or in workers)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    slide_path: str
    mpp: float | None
    reader: str
    level: int
    read_px: int
    tile_px: int
    white_level: int
    xs: np.ndarray
    ys: np.ndarray
    export_dir: str | None
    slide_id: str


_OPEN: dict[tuple[str, float | None, str], Any] = {}


def _cached_slide(path: str, mpp: float | None, reader: str) -> Any:
    """One open slide per process (workers handle many chunks of the same slide)."""
    from her2scope.slide.reader import open_slide

    key = (path, mpp, reader)
    slide = _OPEN.get(key)
    if slide is None:
        for old in _OPEN.values():
            old.close()
        _OPEN.clear()
        slide = open_slide(path, mpp=mpp, reader=reader)  # type: ignore[arg-type]
        _OPEN[key] = slide
    return slide


def _release_slides() -> None:
    for s in _OPEN.values():
        s.close()
    _OPEN.clear()


def _run_job(job: _Job) -> tuple[np.ndarray, np.ndarray, str]:
    """White fraction of each tile of the job; NaN and an error flag for unreadable tiles."""
    n = len(job.xs)
    white = np.full(n, np.nan)
    err = np.zeros(n, bool)
    first = ""
    try:
        slide = _cached_slide(job.slide_path, job.mpp, job.reader)
    except Her2ScopeError as exc:  # returned, not raised: it must cross a process boundary
        err[:] = True
        return white, err, str(exc)
    for i in range(n):
        x, y = int(job.xs[i]), int(job.ys[i])
        try:
            region = slide.read_region((x, y), job.level, (job.read_px, job.read_px))
        except SlideError as exc:
            err[i] = True
            first = first or f"({x}, {y}): {exc.reason}"
            continue
        white[i] = white_fraction(region, job.white_level)
        if job.export_dir is not None:
            _export_tile(job, region, x, y)
    return white, err, first


def _export_tile(job: _Job, region: np.ndarray, x: int, y: int) -> None:
    import cv2

    if job.read_px != job.tile_px:
        interp = cv2.INTER_AREA if job.read_px > job.tile_px else cv2.INTER_LINEAR
        region = cv2.resize(region, (job.tile_px, job.tile_px), interpolation=interp)
    path = Path(job.export_dir or ".") / f"{job.slide_id}_x{x}_y{y}.png"
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(region, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")


def _scan(
    slide_path: Path,
    mpp: float | None,
    cfg: TilingConfig,
    geo: TileGeometry,
    xs: np.ndarray,
    ys: np.ndarray,
    slide_id: str,
    workers: int,
    executor: Executor | None,
    export_dir: str | Path | None,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, str]:
    n = len(xs)
    white = np.full(n, np.nan)
    err = np.zeros(n, bool)
    if n == 0:
        return white, err, ""
    exp = str(export_dir) if export_dir is not None else None
    if exp is not None:
        Path(exp).mkdir(parents=True, exist_ok=True)
    # enough chunks to keep every worker busy, few enough to keep per-chunk costs small
    chunk = max(8, min(_CHUNK, math.ceil(n / (4 * max(1, workers)))))
    spans = list(pairwise([*range(0, n, chunk), n]))
    jobs = [
        _Job(
            str(slide_path),
            mpp,
            cfg.reader,
            geo.level,
            geo.read_px,
            geo.tile_px,
            cfg.white_level,
            xs[a:b],
            ys[a:b],
            exp,
            slide_id,
        )
        for a, b in spans
    ]
    own_pool = None
    if executor is None and workers > 1:
        own_pool = executor = _make_pool(workers)
    try:
        results = map(_run_job, jobs) if executor is None else executor.map(_run_job, jobs)
        first = ""
        desc = f"tiling {slide_id}"
        for (a, b), (w, e, f) in zip(
            spans,
            track(results, desc, total=len(jobs), disable=None if show_progress else True),
            strict=True,
        ):
            white[a:b] = w
            err[a:b] = e
            first = first or f
    finally:
        if executor is None:
            _release_slides()
        if own_pool is not None:
            own_pool.shutdown()
    return white, err, first


def _make_pool(workers: int) -> Executor:
    """Worker processes; each opens the slides it reads itself.

    Forked (fast start: the imports are inherited) when this process has a single thread and no
    slide open, as at the start of a run; spawned otherwise, since OpenSlide's threads and caches
    must not be copied by fork().
    """
    import multiprocessing as mp
    import threading
    from concurrent.futures import ProcessPoolExecutor

    safe = "fork" in mp.get_all_start_methods() and threading.active_count() == 1 and not _OPEN
    ctx = mp.get_context("fork" if safe else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_quiet_worker)


def _quiet_worker() -> None:
    """Worker start-up: tifffile's warnings about harmless file quirks stay off the user's
    terminal in spawned workers too (the CLI silences them in the main process)."""
    import logging

    logging.getLogger("tifffile").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------------------------
# QC picture
# ----------------------------------------------------------------------------------------------


def draw_qc(
    path: str | Path,
    thumb: np.ndarray,
    level0_size: tuple[int, int],
    roi: Any,
    xs: np.ndarray,
    ys: np.ndarray,
    step: int,
) -> None:
    """Write the thumbnail with kept tiles (green boxes) and the ROI outline (blue) as PNG."""
    import cv2

    img = np.ascontiguousarray(thumb.copy())
    sx = img.shape[1] / level0_size[0]
    sy = img.shape[0] / level0_size[1]
    overlay = img.copy()
    for x, y in zip(xs, ys, strict=True):
        p0 = (round(x * sx), round(y * sy))
        p1 = (
            max(p0[0] + 1, round((x + step) * sx) - 1),
            max(p0[1] + 1, round((y + step) * sy) - 1),
        )
        cv2.rectangle(overlay, p0, p1, (0, 170, 0), -1)
    img = cv2.addWeighted(overlay, 0.35, img, 0.65, 0)
    for x, y in zip(xs, ys, strict=True):
        p0 = (round(x * sx), round(y * sy))
        p1 = (
            max(p0[0] + 1, round((x + step) * sx) - 1),
            max(p0[1] + 1, round((y + step) * sy) - 1),
        )
        cv2.rectangle(img, p0, p1, (0, 140, 0), 1)
    if roi is not None:
        for ring in _rings(roi):
            pts = np.round(np.asarray(ring)[:, :2] * [sx, sy]).astype(np.int32)
            cv2.polylines(img, [pts], True, (30, 60, 220), max(1, img.shape[1] // 500))
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write the QC picture {path}")


def _rings(geom: Any) -> list[Any]:
    polys = getattr(geom, "geoms", [geom])
    out = []
    for p in polys:
        if hasattr(p, "exterior"):
            out.append(p.exterior.coords)
            out.extend(r.coords for r in p.interiors)
    return out


# ----------------------------------------------------------------------------------------------
# A cohort
# ----------------------------------------------------------------------------------------------


@dataclass
class SlideEntry:
    """One slide to tile: paths are absolute."""

    slide_id: str
    slide_path: Path
    roi_path: Path | None = None
    mpp: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # added to the slide's sidecar


@dataclass
class TilingReport:
    """What ``tile_cohort`` did: one summary row per slide, and the failures with reasons."""

    out_dir: Path
    tiles_path: Path
    n_tiles: int
    slides: list[dict[str, Any]]  # slide_id, status ("ok" | "failed"), counts, reason
    failures: list[dict[str, str]]  # slide_id, slide_path, reason

    @property
    def ok(self) -> bool:
        return not self.failures


def read_tiling_manifest(
    manifest_csv: str | Path, allow_absolute: bool = False
) -> list[SlideEntry]:
    """The slides of a manifest, read by the project's one manifest reader.

    Uses :func:`her2scope.cohort.manifest.read_manifest` (same CSV, path and slide-id rules as
    training) but needs only ``slide_id`` and ``slide_path``; ``roi_path``, ``mpp``, and
    ``patient_id``, ``center``, ``label`` (copied to the tile table) are optional and labels are
    not checked. Every problem is reported at once as :class:`ManifestError`. A slide with an
    empty ``roi_path`` is tiled on its tissue mask and its sidecar says so in ``warnings``.
    """
    from her2scope.cohort.manifest import TILING_COLUMNS, mpp_of, read_manifest

    man = read_manifest(
        manifest_csv, scheme=None, allow_absolute=allow_absolute, required=TILING_COLUMNS
    )
    for note in man.notes:
        log.warning("manifest '%s': %s", man.path, note)
    has_roi_column = "roi_path" in man.df.columns
    entries: list[SlideEntry] = []
    for rec in man.df.to_dict("records"):
        roi = rec.get("roi_path") or None
        warnings = (
            ["the manifest gives no roi_path: tiled on the whole detected tissue, not an ROI"]
            if has_roi_column and roi is None
            else []
        )
        entries.append(
            SlideEntry(
                rec["slide_id"],
                Path(rec["slide_path"]),
                Path(roi) if roi else None,
                mpp_of(rec.get("mpp", "")),
                {c: rec[c] for c in _COPIED if c in rec},
                warnings,
            )
        )
    return entries


def tile_cohort(
    manifest_csv: str | Path,
    out_dir: str | Path,
    cfg: TilingConfig,
    workers: int = 1,
    export_tiles: bool = False,
    allow_absolute: bool = False,
) -> TilingReport:
    """Tile every slide of a manifest into ``out_dir`` (see ``docs/formats.md``).

    Writes ``tiles.parquet``, ``slides/<slide_id>.json`` and ``qc/<slide_id>.png`` (and
    ``tiles/<slide_id>/*.png`` with ``export_tiles``). A slide that fails is recorded with its
    reason and the others go on; check :attr:`TilingReport.failures`. ``allow_absolute`` is
    ``cohort.allow_absolute_paths`` (see :func:`read_tiling_manifest`).
    """
    entries = read_tiling_manifest(manifest_csv, allow_absolute=allow_absolute)
    return tile_entries(entries, out_dir, cfg, workers, export_tiles)


def tile_entries(
    entries: Sequence[SlideEntry],
    out_dir: str | Path,
    cfg: TilingConfig,
    workers: int = 1,
    export_tiles: bool = False,
    on_slide: Callable[[dict[str, Any]], None] | None = None,
) -> TilingReport:
    """:func:`tile_cohort` for a list of slides (``her2scope tile`` on bare slide paths).

    Refuses (``OutputError``, nothing written) when an output (a sidecar ``slides/<id>.json``, a
    ``qc/<id>.png``, ``tiles.parquet``) would replace a slide or an ROI file, e.g. ``--out`` set
    to a folder whose ``slides/`` holds QuPath ROIs named ``<id>.json``.
    """
    from her2scope._io import refuse_replacing_inputs

    _check_cfg(cfg)
    out = Path(out_dir)
    refuse_replacing_inputs(
        [out / "tiles.parquet", out / "tiling_report.json"]
        + [
            out / d / f"{e.slide_id}.{x}"
            for e in entries
            for d, x in (("slides", "json"), ("qc", "png"))
        ],
        [p for e in entries for p in (e.slide_path, e.roi_path) if p is not None],
        "choose another --out folder (tiling never overwrites a slide or an ROI file)",
    )
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "qc").mkdir(parents=True, exist_ok=True)
    workers = max(1, int(workers))
    pool = _make_pool(workers) if workers > 1 else None
    frames: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    try:
        for e in track(entries, "slides", total=len(entries), disable=len(entries) < 2 or None):
            row: dict[str, Any] = {"slide_id": e.slide_id, "slide_path": str(e.slide_path)}
            try:
                df, sidecar = tile_slide(
                    e.slide_path,
                    e.slide_id,
                    cfg,
                    roi_path=e.roi_path,
                    mpp=e.mpp,
                    qc_path=out / "qc" / f"{e.slide_id}.png",
                    extra_columns=e.extra,
                    workers=workers,
                    export_dir=(out / "tiles" / e.slide_id) if export_tiles else None,
                    executor=pool,
                    show_progress=len(entries) < 2,  # one bar at a time: slides, else tiles
                )
                sidecar["warnings"] = [*e.warnings, *sidecar["warnings"]]
            except Her2ScopeError as exc:
                reason = str(exc)
            except Exception as exc:  # a bug or an unexpected library error: keep going
                from her2scope.errors import describe_exception

                log.debug("slide %s failed", e.slide_id, exc_info=True)
                reason = describe_exception(exc)
            else:
                if sidecar["n_read_errors"] and sidecar["n_read_errors"] == (
                    sidecar["n_grid"] - sidecar["n_dropped_roi"]
                ):
                    reason = f"every tile failed to read ({sidecar['warnings'][-1]})"
                else:
                    reason = ""
                    _write_sidecar(out / "slides" / f"{e.slide_id}.json", sidecar)
                    frames.append(df)
            if reason:
                log.error("slide '%s' failed: %s", e.slide_id, reason)
                failures.append({**row, "reason": reason})
                row.update(status="failed", reason=reason)
            else:
                row.update(
                    status="ok",
                    reason="",
                    **{k: sidecar[k] for k in COUNT_KEYS},
                    warnings=len(sidecar["warnings"]),
                )
            rows.append(row)
            if on_slide is not None:
                on_slide(row)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    table = pd.concat(frames, ignore_index=True) if frames else empty_tile_table()
    tiles_path = out / "tiles.parquet"
    with atomic_path(tiles_path) as tmp:
        table.to_parquet(tmp, index=False)
    write_json(
        out / "tiling_report.json",
        {"n_slides": len(rows), "n_tiles": len(table), "slides": rows, "failures": failures},
    )
    return TilingReport(out, tiles_path, len(table), rows, failures)


def _write_sidecar(path: Path, sidecar: dict[str, Any]) -> None:
    """Write the sidecar, keeping keys other stages added to an existing one (e.g. ``stain``)."""
    import json

    merged: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old, dict):
                merged.update(old)
        except (OSError, ValueError):
            log.warning("sidecar %s was unreadable; rewriting it", path)
    merged.update(sidecar)
    write_json(path, merged)


def entries_from_paths(
    slides: Sequence[str | Path], rois_dir: str | Path | None = None, mpp: float | None = None
) -> list[SlideEntry]:
    """Slide entries for bare slide paths; ROIs matched by file stem in ``rois_dir``.

    A slide without a matching ROI file is tiled on its tissue mask (with a log message).
    """
    from her2scope.slide.rois import find_roi_file

    entries: list[SlideEntry] = []
    used: dict[str, int] = {}
    for s in slides:
        p = Path(s).expanduser().resolve()
        stem = p.name.split(".")[0] if p.name.lower().endswith(".ome.tiff") else p.stem
        sid = stem
        if sid in used:
            used[sid] += 1
            sid = f"{stem}_{used[stem]}"
        else:
            used[sid] = 1
        roi = find_roi_file(rois_dir, stem) if rois_dir is not None else None
        if rois_dir is not None and roi is None:
            log.warning("no ROI file for %s in %s; tiling its tissue mask", p.name, rois_dir)
        entries.append(SlideEntry(sid, p, roi, mpp, {c: "" for c in _COPIED}))
    return entries


def cpu_workers() -> int:
    """A sensible default number of worker processes (CPUs available to this process)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)

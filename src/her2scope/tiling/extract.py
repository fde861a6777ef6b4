"""Cut slides into tiles: ``tile_slide`` for one slide, ``tile_cohort`` for a manifest.

A tile is a row of coordinates, not an image (:mod:`her2scope.tiling.table`). A grid position
becomes a tile when it lies in the ROI (``roi_rule``) or on the tissue mask and its white fraction
is at most ``max_white``; see ``docs/tiling.md`` for the rules and ``docs/formats.md`` for the
output files.

The work is split by job: :mod:`~her2scope.tiling.grid` (level, read size, grid positions),
:mod:`~her2scope.tiling.candidates` (which positions are read: region and glass pre-filter),
:mod:`~her2scope.tiling.scan` (reading them, in worker processes), :mod:`~her2scope.tiling.qc`
(the QC picture), :mod:`~her2scope.tiling.manifest` (the slides to tile). This module ties them
together and writes the outputs; the names it imported from them before the split are still
importable from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from her2scope._io import atomic_path, write_json
from her2scope._progress import track
from her2scope.errors import Her2ScopeError, RoiError
from her2scope.layout import TilesLayout
from her2scope.tiling.candidates import (
    Candidates,
    roi_candidates,
    thumb_px,
    tissue_candidates,
)
from her2scope.tiling.config import TilingConfig
from her2scope.tiling.grid import TileGeometry, n_grid, plan_geometry
from her2scope.tiling.manifest import SlideEntry, entries_from_paths, read_tiling_manifest
from her2scope.tiling.qc import draw_qc
from her2scope.tiling.scan import PixelKeep, ScanResult, cpu_workers, make_pool, start_scan
from her2scope.tiling.table import COPIED_COLUMNS, TILE_COLUMNS, empty_tile_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COUNT_KEYS",
    "TILE_COLUMNS",
    "SlideEntry",
    "TilingReport",
    "cpu_workers",
    "draw_qc",
    "empty_tile_table",
    "entries_from_paths",
    "read_tiling_manifest",
    "tile_cohort",
    "tile_entries",
    "tile_slide",
    "tile_slide_keeping_pixels",
]

log = logging.getLogger(__name__)

#: Per-slide tile counts, in the sidecar and in the tiling report.
COUNT_KEYS = ("n_grid", "n_kept", "n_dropped_white", "n_dropped_roi", "n_read_errors")


# ----------------------------------------------------------------------------------------------
# One slide
# ----------------------------------------------------------------------------------------------


@dataclass
class _SlidePlan:
    """What tiling one slide needs to know before reading pixels."""

    geo: TileGeometry
    level0_size: tuple[int, int]
    mpp_xy: tuple[float, float]
    backend: str
    level_dims: list[list[int]]
    thumb: np.ndarray
    roi: Any  # shapely geometry (level-0 px) or None: tissue mode
    n_excluded: int
    candidates: Candidates
    warnings: list[str]


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
    ``export_dir`` writes every tile read as ``<slide_id>_x<x>_y<y>.png`` there. ``workers > 1``
    reads in that many processes (or pass a shared ``executor``). Read errors of single tiles are
    counted (``n_read_errors``) and the tile dropped; an unreadable slide or ROI file raises
    :class:`SlideError` / :class:`RoiError`, and so does an ROI file that leaves no ROI (none of
    ``cfg.roi_classes``, exclusions covering it, or every ROI outside the slide): such a slide
    fails, it is never "ok, 0 tiles". Needs no manifest (used to score single slides).
    """
    df, sidecar, _ = tile_slide_keeping_pixels(
        slide_path, slide_id, cfg, roi_path, mpp, qc_path, extra_columns,
        workers=workers, export_dir=export_dir, executor=executor, show_progress=show_progress,
    )  # fmt: skip
    return df, sidecar


def tile_slide_keeping_pixels(
    slide_path: str | Path,
    slide_id: str,
    cfg: TilingConfig,
    roi_path: str | Path | None = None,
    mpp: float | None = None,
    qc_path: str | Path | None = None,
    extra_columns: dict[str, Any] | None = None,
    *,
    budget_bytes: int = 0,
    workers: int = 1,
    export_dir: str | Path | None = None,
    executor: Executor | None = None,
    show_progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any], dict[int, np.ndarray]]:
    """:func:`tile_slide`, also returning the pixels the scan decoded for the kept tiles, so a
    caller reading them next need not decode them again: ``{row of the table: tile_px × tile_px
    × 3 uint8}``, exactly what ``Slide.read_tile`` with the table's row gives (the same reader),
    up to ``budget_bytes`` (rows past it are absent: read them). Empty when the scan runs in
    worker processes (``workers > 1`` or an ``executor``).
    """
    slide_path = Path(slide_path).resolve()
    plan = _plan_slide(slide_path, mpp, cfg, roi_path)
    for w in plan.warnings:
        log.warning("slide '%s': %s", slide_id, w)
    c = plan.candidates
    keep = PixelKeep(cfg.max_white, budget_bytes) if budget_bytes > 0 else None
    with start_scan(
        slide_path, mpp, cfg.reader, cfg.white_level, plan.geo, c.xs, c.ys, slide_id,
        workers, executor, export_dir, show_progress, keep,
    ) as pending:  # fmt: skip
        # pandas (~0.3 s to import) loads while the workers read, not before or after them
        import pandas  # noqa: F401

        scan = pending.result()
    kept = ~scan.errors & (scan.white <= cfg.max_white)
    df = _tile_table(slide_id, slide_path, plan, scan, kept, extra_columns)
    sidecar = _sidecar(slide_id, slide_path, plan, scan, kept, cfg, roi_path)
    if qc_path is not None:
        step = plan.geo.level0_px
        draw_qc(qc_path, plan.thumb, plan.level0_size, plan.roi, df["x"].to_numpy(),
                df["y"].to_numpy(), step)  # fmt: skip
    row_of = {int(pos): row for row, pos in enumerate(np.flatnonzero(kept))}
    pixels = {row_of[pos]: px for pos, px in scan.pixels.items() if pos in row_of}
    return df, sidecar, pixels


def _plan_slide(
    slide_path: Path, mpp: float | None, cfg: TilingConfig, roi_path: str | Path | None
) -> _SlidePlan:
    """Open the slide, plan the tile geometry and find the positions to read."""
    from her2scope.slide.reader import open_slide

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
        thumb = slide.thumbnail(thumb_px(w0, h0, step))
        backend = slide.info.backend
        level_dims = [list(d) for d in slide.level_dimensions]
    roi, n_excluded = None, 0
    if roi_path is not None:
        roi, n_excluded, roi_notes = _read_roi(roi_path, cfg.roi_classes, w0, h0)
        warnings += roi_notes
        cands = roi_candidates(roi, thumb, w0, h0, step, cfg)
    else:
        cands = tissue_candidates(thumb, w0, h0, step, cfg.white_level, cfg.max_white)
    return _SlidePlan(geo, (w0, h0), (mpp_x, mpp_y), backend, level_dims, thumb, roi,
                      n_excluded, cands, warnings)  # fmt: skip


def _read_roi(
    roi_path: str | Path, roi_classes: Sequence[str] | None, w0: int, h0: int
) -> tuple[Any, int, list[str]]:
    """The slide's ROI clipped to it, the number of exclusions, and notes; ``RoiError`` when the
    file leaves no ROI on the slide."""
    from her2scope.slide.rois import clip_to_slide, read_rois

    rs = read_rois(roi_path, roi_classes)
    if rs.geometry is None:  # an ROI file that gives no ROI fails its slide, loudly
        raise RoiError(roi_path, rs.empty_reason)
    roi, clip_notes = clip_to_slide(rs.geometry, w0, h0, f"ROI file '{roi_path}'")
    if roi is None:
        raise RoiError(
            roi_path,
            f"every ROI lies outside the slide ({w0}×{h0} px at level 0; ROI bounds "
            f"{_bounds_txt(rs.geometry.bounds)}); are the coordinates for another slide "
            "or another pyramid level?",
        )
    return roi, rs.n_excluded, [*rs.warnings, *clip_notes]


def _tile_table(
    slide_id: str,
    slide_path: Path,
    plan: _SlidePlan,
    scan: ScanResult,
    kept: np.ndarray,
    extra_columns: dict[str, Any] | None,
) -> pd.DataFrame:
    import pandas as pd

    geo, c = plan.geo, plan.candidates
    extra = dict(extra_columns or {})
    df = pd.DataFrame(
        {
            "slide_id": str(slide_id),
            **{col: str(extra.get(col, "") or "") for col in COPIED_COLUMNS},
            "slide_path": str(slide_path),
            "x": c.xs[kept].astype(np.int64),
            "y": c.ys[kept].astype(np.int64),
            "level": np.int64(geo.level),
            "read_px": np.int64(geo.read_px),
            "tile_px": np.int64(geo.tile_px),
            "mpp": float(geo.mpp),
            "white_frac": scan.white[kept].astype(np.float64),
            "roi_cover": c.cover[kept].astype(np.float64),
        },
        columns=list(TILE_COLUMNS),
    )
    return df if len(df) else empty_tile_table()


def _sidecar(
    slide_id: str,
    slide_path: Path,
    plan: _SlidePlan,
    scan: ScanResult,
    kept: np.ndarray,
    cfg: TilingConfig,
    roi_path: str | Path | None,
) -> dict[str, Any]:
    geo, c = plan.geo, plan.candidates
    w0, h0 = plan.level0_size
    total = n_grid(w0, h0, geo.level0_px)
    n_read_errors = int(scan.errors.sum())
    warnings = list(plan.warnings)
    if scan.first_error:
        warnings.append(f"{n_read_errors} tile(s) could not be read; first: {scan.first_error}")
    return {
        "slide_id": str(slide_id),
        "slide_path": str(slide_path),
        "mpp_x": float(plan.mpp_xy[0]),
        "mpp_y": float(plan.mpp_xy[1]),
        "level0_width": int(w0),
        "level0_height": int(h0),
        "n_grid": int(total),
        "n_kept": int(kept.sum()),
        # white: read and found white, or shown as glass by the thumbnail (not read)
        "n_dropped_white": int((~scan.errors & ~kept).sum()) + c.n_glass,
        "n_dropped_roi": int(total - c.n_region),
        "n_read_errors": n_read_errors,
        "n_read": len(c.xs),
        "read_level": geo.level,
        "read_downsample": geo.downsample,
        "read_px": geo.read_px,
        "tile_px": geo.tile_px,
        "tile_mpp": geo.mpp,
        "level0_tile_px": geo.level0_px,
        "level_dimensions": plan.level_dims,
        "backend": plan.backend,
        "roi_path": str(Path(roi_path).resolve()) if roi_path is not None else None,
        "roi_rule": cfg.roi_rule if roi_path is not None else "tissue_mask",
        "roi_area_px": float(plan.roi.area) if plan.roi is not None else None,
        "roi_n_excluded": plan.n_excluded,
        "max_white": cfg.max_white,
        "white_level": cfg.white_level,
        "warnings": warnings,
    }


def _bounds_txt(bounds: tuple[float, float, float, float]) -> str:
    x0, y0, x1, y1 = bounds
    return f"x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f}"


# ----------------------------------------------------------------------------------------------
# A cohort
# ----------------------------------------------------------------------------------------------


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

    out = Path(out_dir)
    layout = TilesLayout(out)
    refuse_replacing_inputs(
        [layout.table, layout.report]
        + [p for e in entries for p in (layout.sidecar(e.slide_id), layout.qc_png(e.slide_id))],
        [p for e in entries for p in (e.slide_path, e.roi_path) if p is not None],
        "choose another --out folder (tiling never overwrites a slide or an ROI file)",
    )
    layout.sidecar_dir.mkdir(parents=True, exist_ok=True)
    layout.qc_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, int(workers))
    pool = make_pool(workers) if workers > 1 else None
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
                    qc_path=layout.qc_png(e.slide_id),
                    extra_columns=e.extra,
                    workers=workers,
                    export_dir=layout.exported_tiles(e.slide_id) if export_tiles else None,
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
                    _write_sidecar(layout.sidecar(e.slide_id), sidecar)
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
    import pandas as pd  # loaded by now, while the first slide's tiles were read

    table = pd.concat(frames, ignore_index=True) if frames else empty_tile_table()
    tiles_path = layout.table
    with atomic_path(tiles_path) as tmp:
        table.to_parquet(tmp, index=False)
    write_json(
        layout.report,
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

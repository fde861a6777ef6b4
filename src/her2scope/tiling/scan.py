"""Reading the candidate positions of a slide: white fractions, in this process or in workers.

The candidates are read in row-major chunks (each JPEG tile of the file decoded about once),
optionally by worker processes that each open the slide themselves. Memory per process is a few
tiles, whatever the size of the slide. A tile that cannot be read is flagged, not raised: the
error must cross a process boundary, and one bad tile does not fail its slide.

A scan in this process can also keep the pixels of the tiles it keeps (:class:`PixelKeep`, up to
a byte budget), so that a caller that reads the same tiles next (``her2scope predict``: the stain
fit and the model) does not decode them again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from her2scope._io import atomic_path
from her2scope._progress import track
from her2scope.errors import Her2ScopeError, SlideError
from her2scope.tiling.background import white_fraction
from her2scope.tiling.grid import TileGeometry

_CHUNK = 64  # most tiles per work item


@dataclass(frozen=True)
class ScanResult:
    """Per position: white fraction (NaN when unreadable) and a read-error flag."""

    white: np.ndarray
    errors: np.ndarray
    first_error: str  # "(x, y): reason" of the first unreadable tile, or ""
    # position index -> the tile's pixels at tile_px, as Slide.read_tile gives them (PixelKeep)
    pixels: dict[int, np.ndarray] = field(default_factory=dict)


class PixelKeep:
    """Keep the pixels of tiles whose white fraction is at most ``max_white``, at ``tile_px`` as
    :meth:`~her2scope.slide.reader.Slide.read_tile` gives them, until ``budget_bytes`` are held;
    the tiles after that are read again by whoever needs them. In-process scans only (pixels do
    not cross process boundaries)."""

    def __init__(self, max_white: float, budget_bytes: int) -> None:
        self.max_white = float(max_white)
        self.left = int(budget_bytes)
        self.pixels: dict[int, np.ndarray] = {}

    def offer(self, index: int, white: float, tile: np.ndarray) -> None:
        if white <= self.max_white and tile.nbytes <= self.left:
            if not tile.flags.owndata:  # a view could pin a larger buffer (a reader's cache)
                tile = tile.copy()
            self.pixels[index] = tile
            self.left -= tile.nbytes


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
    first: int = 0  # index of xs[0] among the scan's positions
    keep: PixelKeep | None = None  # in-process scans only


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
        if job.keep is not None and white[i] <= job.keep.max_white:
            job.keep.offer(job.first + i, float(white[i]), _at_tile_px(job, region))
        if job.export_dir is not None:
            _export_tile(job, region, x, y)
    return white, err, first


def _at_tile_px(job: _Job, region: np.ndarray) -> np.ndarray:
    """``region`` resized to the tile size exactly as ``Slide.read_tile`` does."""
    import cv2

    if job.read_px == job.tile_px:
        return region
    interp = cv2.INTER_AREA if job.read_px > job.tile_px else cv2.INTER_LINEAR
    return cv2.resize(region, (job.tile_px, job.tile_px), interpolation=interp)


def _export_tile(job: _Job, region: np.ndarray, x: int, y: int) -> None:
    import cv2

    region = _at_tile_px(job, region)
    path = Path(job.export_dir or ".") / f"{job.slide_id}_x{x}_y{y}.png"
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(region, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")


def scan_positions(
    slide_path: Path,
    mpp: float | None,
    reader: str,
    white_level: int,
    geo: TileGeometry,
    xs: np.ndarray,
    ys: np.ndarray,
    slide_id: str,
    workers: int = 1,
    executor: Executor | None = None,
    export_dir: str | Path | None = None,
    show_progress: bool = True,
) -> ScanResult:
    """Read every position ``(xs[i], ys[i])`` (level-0 px) and measure its white fraction.

    ``workers > 1`` reads in that many processes (or pass a shared ``executor``);
    ``export_dir`` also writes each tile read as ``<slide_id>_x<x>_y<y>.png`` there.
    """
    with start_scan(
        slide_path, mpp, reader, white_level, geo, xs, ys, slide_id,
        workers, executor, export_dir, show_progress,
    ) as pending:  # fmt: skip
        return pending.result()


def start_scan(
    slide_path: Path,
    mpp: float | None,
    reader: str,
    white_level: int,
    geo: TileGeometry,
    xs: np.ndarray,
    ys: np.ndarray,
    slide_id: str,
    workers: int = 1,
    executor: Executor | None = None,
    export_dir: str | Path | None = None,
    show_progress: bool = True,
    keep: PixelKeep | None = None,
) -> PendingScan:
    """:func:`scan_positions` in two steps: hand the reads to the workers now, collect them with
    :meth:`PendingScan.result`, so this process can do other work while they read.

    Use as a context manager: leaving it stops a pool made here. With no executor and
    ``workers <= 1`` nothing is read until :meth:`~PendingScan.result`. ``keep`` collects kept
    tiles' pixels (into ``ScanResult.pixels``) when the scan runs in this process; with workers
    it is ignored.
    """
    n = len(xs)
    exp = str(export_dir) if export_dir is not None else None
    if exp is not None and n:
        Path(exp).mkdir(parents=True, exist_ok=True)
    # enough chunks to keep every worker busy, few enough to keep per-chunk costs small
    chunk = max(8, min(_CHUNK, math.ceil(n / (4 * max(1, workers)))))
    spans = list(pairwise([*range(0, n, chunk), n])) if n else []
    in_process = executor is None and workers <= 1
    jobs = [
        _Job(str(slide_path), mpp, reader, geo.level, geo.read_px, geo.tile_px, white_level,
             xs[a:b], ys[a:b], exp, slide_id, a, keep if in_process else None)
        for a, b in spans
    ]  # fmt: skip
    own_pool = None
    if executor is None and workers > 1 and jobs:
        own_pool = executor = make_pool(workers)
    # Executor.map submits every job at once: the workers start reading here
    results = map(_run_job, jobs) if executor is None else executor.map(_run_job, jobs)
    return PendingScan(n, spans, results, f"tiling {slide_id}", show_progress,
                       in_process=executor is None, own_pool=own_pool,
                       keep=keep if in_process else None)  # fmt: skip


class PendingScan:
    """The reads of one slide, handed out by :func:`start_scan`; :meth:`result` collects them."""

    def __init__(
        self,
        n: int,
        spans: list[tuple[int, int]],
        results: Iterator[tuple[np.ndarray, np.ndarray, str]],
        desc: str,
        show_progress: bool,
        in_process: bool,
        own_pool: Executor | None,
        keep: PixelKeep | None = None,
    ) -> None:
        self._n, self._spans, self._results = n, spans, results
        self._keep = keep
        self._desc, self._show_progress = desc, show_progress
        self._in_process, self._own_pool = in_process, own_pool
        self._done: ScanResult | None = None

    def result(self) -> ScanResult:
        """Wait for every read (reading them here when there are no workers)."""
        if self._done is not None:
            return self._done
        white = np.full(self._n, np.nan)
        err = np.zeros(self._n, bool)
        first = ""
        try:
            for (a, b), (w, e, f) in zip(
                self._spans,
                track(self._results, self._desc, total=len(self._spans),
                      disable=None if self._show_progress else True),
                strict=True,
            ):  # fmt: skip
                white[a:b] = w
                err[a:b] = e
                first = first or f
        finally:
            self.close()
        self._done = ScanResult(
            white, err, first, self._keep.pixels if self._keep is not None else {}
        )
        return self._done

    def close(self) -> None:
        """Release what the scan holds: slides opened in this process, a pool made for it."""
        if self._in_process:
            _release_slides()
        if self._own_pool is not None:
            self._own_pool.shutdown(cancel_futures=True)
            self._own_pool = None

    def __enter__(self) -> PendingScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_pool(workers: int) -> Executor:
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


def cpu_workers() -> int:
    """CPUs available to this process (its affinity mask): the default number of workers."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)

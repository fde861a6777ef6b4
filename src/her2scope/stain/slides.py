"""Per-slide stain fitting from the tile table, and loading the fitted normalisers back.

``fit_stains`` reads ``tiles_dir/tiles.parquet``, samples ``cfg.fit_tiles`` tiles per slide, pools
their pixels into one Macenko fit and stores ``StainNormalizer.to_dict()`` plus counts under the key
``stain`` of ``tiles_dir/slides/<slide_id>.json`` (other keys kept). No torch import here.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from her2scope._io import write_json
from her2scope._pool import process_pool
from her2scope._progress import track
from her2scope.errors import ConfigError, Her2ScopeError
from her2scope.layout import TilesLayout
from her2scope.stain.config import StainConfig
from her2scope.stain.macenko import StainNormalizer, load_reference, od_lut

log = logging.getLogger(__name__)

LOW_TISSUE_FRAC = 0.05  # a sampled tile with fewer tissue pixels than this is counted as a fallback


def _read_table(tiles_dir: Path) -> Any:
    path = TilesLayout(tiles_dir).table
    if not path.is_file():
        raise ConfigError(f"'{path}' not found; run `her2scope tile` first")
    from her2scope._io import read_parquet

    return read_parquet(
        path, fix="delete it and re-run `her2scope tile` (or `her2scope run CONFIG --force tile`)"
    )


def tissue_fraction(rgb: np.ndarray, io: float = 240.0, beta: float = 0.15) -> float:
    """Fraction of pixels with OD ≥ ``beta`` in every channel (the pixels a Macenko fit uses)."""
    od = od_lut(io)
    thr = int(np.nonzero(od >= beta)[0][-1])
    return float((rgb.reshape(-1, 3).max(axis=1) <= thr).mean())


def sample_fit_tiles(tiles: Any, n_tiles: int) -> Any:
    """The rows of one slide's tile table that its stain fit uses: the one sampling rule.

    Every tile when there are at most ``n_tiles``; else ``n_tiles`` drawn at random with seed 0
    from the tiles in grid order (by ``y``, then ``x``), so the same table gives the same pick
    whatever its row order. Training (:func:`fit_stains`) and scoring a new slide
    (``her2scope predict``) both call this, then :func:`read_fit_tiles`.
    """
    ordered = tiles.sort_values(["y", "x"], kind="stable")
    if len(ordered) <= n_tiles:
        return ordered
    return ordered.sample(n=n_tiles, random_state=0).sort_values(["y", "x"], kind="stable")


def read_fit_tiles(
    rows: list[dict[str, Any]],
    reader: str = "auto",
    mpp: float | None = None,
    pixels: Sequence[np.ndarray | None] | None = None,
) -> tuple[list[np.ndarray], int, list[str]]:
    """Pixels of the sampled tiles at tile size (``tile_px``, as stored in the tile table).

    Returns ``(images, n_low_tissue, errors)``; an unreadable tile is skipped and its error kept.
    ``reader`` and ``mpp`` are passed to ``open_slide`` (``mpp`` for files without one).
    ``pixels[i]``, when given and not None, is row ``i``'s tile already read (the tiling pass's);
    the slide is opened only for the others.
    """
    from her2scope.slide.reader import open_slide

    given = list(pixels) if pixels is not None else [None] * len(rows)
    tiles: list[np.ndarray] = []
    n_low = 0
    errors: list[str] = []
    with contextlib.ExitStack() as stack:
        slide = None
        for r, rgb in zip(rows, given, strict=True):
            if rgb is None:
                if slide is None:
                    slide = stack.enter_context(
                        open_slide(r["slide_path"], mpp=mpp, reader=reader)  # type: ignore[arg-type]
                    )
                try:
                    rgb = slide.read_tile(
                        (int(r["x"]), int(r["y"])),
                        int(r["level"]),
                        int(r["read_px"]),
                        int(r["tile_px"]),
                    )
                except Her2ScopeError as exc:
                    errors.append(str(exc))
                    continue
            if tissue_fraction(rgb) < LOW_TISSUE_FRAC:
                n_low += 1
            tiles.append(rgb)
    return tiles, n_low, errors


@dataclass
class SlideStainFit:
    """One slide's stain fit: the fitted normaliser and the tiles it was fitted on."""

    normalizer: StainNormalizer
    images: list[np.ndarray]
    n_low_tissue: int
    errors: list[str]


def fit_slide_stains(
    tiles: Any,
    slide_id: str,
    mode: str,
    reference: Any,
    fit_tiles: int,
    reader: str = "auto",
    mpp: float | None = None,
    pixels: Mapping[int, np.ndarray] | None = None,
) -> SlideStainFit:
    """Fit one slide's stains on its own tiles: the one per-slide fit (``her2scope stain fit``,
    ``predict`` and ``calibrate`` all call it).

    ``tiles`` is the slide's tile table; :func:`sample_fit_tiles` picks ``fit_tiles`` of them and
    :func:`read_fit_tiles` reads them at tile size (``pixels``: table row label → tile already
    read, see :func:`read_fit_tiles`). Raises :class:`Her2ScopeError` naming the slide when none
    of the sampled tiles can be read.
    """
    sampled = sample_fit_tiles(tiles, int(fit_tiles))
    rows = sampled.to_dict("records")
    if not rows:
        raise Her2ScopeError(f"slide '{slide_id}': no tiles to fit its stains on")
    given = [pixels.get(i) for i in sampled.index] if pixels else None
    images, n_low, errors = read_fit_tiles(rows, reader=reader, mpp=mpp, pixels=given)
    if not images:
        raise Her2ScopeError(
            f"slide '{slide_id}': none of the {len(rows)} tiles sampled for the stain fit could "
            f"be read ({errors[0] if errors else 'no tiles'})"
        )
    norm = StainNormalizer(mode, reference)  # type: ignore[arg-type]
    norm.fit(images)
    return SlideStainFit(norm, images, n_low, errors)


def _fit_one(slide_id: str, tiles: Any, cfg: StainConfig) -> dict[str, Any]:
    """Fit one slide; returns the sidecar ``stain`` object. Raises on unreadable slides."""
    fit = fit_slide_stains(tiles, slide_id, cfg.mode, cfg.reference, cfg.fit_tiles)
    d = fit.normalizer.to_dict()
    d.update(
        n_fit_tiles=len(fit.images),
        n_low_tissue_tiles=fit.n_low_tissue,
        n_read_errors=len(fit.errors),
        fallback="passthrough" if fit.normalizer.passthrough else "slide",
    )
    return d


def _update_sidecar(tiles_dir: Path, slide_id: str, slide_path: str, stain: dict[str, Any]) -> None:
    path = TilesLayout(tiles_dir).sidecar(slide_id)
    side: dict[str, Any] = {}
    if path.is_file():
        try:
            side = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise Her2ScopeError(
                f"sidecar '{path}' is not valid JSON ({exc}); re-run tiling"
            ) from None
    else:
        side = {"slide_id": slide_id, "slide_path": slide_path}
    side["stain"] = stain
    write_json(path, side)


def fit_stains(tiles_dir: str | Path, cfg: StainConfig, workers: int = 1) -> dict[str, Any]:
    """Fit every slide of ``tiles_dir/tiles.parquet`` and write the ``stain`` sidecar objects.

    Returns ``{"fitted": [ids], "passthrough": [ids], "failed": {id: reason}}``. A slide that fails
    is logged and reported; the others go on. ``cfg.mode == "none"`` fits nothing.
    """
    tiles_dir = Path(tiles_dir)
    if cfg.mode == "none":
        log.info("stain.mode=none: nothing to fit")
        return {"fitted": [], "passthrough": [], "failed": {}}
    if cfg.fit_tiles < 1:
        raise ConfigError(f"stain.fit_tiles must be >= 1, got {cfg.fit_tiles}")
    load_reference(cfg.reference)  # fail early on a bad reference file
    df = _read_table(tiles_dir)
    missing = {"slide_id", "slide_path", "x", "y", "level", "read_px", "tile_px"} - set(df.columns)
    if missing:
        raise ConfigError(f"'{TilesLayout(tiles_dir).table}' lacks columns {sorted(missing)}")
    jobs = [(str(slide_id), g) for slide_id, g in df.groupby("slide_id", sort=True)]
    result: dict[str, Any] = {"fitted": [], "passthrough": [], "failed": {}}

    def record(slide_id: str, rows: Any, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            reason = str(outcome) if isinstance(outcome, Her2ScopeError) else repr(outcome)
            log.error("stain fit of slide '%s' failed: %s", slide_id, reason)
            result["failed"][slide_id] = reason
            return
        _update_sidecar(tiles_dir, slide_id, str(rows["slide_path"].iloc[0]), outcome)
        key = "passthrough" if outcome["passthrough"] else "fitted"
        if outcome["passthrough"]:
            log.warning(
                "slide '%s': no stain fit (%s); tiles pass through", slide_id, outcome["reason"]
            )
        result[key].append(slide_id)

    if workers <= 1:
        for slide_id, rows in track(jobs, "stain fit"):
            try:
                outcome: Any = _fit_one(slide_id, rows, cfg)
            except Exception as exc:
                outcome = exc
            record(slide_id, rows, outcome)
    else:
        with process_pool(workers) as pool:
            futures = [(s, r, pool.submit(_fit_one, s, r, cfg)) for s, r in jobs]
            for slide_id, rows, fut in track(futures, "stain fit"):
                try:
                    outcome = fut.result()
                except Exception as exc:
                    outcome = exc
                record(slide_id, rows, outcome)
    return result


def _sidecar_normalizer(
    path: Path, stain: dict[str, Any], cfg: StainConfig, ref: Any
) -> StainNormalizer:
    """The normaliser stored in one sidecar, or a ``ConfigError`` naming the file (a damaged or
    hand-edited sidecar: NaN or infinite numbers, wrong shapes)."""
    import math

    fix = (
        f"delete the 'stain' entry of '{path}' (or the file) and re-run `her2scope stain fit` "
        "(or `her2scope run CONFIG --force stain`)"
    )

    def _numbers(v: Any) -> list[Any]:
        return [x for item in v for x in _numbers(item)] if isinstance(v, list) else [v]

    for key in ("stain_matrix", "max_conc"):
        vals = _numbers(stain.get(key)) if stain.get(key) is not None else []
        if any(not isinstance(x, (int, float)) or not math.isfinite(x) for x in vals):
            raise ConfigError(f"stain sidecar '{path}': '{key}' holds a non-finite value; {fix}")
    try:
        return StainNormalizer.from_dict(stain, mode=cfg.mode, reference=ref)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(f"stain sidecar '{path}': {exc}; {fix}") from None


def load_normalizers(tiles_dir: str | Path, cfg: StainConfig) -> dict[str, StainNormalizer]:
    """slide_id → fitted normaliser for every slide in ``tiles.parquet``.

    ``cfg.mode == "none"`` returns an empty dict (callers pass tiles through unchanged). Slides whose
    fit found too little tissue get a passthrough normaliser. A slide without a ``stain`` sidecar
    object raises :class:`ConfigError` naming it (run ``her2scope stain fit``). ``cfg.mode`` and
    ``cfg.reference`` apply, so one fit serves both modes.
    """
    tiles_dir = Path(tiles_dir)
    if cfg.mode == "none":
        return {}
    ref = load_reference(cfg.reference)
    slide_ids = sorted(str(s) for s in _read_table(tiles_dir)["slide_id"].unique())
    out: dict[str, StainNormalizer] = {}
    unfitted: list[str] = []
    for sid in slide_ids:
        path = TilesLayout(tiles_dir).sidecar(sid)
        try:
            side = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            unfitted.append(sid)
            continue
        if not isinstance(side.get("stain"), dict):
            unfitted.append(sid)
            continue
        out[sid] = _sidecar_normalizer(path, side["stain"], cfg, ref)
    if unfitted:
        shown = ", ".join(unfitted[:5]) + (" …" if len(unfitted) > 5 else "")
        raise ConfigError(
            f"{len(unfitted)} slide(s) in '{tiles_dir}' have no stain parameters ({shown}); "
            f"run `her2scope stain fit {tiles_dir}` or set stain.mode=none"
        )
    return out


def fit_slide_normalizer(
    cfg: Any,
    tiles_df: Any,
    mpp: float | None = None,
    pixels: Mapping[int, np.ndarray] | None = None,
) -> tuple[Any, list[np.ndarray]]:
    """A stain normaliser fitted on this slide's own tiles (as training did), and those tiles.

    :func:`her2scope.stain.slides.fit_slide_stains` with the run config ``cfg``: the same tiles, at
    the same (tile) size, as ``her2scope stain fit`` picks for this slide. Fitted even when the run
    does not normalise (``stain.mode=none``, then in ``preserve_dab`` mode): the QC gates read the
    fitted stain vectors. ``pixels``: tiles already read, by row label of ``tiles_df``.
    """
    mode = cfg.stain.mode if cfg.stain.mode != "none" else "preserve_dab"
    sid = str(tiles_df["slide_id"].iloc[0]) if len(tiles_df) else "?"
    fit = fit_slide_stains(
        tiles_df, sid, mode, cfg.stain.reference, cfg.stain.fit_tiles, cfg.tiling.reader, mpp,
        pixels,
    )  # fmt: skip
    return fit.normalizer, fit.images

"""Score new slides with a trained run: tile as in training, normalise, predict, aggregate, write.

Per slide (``out_dir``): ``<slide_id>.her2scope.json`` (score, probabilities, tile percentages,
uncertainty, reflex-FISH flag, provenance), ``<slide_id>.her2scope-heatmap.png`` and
``<slide_id>.her2scope-tiles.geojson`` (QuPath detections); the names cannot be taken by a slide,
an ROI file or a QuPath export, and nothing is written when an output would replace an input.
Per call: ``summary.csv`` (``summary.shard-<i>-of-<n>.csv`` when sharded), merged with the rows of
earlier calls into the same folder.
"""

from __future__ import annotations

import datetime as _dt
import logging
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from her2scope._io import write_json, write_with
from her2scope._progress import track
from her2scope.engine.runinfo import load_run_provenance
from her2scope.errors import ConfigError, Her2ScopeError
from her2scope.evaluate.calibration import (
    Calibration,
    apply_temperature,
    load_calibration,
    reflex_decision,
    slide_uncertainty,
)
from her2scope.layout import RunLayout, TilesLayout, slide_id_of
from her2scope.scoring.qc import QCConfig, run_checks
from her2scope.scoring.qc import reasons as qc_reasons
from her2scope.stain.slides import fit_slide_normalizer

if TYPE_CHECKING:
    import pandas as pd

    from her2scope.engine.infer import InferenceOptions

log = logging.getLogger(__name__)

#: MiB of a slide's tile pixels the tiling pass keeps for the stain fit and the model (the
#: tiles past it are decoded again): 1,365 tiles of 512 px, 5,461 of the demo's 256 px.
TILE_CACHE_MB = 1024

NOT_A_DEVICE = (
    "Research software, not a medical device: a HER2 score from her2scope must not be used for "
    "diagnosis or treatment decisions without review by a pathologist."
)


@dataclass
class ScoreReport:
    """What :func:`score_slides` did: one summary row per slide and the failures."""

    summary: pd.DataFrame
    summary_path: Path
    failures: list[tuple[str, str]] = field(default_factory=list)  # (slide path, message)
    n_skipped: int = 0  # already scored with the same settings (resume)
    seconds: float = 0.0  # wall time of the call
    slides_per_hour: float | None = None  # slides scored (not skipped) per hour of the call
    tiles_per_second: float | None = None
    inference: dict[str, Any] | None = None  # the path the model ran on (engine.infer)

    @property
    def ok(self) -> bool:
        return not self.failures


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n`` (0-based, like a job array index)."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ConfigError(f"--shard '{text}' must look like i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard '{text}': need 0 <= i < n (i is 0-based)")
    return i, n


def output_paths(out_dir: str | Path, slide_id: str) -> dict[str, Path]:
    """The files ``predict`` writes for one slide (the one place their names are spelled)."""
    out = Path(out_dir)
    return {
        "json": out / f"{slide_id}.her2scope.json",
        "heatmap": out / f"{slide_id}.her2scope-heatmap.png",
        "qupath_geojson": out / f"{slide_id}.her2scope-tiles.geojson",
    }


def summary_name(shard: tuple[int, int] | None) -> str:
    """``summary.csv``, or ``summary.shard-<i>-of-<n>.csv`` for a shard."""
    return "summary.csv" if shard is None else f"summary.shard-{shard[0]}-of-{shard[1]}.csv"


def _input_files(paths: Sequence[Path], rois: str | Path | None, run_dir: Path) -> list[Path]:
    """Every file ``predict`` reads: the slides, the ROI file or the ROI folder's files, the run."""
    files = list(paths)
    if rois is not None:
        r = Path(rois)
        files += [p for p in r.iterdir() if p.is_file()] if r.is_dir() else [r]
    if run_dir.is_dir():
        files += [p for p in run_dir.rglob("*") if p.is_file()]
    return files


def _merge_summary(path: Path, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of an existing summary for slides not scored now, then the new rows."""
    import pandas as pd

    if not path.is_file():
        return new
    try:
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        log.warning("summary %s could not be read; it is replaced by this call's rows", path)
        return new
    if "slide_id" not in old.columns:
        return new
    keep = old[~old["slide_id"].isin(set(new["slide_id"].astype(str)))]
    merged = pd.concat([keep.reindex(columns=new.columns), new.astype(object)], ignore_index=True)
    return merged.reindex(columns=new.columns)


def aggregate_tiles(
    probs: np.ndarray, classes: Sequence[str], rule: str, percent_threshold: float
) -> tuple[np.ndarray, str, np.ndarray]:
    """(slide probabilities, slide score, % of tiles predicted per class) from tile probabilities.

    Slide probabilities are the mean tile probabilities under every rule; the score comes from
    :func:`her2scope.evaluate.aggregate.aggregate_probs` with the run's rule, so ``predict`` and
    ``evaluate`` always call a slide the same way (see docs/evaluation.md for the tie rules).
    """
    from her2scope.evaluate.aggregate import aggregate_probs, argmax_high

    k = len(classes)
    if probs.ndim != 2 or probs.shape[1] != k or len(probs) == 0:
        raise ValueError(f"need [N>0, {k}] tile probabilities, got {probs.shape}")
    mean = probs.mean(axis=0)
    counts = np.bincount(argmax_high(probs, axis=1), minlength=k)
    percent = 100.0 * counts / len(probs)
    _, idx = aggregate_probs(probs, rule, percent_threshold)  # type: ignore[arg-type]
    return mean, classes[idx], percent


def _resolve_roi(rois: str | Path | None, slide: Path, n_slides: int) -> Path | None:
    from her2scope.slide.rois import resolve_roi_argument

    return resolve_roi_argument(rois, slide_id_of(slide), n_slides, "tiling the detected tissue")


@dataclass
class ScoreSettings:
    """How one ``predict`` call scores: what, beside the slide itself, decides its outputs.

    :meth:`fingerprint` of a slide is stored in its JSON (``settings_fingerprint``); a later call
    with the same fingerprint skips the slide (resume). Threads, readers and the batch size are
    left out: they do not change a result beyond float rounding.
    """

    values: dict[str, Any]

    @classmethod
    def for_call(
        cls,
        run_dir: Path,
        qc: QCConfig | None,
        force: bool,
        center: str | None,
        cells: bool,
        mpp: float | None,
        device_type: str,
        inference: dict[str, Any],
    ) -> ScoreSettings:
        from her2scope import __version__
        from her2scope.config import to_dict
        from her2scope.engine.onnx_backend import file_sha256

        def sha(path: Path) -> str | None:
            return file_sha256(path) if path.is_file() else None

        return cls(
            {
                "checkpoint_sha256": sha(RunLayout(run_dir).best),
                "calibration_sha256": sha(RunLayout(run_dir).calibration),
                "center": center,
                "site_calibration_sha256": sha(RunLayout(run_dir).site_calibration)
                if center
                else None,
                "qc_thresholds": to_dict(qc) if qc is not None else "run",
                "force": bool(force),
                "cells": bool(cells),
                "mpp_given": mpp,
                "device_type": device_type,
                "inference": inference,
                "her2scope_version": __version__,
            }
        )

    def for_slide(self, path: Path, roi: Path | None) -> dict[str, Any]:
        def stat(p: Path | None) -> list[Any] | None:
            if p is None:
                return None
            st = p.stat()
            return [str(p.resolve()), st.st_size, st.st_mtime_ns]

        return {**self.values, "slide_file": stat(path), "roi_file": stat(roi)}

    @staticmethod
    def fingerprint(settings: dict[str, Any]) -> str:
        import hashlib
        import json

        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _previous_result(
    out: Path, sid: str, fingerprint: str, cells: bool
) -> tuple[dict[str, Any], tuple[str, ...]] | None:
    """(summary row, classes) of a slide already scored into ``out`` with the same settings,
    else None. Needs the slide's JSON with this ``settings_fingerprint`` and every output it
    names."""
    import json

    names = output_paths(out, sid)
    try:
        doc = json.loads(names["json"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("settings_fingerprint") != fingerprint:
        return None
    status = doc.get("status")
    if status not in ("ok", "qc_failed"):
        return None
    needed = [names["heatmap"], names["qupath_geojson"]] if status == "ok" else []
    if cells and status == "ok":  # the cell outputs the JSON names (none when they failed)
        needed += [out / n for n in (doc.get("cells") or {}).get("outputs", {}).values()]
    if not all(p.is_file() for p in needed):
        return None
    classes = tuple((doc.get("provenance") or {}).get("classes") or ())
    failed = [c["check"] for c in doc.get("qc", []) if not c.get("passed")]
    row: dict[str, Any] = {
        "status": status,
        "n_tiles": doc.get("n_tiles"),
        "qc_passed": not failed,
        "qc_failed_checks": ";".join(failed),
        "inference": _inference_label(doc.get("inference")),
    }
    if status == "ok":
        probs = doc.get("probabilities") or {}
        row.update(
            score=doc.get("score"),
            **{f"prob_{c}": probs.get(c) for c in classes},
            uncertainty=doc.get("uncertainty"),
            reflex_fish=bool((doc.get("reflex_fish") or {}).get("flag")),
        )
        if cells:
            c = doc.get("cells") or {}
            row.update(
                cell_score=c.get("score"),
                cell_review=(c.get("reconciliation") or {}).get("review"),
            )
    return row, classes


def _inference_label(rec: dict[str, Any] | None) -> str:
    """``torch/fp32/channels_last`` — the summary's short form of a JSON ``inference`` record."""
    if not rec:
        return ""
    parts = [str(rec.get("backend")), str(rec.get("precision"))]
    if rec.get("channels_last"):
        parts.append("channels_last")
    if rec.get("guard"):  # bf16 with the fp32 recheck (scoring.guard); precision says which ran
        parts.append("guarded")
    return "/".join(parts)


def score_slides(
    slides: Sequence[str | Path],
    run_dir: str | Path,
    out_dir: str | Path,
    rois: str | Path | None = None,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    mpp: float | None = None,
    device: str | None = None,
    batch_size: int = 64,
    qc: QCConfig | None = None,
    force: bool = False,
    center: str | None = None,
    cells: bool = False,
    *,
    inference: InferenceOptions | None = None,
    rescore: bool = False,
    tile_cache_mb: int = TILE_CACHE_MB,
) -> ScoreReport:
    """Score ``slides`` with the best checkpoint of ``run_dir``; write results to ``out_dir``.

    ``rois`` is one ROI file (one slide) or a folder of ``<slide_id>.<geojson|json|xml>``.
    ``shard=(i, n)`` keeps every n-th slide starting at i (0-based). ``mpp`` (level-0 µm/px) is
    used for slides whose file has none. A slide that fails is logged and listed in the summary
    (``status=failed``, ``error``); the others go on. A slide that fails a QC gate (``qc``
    thresholds, see :mod:`her2scope.scoring.qc`) gets ``status=qc_failed`` and no score, unless
    ``force``: then it is scored and the failed checks stay in its JSON and the summary. Without
    ``qc``, the thresholds are the run's (its config's ``qc`` section, else the defaults).
    With ``cells``, each scored slide's cells are also scored by the ASCO/CAP rules
    (:func:`her2scope.cells.slide.score_slide_cells`, the run config's ``cells`` thresholds;
    ``<slide_id>.cells.*`` outputs) and the cell summary and its reconciliation with the CNN call
    go into the slide JSON (``cells``). Probabilities are calibrated and the reflex flag follows
    the run's policy
    (``RUN/calibration.json``; a run without one uses T = 1 and ``evaluate.reflex_uncertainty``).

    ``inference`` says how the model runs (:class:`~her2scope.engine.infer.InferenceOptions`;
    default fp32). Resume: a slide whose JSON in ``out_dir`` was written with the same settings
    (:class:`ScoreSettings`) and whose outputs are all there is skipped with a log line and its
    summary row rebuilt from the JSON, unless ``rescore``.

    ``tile_cache_mb``: the tiling pass keeps up to this many MiB of a slide's tile pixels for the
    stain fit and the model, which then read only the tiles past it (the pixels are the same
    either way, so it is not part of the resume settings); 0 reads every tile again.
    """
    import time

    import pandas as pd

    from her2scope.engine.infer import InferenceOptions, guarded_bf16
    from her2scope.engine.predict import resolve_device

    t_start = time.perf_counter()
    opts = inference or InferenceOptions()
    if problems := opts.problems():
        raise ConfigError("; ".join(problems))
    paths = [Path(s) for s in slides]
    if not paths:
        raise ConfigError("no slides given")
    ids = [slide_id_of(p) for p in paths]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"slide ids must be unique, repeated: {', '.join(dupes)}")
    if shard is not None:
        i, n = shard
        if n < 1 or not 0 <= i < n:
            raise ConfigError(f"shard {i}/{n}: need 0 <= i < n")
        paths = paths[i::n]
    if rois is not None and Path(rois).is_file() and len(slides) > 1:
        raise ConfigError(
            f"--roi '{rois}' is one file but {len(slides)} slides were given; give a folder of "
            "<slide_id>.geojson/.xml files instead"
        )
    from her2scope._io import ensure_writable, refuse_replacing_inputs

    out = Path(out_dir)
    planned = [p for path in paths for p in output_paths(out, slide_id_of(path)).values()]
    if cells:
        from her2scope.cells.slide import output_paths as cell_output_paths

        planned += [p for path in paths for p in cell_output_paths(out, slide_id_of(path)).values()]
    planned.append(out / summary_name(shard))
    refuse_replacing_inputs(
        planned,
        _input_files(paths, rois, Path(run_dir)),
        "choose another --out folder (predict never overwrites a slide, an ROI or a run file)",
    )
    ensure_writable(out)
    dev = resolve_device(device)
    fingerprint = {**opts.fingerprint(), "guarded_bf16": guarded_bf16(opts, dev.type)}
    settings = ScoreSettings.for_call(
        Path(run_dir), qc, force, center, cells, mpp, dev.type, fingerprint
    )
    calls = _plan_slides(paths, rois, len(slides), out, settings, cells, rescore)
    runner = _load_runner(run_dir, dev, center, opts, qc, force, cells) if calls.todo else None
    rows: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    n_tiles_scored = 0
    for path in track(paths, "score slides"):
        sid = slide_id_of(path)
        base = {"slide_id": sid, "slide_path": str(path)}
        if sid in calls.done:
            rows.append({**base, **calls.done[sid], "error": ""})
            continue
        try:
            todo = calls.todo[sid]
            if isinstance(todo, Exception):
                raise todo
            assert runner is not None
            roi, fp = todo
            result = _score_one(
                path, sid, roi, runner, out, workers, mpp, batch_size, fp, tile_cache_mb << 20
            )
            if result.get("status", "ok") == "ok":
                n_tiles_scored += int(result.get("n_tiles") or 0)
            rows.append({**base, "status": "ok", **result, "error": ""})
        except Exception as exc:  # one slide must not stop the cohort
            from her2scope.errors import describe_exception

            msg = describe_exception(exc)  # never a raw "IndexError: …"
            if not isinstance(exc, Her2ScopeError):
                log.debug("slide %s failed:\n%s", path, traceback.format_exc())
            log.error("slide %s failed: %s", path, msg)
            failures.append((str(path), msg))
            rows.append({**base, "status": "failed", "error": msg})
    classes = runner.meta.classes if runner is not None else calls.classes
    cols = [
        "slide_id",
        "slide_path",
        "status",
        "score",
        *[f"prob_{c}" for c in classes],
        "n_tiles",
        "uncertainty",
        "reflex_fish",
        "qc_passed",
        "qc_failed_checks",
        *(["cell_score", "cell_review"] if cells else []),
        "inference",
        "error",
    ]
    summary = pd.DataFrame(rows).reindex(columns=cols)
    summary["n_tiles"] = summary["n_tiles"].astype("Int64")  # 6, not 6.0, beside a failed row
    summary_path = out / summary_name(shard)
    merged = _merge_summary(summary_path, summary)
    write_with(summary_path, lambda p: merged.to_csv(p, index=False))
    seconds = time.perf_counter() - t_start
    n_scored = len(calls.todo) - len(failures)
    rate = 3600.0 * n_scored / seconds if n_scored and seconds > 0 else None
    log.info(
        "predict: %d slide(s) scored, %d skipped (already scored with these settings), %d failed "
        "in %.1f s%s",
        n_scored,
        len(calls.done),
        len(failures),
        seconds,
        f" ({rate:.0f} slides/hour, {n_tiles_scored / seconds:.1f} tiles/s)" if rate else "",
    )
    return ScoreReport(
        summary=summary,
        summary_path=summary_path,
        failures=failures,
        n_skipped=len(calls.done),
        seconds=seconds,
        slides_per_hour=rate,
        tiles_per_second=n_tiles_scored / seconds if n_tiles_scored else None,
        inference=runner.predictor.record() if runner is not None else None,
    )


@dataclass
class _SlidePlan:
    """Which slides of a call are already done (their summary rows) and which to score."""

    done: dict[str, dict[str, Any]]
    todo: dict[str, tuple[Path | None, dict[str, Any]] | Exception]  # id → (ROI, settings)
    classes: tuple[str, ...] = ()


def _plan_slides(
    paths: Sequence[Path],
    rois: str | Path | None,
    n_given: int,
    out: Path,
    settings: ScoreSettings,
    cells: bool,
    rescore: bool,
) -> _SlidePlan:
    """Resolve each slide's ROI and settings; find the slides scored before with the same ones."""
    plan = _SlidePlan({}, {})
    for path in paths:
        sid = slide_id_of(path)
        try:
            roi = _resolve_roi(rois, path, n_given)
            slide_settings = settings.for_slide(path, roi)
        except Exception as exc:  # raised again, and reported, when the slide is scored
            plan.todo[sid] = exc
            continue
        fp = ScoreSettings.fingerprint(slide_settings)
        if not rescore:
            found = _previous_result(out, sid, fp, cells)
            if found is not None:
                log.info("slide %s: already scored with these settings; skipped", sid)
                plan.done[sid], plan.classes = found
                continue
        plan.todo[sid] = (roi, {**slide_settings, "fingerprint": fp})
    return plan


@dataclass
class _Runner:
    """What every slide of one call shares: the model's predictor and the run context."""

    meta: Any
    predictor: Any  # engine.infer.Predictor
    ctx: _RunContext
    guard: Any = None  # an fp32 Predictor that rescored slides near a decision (scoring.guard)


def _load_runner(
    run_dir: str | Path,
    dev: Any,
    center: str | None,
    opts: InferenceOptions,
    qc: QCConfig | None,
    force: bool,
    cells: bool,
) -> _Runner:
    """Load the run's model once for the call (checked against the run), ready to predict."""
    from dataclasses import replace

    from her2scope.engine.checkpoint import load_run_model
    from her2scope.engine.infer import Predictor, guarded_bf16
    from her2scope.scoring.site import apply_site

    model, meta = load_run_model(run_dir, "best", device=dev)
    model, site = apply_site(model, meta, run_dir, center)  # --center: RUN/site_calibration.json
    if opts.backend == "onnx" and site is not None and float(site.get("dab_scale", 1.0)) != 1.0:
        raise ConfigError(
            f"--center {center}: the site's DAB scaling runs in torch; use --backend torch with "
            "--center"
        )
    ctx = _RunContext(
        calibration=load_calibration(run_dir, meta.config.evaluate.reflex_uncertainty),
        train_mpp=training_mpp(run_dir, meta),
        qc=qc or getattr(meta.config, "qc", None) or QCConfig(),  # given, else the run's
        force=force,
        weights=load_run_provenance(run_dir).get("weights"),
        site=site,
        cells=(getattr(meta.config, "cells", None) or _default_cell_config()) if cells else None,
    )
    if guarded_bf16(opts, dev.type):  # bf16, with fp32 for slides near a threshold
        return _Runner(
            meta,
            Predictor(model, meta, dev, replace(opts, precision="bf16")),
            ctx,
            guard=Predictor(model, meta, dev, replace(opts, precision="fp32")),
        )
    return _Runner(meta, Predictor(model, meta, dev, opts), ctx)


@dataclass
class SlideQC:
    """A slide tiled, its stains fitted and its QC gates measured, before any model runs."""

    tiles: pd.DataFrame
    sidecar: dict[str, Any]
    fitted: Any  # StainNormalizer
    thumbnail: np.ndarray
    level0_width: int
    checks: list[Any]  # list[QCCheck]
    # row of ``tiles`` -> its pixels from the tiling pass (``tile_slide_keeping_pixels``), so
    # the stain fit and the model do not decode them again; rows past the budget are absent
    pixels: dict[int, np.ndarray] = field(default_factory=dict)


def slide_qc(
    path: str | Path,
    slide_id: str,
    cfg: Any,
    train_mpp: float | None,
    qc: QCConfig,
    roi_path: Path | None = None,
    mpp: float | None = None,
    workers: int = 1,
    keep_bytes: int = 0,
) -> SlideQC:
    """Tile ``path`` with the run config ``cfg``, fit its stains, and run every QC gate.

    ``train_mpp`` is the µm/px of the run's training tiles (:func:`training_mpp`). Up to
    ``keep_bytes`` of the kept tiles' pixels are kept from the tiling pass (``SlideQC.pixels``)
    when it runs in this process (``workers`` 1) with the reader predict reads tiles with
    (``tiling.reader: auto``). Raises :class:`~her2scope.errors.Her2ScopeError` when no tile is
    kept at all.
    """
    from her2scope.slide.reader import open_slide
    from her2scope.tiling.extract import tile_slide_keeping_pixels

    path = Path(path)
    keep = keep_bytes if cfg.tiling.reader == "auto" else 0  # TileDataset reads with "auto"
    tiles, sidecar, pixels = tile_slide_keeping_pixels(
        path, slide_id, cfg.tiling, roi_path=roi_path, mpp=mpp, workers=workers,
        budget_bytes=keep,
    )  # fmt: skip
    if len(tiles) == 0:
        raise Her2ScopeError(
            f"slide '{path}': no tiles kept ({sidecar.get('n_dropped_white', 0)} mostly white, "
            f"{sidecar.get('n_dropped_roi', 0)} outside the ROI); check the ROI file and the "
            "tiling settings of the run"
        )
    fitted, fit_images = fit_slide_normalizer(cfg, tiles, mpp, pixels)
    with open_slide(path, mpp=mpp, reader=cfg.tiling.reader) as slide:
        thumb = slide.thumbnail(cfg.explain.heatmap_max_px)
        w0, _ = slide.dimensions
    checks = run_checks(
        fitted, fit_images, cfg.stain.mode != "none", thumb, tiles, train_mpp, qc,
        slide_mpp=sidecar.get("mpp_x"),
    )  # fmt: skip
    return SlideQC(tiles, sidecar, fitted, thumb, int(w0), checks, pixels)


def _score_one(
    path: Path,
    sid: str,
    roi_path: Path | None,
    runner: _Runner,
    out: Path,
    workers: int,
    mpp: float | None,
    batch_size: int,
    settings: dict[str, Any],
    keep_bytes: int = 0,
) -> dict[str, Any]:
    """Score one slide: QC gates, then predict, aggregate, draw and write; its summary row."""
    import time

    t0 = time.perf_counter()
    meta, ctx, cfg = runner.meta, runner.ctx, runner.meta.config
    sq = slide_qc(path, sid, cfg, ctx.train_mpp, ctx.qc, roi_path, mpp, workers, keep_bytes)
    t_qc = time.perf_counter() - t0
    norm = sq.fitted if cfg.stain.mode != "none" else None
    names = output_paths(out, sid)
    failed = [c.check for c in sq.checks if not c.passed]
    common: dict[str, Any] = {
        "slide_id": sid,
        "slide_path": str(path),
        "n_tiles": len(sq.tiles),
        "qc_reasons": qc_reasons(sq.checks),
        "qc": [c.to_dict() for c in sq.checks],
        "stain_fit": _stain_fit_record(sq.fitted, norm is not None),
        "roi_path": str(roi_path) if roi_path is not None else None,
        "provenance": _provenance(meta, cfg, ctx),
        "settings_fingerprint": settings.get("fingerprint"),
        "note": NOT_A_DEVICE,
    }
    if failed and not ctx.force:
        doc: dict[str, Any] = {"status": "qc_failed", "score": None, "qc_passed": False, **common}
        write_json(names["json"], doc)
        log.warning("slide %s not scored (QC): %s", sid, "; ".join(common["qc_reasons"]))
        return {
            "status": "qc_failed",
            "n_tiles": len(sq.tiles),
            "qc_passed": False,
            "qc_failed_checks": ";".join(failed),
        }
    t1 = time.perf_counter()
    call = _predict_call(sq, norm, sid, runner, runner.predictor, batch_size)
    inference = runner.predictor.record()
    if runner.guard is not None:
        call, inference["guard"] = _guarded_call(call, sq, norm, sid, runner, batch_size)
        if inference["guard"]["rescored_in_fp32"]:
            inference["precision"] = "fp32"  # the call and probabilities are fp32's
    t_predict = time.perf_counter() - t1  # with the fp32 rescoring, when there was one
    inference["tiles_per_second"] = round(len(sq.tiles) / t_predict, 2) if t_predict > 0 else None
    outputs = _write_maps(names, sid, sq, call, meta, roi_path)
    doc = {
        **_call_doc(call, ctx),
        "status": "ok",
        "qc_passed": not failed,
        "qc_forced": bool(failed),
        **common,
        "aggregate_rule": cfg.evaluate.aggregate,
        "mpp_given": mpp,
        "outputs": outputs,
        "inference": inference,
    }
    row: dict[str, Any] = {}
    if ctx.cells is not None:
        doc["cells"] = _cells_for_slide(path, sid, roi_path, out, mpp, cfg, ctx, call.score, names)
        row = {
            "cell_score": doc["cells"].get("score"),
            "cell_review": (doc["cells"].get("reconciliation") or {}).get("review"),
        }
    doc["timing_s"] = {
        "tiling_stain_qc": round(t_qc, 3),
        "predict": round(t_predict, 3),
        "total": round(time.perf_counter() - t0, 3),
    }
    write_json(names["json"], doc)
    return {
        **row,
        "score": call.score,
        **{f"prob_{c}": call.prob_map[c] for c in meta.classes},
        "n_tiles": len(sq.tiles),
        "uncertainty": call.uncertainty,
        "reflex_fish": bool(call.reflex["flag"]),
        "qc_passed": not failed,
        "qc_failed_checks": ";".join(failed),
        "inference": _inference_label(inference),
    }


def _guarded_call(
    call: _SlideCall, sq: SlideQC, norm: Any, sid: str, runner: _Runner, batch_size: int
) -> tuple[_SlideCall, dict[str, Any]]:
    """Keep a bf16 call only when no decision is within bf16's error of its threshold; else score
    the slide again in fp32 (:mod:`her2scope.scoring.guard`). Returns the call and the record."""
    from her2scope.scoring.guard import call_is_robust, tolerance

    meta, ctx = runner.meta, runner.ctx
    cfg = meta.config
    tol = tolerance(ctx.calibration.temperature)
    robust, why = call_is_robust(
        call.probs,
        meta.classes,
        cfg.evaluate.aggregate,
        cfg.evaluate.percent_threshold,
        ctx.calibration.policy,
        tol,
    )
    record: dict[str, Any] = {"tolerance": round(tol, 6), "rescored_in_fp32": not robust}
    if robust:
        return call, record
    record["reason"] = why
    log.info("slide %s: rescored in fp32 (%s)", sid, why)
    return _predict_call(sq, norm, sid, runner, runner.guard, batch_size), record


def _predict_call(
    sq: SlideQC, norm: Any, sid: str, runner: _Runner, predictor: Any, batch_size: int
) -> _SlideCall:
    """The slide's tiles through ``predictor``, tempered and aggregated into its call."""
    from her2scope.engine.predict import predict_tiles

    raw = predict_tiles(
        None,
        runner.meta,
        sq.tiles,
        {sid: norm} if norm is not None else None,
        batch_size=batch_size,
        predictor=predictor,
        pixels=sq.pixels,
    )
    return _slide_call(
        apply_temperature(raw, runner.ctx.calibration.temperature), runner.meta, runner.ctx
    )


@dataclass
class _SlideCall:
    """A slide's call from its calibrated tile probabilities."""

    probs: np.ndarray  # [N, K] calibrated tile probabilities
    score: str
    prob_map: dict[str, float]
    percent: np.ndarray
    uncertainty: float
    reflex: dict[str, Any]


def _slide_call(probs: np.ndarray, meta: Any, ctx: _RunContext) -> _SlideCall:
    classes = tuple(meta.classes)
    cfg = meta.config
    slide_p, score, percent = aggregate_tiles(
        probs, classes, cfg.evaluate.aggregate, cfg.evaluate.percent_threshold
    )
    prob_map = {c: float(p) for c, p in zip(classes, slide_p, strict=True)}
    reflex = reflex_decision(prob_map, score, ctx.calibration.policy)
    return _SlideCall(probs, score, prob_map, percent, slide_uncertainty(slide_p), reflex)


def _call_doc(call: _SlideCall, ctx: _RunContext) -> dict[str, Any]:
    """The JSON fields of a slide's call: score, probabilities, uncertainty, reflex flag."""
    return {
        "score": call.score,
        "probabilities": call.prob_map,
        "tile_percent": {
            c: round(float(p), 4) for c, p in zip(call.prob_map, call.percent, strict=True)
        },
        "uncertainty": round(call.uncertainty, 6),
        "uncertainty_measure": "normalised entropy of the slide probabilities (0 certain, 1 uniform)",
        "reflex_fish": {"flag": bool(call.reflex["flag"]), "reason": str(call.reflex["reason"])},
        "reflex_policy": {
            "threshold": ctx.calibration.policy.threshold,
            "description": ctx.calibration.policy.description,
        },
        "calibration": {"temperature": ctx.calibration.temperature, "level": ctx.calibration.level},
        "site_calibration": ctx.site,
    }


def _write_maps(
    names: dict[str, Path],
    sid: str,
    sq: SlideQC,
    call: _SlideCall,
    meta: Any,
    roi_path: Path | None,
) -> dict[str, str]:
    """The heatmap PNG and the QuPath GeoJSON of a scored slide; their file names."""
    from her2scope.report.qupath import write_qupath_geojson
    from her2scope.scoring.heatmap import draw_heatmap, tile_value_map
    from her2scope.slide.rois import load_rois

    classes = tuple(meta.classes)
    thumb, tiles = sq.thumbnail, sq.tiles
    downsample = sq.level0_width / thumb.shape[1]
    xy = tiles[["x", "y"]].to_numpy(dtype=np.float64)
    # the tiling grid's step in level-0 px (an integer), not read_px × a downsample like 4.0003
    side = np.full(len(tiles), float(sq.sidecar["level0_tile_px"]))
    expected = call.probs @ np.arange(len(classes), dtype=np.float64)
    vmap = tile_value_map(xy, side, expected, thumb.shape[:2], downsample)
    roi_geom = load_rois(roi_path, meta.config.tiling.roi_classes) if roi_path else None
    heatmap_path = draw_heatmap(
        names["heatmap"],
        thumb,
        vmap,
        downsample,
        classes,
        title=f"{sid}: HER2 {call.score} (expected score per tile; {meta.model_name})",
        roi=roi_geom,
    )
    geojson_path = write_qupath_geojson(names["qupath_geojson"], xy, side, call.probs, classes)
    return {"heatmap": heatmap_path.name, "qupath_geojson": geojson_path.name}


def _default_cell_config() -> Any:
    from her2scope.cells.config import CellConfig

    return CellConfig()


def _cells_for_slide(
    path: Path,
    sid: str,
    roi_path: Path | None,
    out: Path,
    mpp: float | None,
    cfg: Any,
    ctx: _RunContext,
    cnn_score: str,
    names: dict[str, Path],
) -> dict[str, Any]:
    """Cell-rule scoring of one slide and its reconciliation with the CNN call, for the JSON.

    A failure of the cell scoring never costs the CNN score: it is recorded with its reason.
    """
    from her2scope.cells.reconcile import reconcile_call
    from her2scope.cells.slide import output_paths as cell_output_paths
    from her2scope.cells.slide import score_slide_cells
    from her2scope.errors import describe_exception

    try:
        summary = score_slide_cells(
            path, out, roi_path, ctx.cells, None, mpp, cfg.tiling.roi_classes, slide_id=sid
        )
    except Exception as exc:  # the CNN result stands; say why there is no cell result
        log.warning("slide %s: cell scoring failed: %s", sid, describe_exception(exc))
        return {"status": "failed", "reason": describe_exception(exc)}
    keep = ("call", "score", "rule", "borderline", "n_cells", "h_score", "pattern_fraction")
    return {
        "status": "ok",
        **{k: summary.get(k) for k in keep},
        "reconciliation": reconcile_call(summary, cnn_score, str(names["json"])),
        "outputs": {k: p.name for k, p in cell_output_paths(out, sid).items()},
    }


@dataclass(frozen=True)
class _RunContext:
    """What every slide of one call shares: calibration, training µm/px, QC thresholds."""

    calibration: Calibration
    train_mpp: float | None
    qc: QCConfig
    force: bool
    weights: dict[str, Any] | None
    site: dict[str, Any] | None = None  # site calibration of --center (scoring/site.py)
    cells: Any = None  # CellConfig when predict also scores cells (--cells)


def training_mpp(run_dir: str | Path, meta: Any) -> float | None:
    """µm/px of the tiles the run was trained on.

    From ``RUN/provenance.json`` (written by training); for older runs, the run's
    ``tiling.target_mpp``, else the median ``mpp`` of its tile table; None when none is readable.
    """
    rec = load_run_provenance(run_dir).get("train_tile_mpp")
    if rec:
        return float(rec)
    target = meta.config.tiling.target_mpp
    if target:
        return float(target)
    table = TilesLayout(Path(meta.tiles_dir)).table
    if table.is_file():
        import pandas as pd

        try:
            col = pd.read_parquet(table, columns=["mpp"])["mpp"]
        except Exception:  # an unreadable table: the resolution gate fails with its reason
            return None
        if len(col):
            return float(col.median())
    return None


def _stain_fit_record(fitted: Any, used: bool) -> dict[str, Any]:
    """The slide's stain fit for the JSON: vectors, maxima, and whether tiles were normalised."""
    if fitted is None:
        return {"fitted": False, "used_for_normalisation": False, "reason": "no fit"}
    d = fitted.to_dict()
    return {
        "fitted": not d["passthrough"],
        "used_for_normalisation": bool(used and not d["passthrough"]),
        "mode": d["mode"],
        "reason": d["reason"],
        "stain_matrix": d["stain_matrix"],
        "max_conc": d["max_conc"],
        "n_tissue_px": d["n_tissue_px"],
    }


def _provenance(meta: Any, cfg: Any, ctx: _RunContext) -> dict[str, Any]:
    from her2scope import __version__
    from her2scope.config import to_dict

    cal = ctx.calibration
    return {
        "model_name": meta.model_name,
        "classes": list(meta.classes),
        "run_dir": str(Path(meta.run_dir).resolve()) if meta.run_dir else "",
        "checkpoint": str(Path(meta.checkpoint).resolve()) if meta.checkpoint else "",
        "epoch": meta.epoch,
        "input_px": meta.input_px,
        "weights": ctx.weights
        or {"source": "unknown: the run predates provenance.json", "pretrained_loaded": None},
        "train_tile_mpp": ctx.train_mpp,
        "calibration": {
            "temperature": cal.temperature,
            "ece_before": cal.ece_before,
            "ece_after": cal.ece_after,
            "reflex_threshold": cal.policy.threshold,
        },
        "qc_thresholds": asdict(ctx.qc),
        "tiling": to_dict(cfg.tiling),
        "stain_mode": cfg.stain.mode,
        "synthetic_training_data": bool(cfg.synthetic),
        "her2scope_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }

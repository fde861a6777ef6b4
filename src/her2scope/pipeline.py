"""The whole protocol as one resumable job: tile → stain → train → evaluate → compare → explain →
cells (when ``cells.enabled``) → report.

``run_pipeline(cfg)`` writes into ``cfg.out_dir``::

    tiles/            tiles.parquet, slides/<slide_id>.json, qc/, tiling_report.json
    runs/<model>/     one training run per model (checkpoints, results.json, plots, explain/)
    compare/          comparison.csv / comparison.md over the models
    cells/            cell-rule scoring of the test split beside the first model (cells.enabled)
    report.html       the self-contained study report
    timings.json      seconds per stage of the last invocation
    .stamps/          one small JSON per finished stage (and per model for train/evaluate/explain)

A stage is **skipped** when its stamp exists, the stamp's hash of inputs + settings equals the one
computed now, and its outputs are on disk. Each stamp also carries a token that changes every time
the stage really runs; downstream hashes include the upstream token, so re-running a stage (after a
change or with ``force``) re-runs everything that reads its outputs and nothing else. The stamp is
deleted when a stage starts and written (atomically) only after it finished, so a crash never
leaves a stage looking complete. A crashed training run with a matching hash is resumed from its
``last.pt``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from her2scope._io import write_json
from her2scope.config import RunConfig, to_dict
from her2scope.errors import ConfigError, Her2ScopeError

log = logging.getLogger(__name__)

#: The stages in run order; names accepted by ``force`` (and ``her2scope run --force``).
STAGES: tuple[str, ...] = (
    "tile",
    "stain",
    "train",
    "evaluate",
    "compare",
    "explain",
    "cells",
    "report",
)


@dataclass
class StageTiming:
    """One executed or skipped (stage, model) step."""

    stage: str
    model: str | None
    seconds: float
    skipped: bool
    status: str = "ok"  # "ok" | "skipped" | "failed"
    error: str = ""


@dataclass
class PipelineResult:
    """What ``run_pipeline`` did: the output folder, per-step timings and failures."""

    out_dir: Path
    report_path: Path | None
    run_dirs: dict[str, Path]
    timings: list[StageTiming] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


# ----------------------------------------------------------------------------------------------
# Stamps
# ----------------------------------------------------------------------------------------------


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class _Stamps:
    """Reads and writes ``out_dir/.stamps/<stage>[@<model>].json``."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir / ".stamps"

    def path(self, stage: str, model: str | None = None) -> Path:
        return self.dir / (f"{stage}@{model}.json" if model else f"{stage}.json")

    def read(self, stage: str, model: str | None = None) -> dict[str, Any] | None:
        p = self.path(stage, model)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def token(self, stage: str, model: str | None = None) -> str:
        st = self.read(stage, model)
        return str(st.get("token", "")) if st else ""

    def clear(self, stage: str, model: str | None = None) -> None:
        self.path(stage, model).unlink(missing_ok=True)

    def write(self, stage: str, model: str | None, digest: str, seconds: float) -> None:
        write_json(
            self.path(stage, model),
            {
                "stage": stage,
                "model": model,
                "hash": digest,
                "token": uuid.uuid4().hex,
                "seconds": round(seconds, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------


def _absolute(cfg: RunConfig) -> RunConfig:
    """Resolve the out dir and the manifest against the current directory (stable hashes)."""
    cohort = dataclasses.replace(cfg.cohort, manifest=str(Path(cfg.cohort.manifest).resolve()))
    if cfg.cohort.splits_csv:
        cohort = dataclasses.replace(cohort, splits_csv=str(Path(cfg.cohort.splits_csv).resolve()))
    return dataclasses.replace(cfg, out_dir=str(Path(cfg.out_dir).resolve()), cohort=cohort)


def run_dir_name(model_name: str) -> str:
    """Folder of a model's run under ``runs/`` (``timm:convnext_tiny`` → ``timm_convnext_tiny``)."""
    return model_name.replace(":", "_").replace("/", "_")


def _check_force(force: Iterable[str]) -> set[str]:
    wanted = {f.strip() for f in force if f and f.strip()}
    unknown = sorted(wanted - set(STAGES) - {"all"})
    if unknown:
        raise ConfigError(
            f"--force: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}, all"
        )
    return set(STAGES) if "all" in wanted else wanted


def run_pipeline(
    cfg: RunConfig,
    force: Sequence[str] = (),
    models: Sequence[str] | None = None,
    workers: int | None = None,
    echo: Callable[[str], None] | None = None,
    config_path: str | Path | None = None,
) -> PipelineResult:
    """Run every stage of the protocol into ``cfg.out_dir``, skipping up-to-date stages.

    ``force`` names stages to re-run even when up to date (``"all"`` for every stage); stages
    downstream of a re-run stage re-run too. ``models`` overrides ``cfg.train.models``.
    ``workers`` is the number of processes for tiling and stain fitting (default: the CPUs
    available, at most 4).
    ``echo`` receives one line per stage (default: the module logger). A model whose training,
    evaluation or explanation fails is reported in ``PipelineResult.failures`` and the other
    models go on; a failure of tiling, stain fitting or the manifest stops the run.

    The output folder is locked for the whole run (:func:`her2scope._lock.output_lock`): a second
    run into it fails at once naming this one. ``config_path`` is the user's config file: the
    resolved config is written to ``out_dir/config.yaml`` unless that *is* the user's file, in
    which case it goes to ``out_dir/config.resolved.yaml`` and the user's file is left as it is;
    a config file that is a run's own ``runs/<model>/config.yaml`` is refused (training would
    rewrite it).
    """
    from her2scope._lock import output_lock
    from her2scope.config import validate_all

    train = dataclasses.replace(cfg.train, models=tuple(models)) if models else cfg.train
    validate_all(dataclasses.replace(cfg, train=train))  # every problem, before any work
    out = Path(cfg.out_dir).resolve()
    with output_lock(out):
        return _run_pipeline(cfg, force, models, workers, echo, config_path)


def _run_pipeline(
    cfg: RunConfig,
    force: Sequence[str],
    models: Sequence[str] | None,
    workers: int | None,
    echo: Callable[[str], None] | None,
    config_path: str | Path | None,
) -> PipelineResult:
    say = echo or log.info
    forced = _check_force(force)
    if models:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, models=tuple(models)))
    cfg = _absolute(cfg)
    model_names = list(dict.fromkeys(cfg.train.models))
    if not model_names:
        raise ConfigError("train.models is empty; list at least one model (e.g. alexnet)")
    manifest = Path(cfg.cohort.manifest)
    if not manifest.is_file():
        raise ConfigError(
            f"cohort.manifest '{manifest}' not found; set it in the config or with "
            "cohort.manifest=PATH"
        )
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if workers is None:
        from her2scope.tiling.extract import cpu_workers

        workers = min(4, cpu_workers())
    n_workers = max(1, int(workers))
    tiles_dir = out / "tiles"
    runs_dir = out / "runs"
    stamps = _Stamps(out)
    result = PipelineResult(out, None, {m: runs_dir / run_dir_name(m) for m in model_names})
    from her2scope.config import dump_config

    resolved_path = _resolved_config_path(out, model_names, config_path)
    if resolved_path.name != "config.yaml":
        say(
            f"config: {config_path} is the output folder's config.yaml; it is left unchanged and "
            f"the resolved config is written to {resolved_path.name}"
        )
    dump_config(cfg, resolved_path)

    def step(
        stage: str,
        model: str | None,
        digest: str,
        outputs: Sequence[Path],
        fn: Callable[[], Any],
        fatal: bool,
    ) -> bool:
        label = f"{stage}[{model}]" if model else stage
        st = stamps.read(stage, model)
        complete = all(p.exists() for p in outputs)
        if stage not in forced and st is not None and st.get("hash") == digest and complete:
            result.timings.append(StageTiming(stage, model, 0.0, True, "skipped"))
            say(f"{label}: up to date, skipped")
            return True
        stamps.clear(stage, model)
        say(f"{label}: running")
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:
            seconds = time.perf_counter() - t0
            reason = _user_reason(exc)
            msg = f"{label} failed: {reason}"
            result.timings.append(StageTiming(stage, model, seconds, False, "failed", reason))
            if fatal:
                _write_timings(out, result)
                raise
            if isinstance(exc, Her2ScopeError):
                log.debug("%s", msg, exc_info=True)
                say(msg)
            else:  # a bug or a library error: the traceback only when debugging, then go on
                log.error("%s", msg, exc_info=_debug())
            result.failures.append(msg)
            return False
        seconds = time.perf_counter() - t0
        stamps.write(stage, model, digest, seconds)
        result.timings.append(StageTiming(stage, model, seconds, False))
        say(f"{label}: done in {seconds:.1f} s")
        return True

    # 1. tiling ------------------------------------------------------------------------------
    tile_hash = _digest(
        {"manifest": _file_digest(manifest), "path": str(manifest), "tiling": to_dict(cfg.tiling)}
    )
    step(
        "tile",
        None,
        tile_hash,
        [tiles_dir / "tiles.parquet", tiles_dir / "tiling_report.json"],
        lambda: _run_tiling(manifest, tiles_dir, cfg, n_workers),
        fatal=True,
    )

    # 2. stain fit ---------------------------------------------------------------------------
    stain_hash = _digest({"up": stamps.token("tile"), "stain": to_dict(cfg.stain)})
    step(
        "stain",
        None,
        stain_hash,
        [tiles_dir / "tiles.parquet"],
        lambda: _run_stain(tiles_dir, cfg, n_workers),
        fatal=True,
    )

    # 3-4. train and evaluate each model -----------------------------------------------------
    train_settings = to_dict(cfg.train)
    train_settings.pop("models", None)
    evaluated: list[str] = []
    for m in model_names:
        run_dir = result.run_dirs[m]
        train_hash = _digest(
            {
                "up": stamps.token("stain"),
                "model": m,
                "seed": cfg.seed,
                "cohort": to_dict(cfg.cohort),
                "train": train_settings,
            }
        )
        ok = step(
            "train",
            m,
            train_hash,
            [run_dir / "checkpoints" / "best.pt"],
            lambda m=m, run_dir=run_dir, h=train_hash: _run_train(cfg, m, tiles_dir, run_dir, h),
            fatal=False,
        )
        if not ok:
            continue
        eval_hash = _digest({"up": stamps.token("train", m), "evaluate": to_dict(cfg.evaluate)})
        ok = step(
            "evaluate",
            m,
            eval_hash,
            [run_dir / "results.json", run_dir / "predictions.parquet"],
            lambda run_dir=run_dir: _run_evaluate(run_dir, cfg),
            fatal=False,
        )
        if ok:
            evaluated.append(m)

    # 5. compare -----------------------------------------------------------------------------
    compare_dir = out / "compare"
    if evaluated:
        compare_hash = _digest({m: stamps.token("evaluate", m) for m in evaluated})
        step(
            "compare",
            None,
            compare_hash,
            [compare_dir / "comparison.csv"],
            lambda: _run_compare([result.run_dirs[m] for m in evaluated], compare_dir),
            fatal=False,
        )

    # 6. explain -----------------------------------------------------------------------------
    for m in evaluated:
        explain_hash = _digest({"up": stamps.token("evaluate", m), "explain": to_dict(cfg.explain)})
        step(
            "explain",
            m,
            explain_hash,
            [result.run_dirs[m] / "explain" / "gallery.png"],
            lambda m=m: _run_explain(result.run_dirs[m], cfg),
            fatal=False,
        )

    # 7. cell-level ASCO/CAP scoring of the evaluated split, beside the first model's CNN -------
    if cfg.cells.enabled and evaluated:
        first = evaluated[0]
        cells_hash = _digest(
            {
                "up": [stamps.token("stain"), stamps.token("evaluate", first)],
                "model": first,
                "cells": to_dict(cfg.cells),
                "split": cfg.evaluate.split,
                "aggregate": [cfg.evaluate.aggregate, cfg.evaluate.percent_threshold],
            }
        )
        step(
            "cells",
            None,
            cells_hash,
            [out / "cells" / "cells_agreement.json"],
            lambda: _run_cells(
                manifest, result.run_dirs[first], tiles_dir, out / "cells", cfg, n_workers
            ),
            fatal=False,
        )

    # 8. report (always rebuilt: it is cheap and reads everything above) ----------------------
    _write_timings(out, result)
    report_path = out / "report.html"

    def _report() -> None:
        from her2scope.report.html import write_report

        write_report(out, cfg, report_path)

    report_hash = uuid.uuid4().hex  # never skipped
    step("report", None, report_hash, [report_path], _report, fatal=False)
    result.report_path = report_path if report_path.is_file() else None
    _write_timings(out, result)
    return result


def _debug() -> bool:
    import os

    return os.environ.get("HER2SCOPE_DEBUG", "") not in ("", "0")


def _user_reason(exc: BaseException) -> str:
    from her2scope.errors import describe_exception

    return describe_exception(exc)


def _resolved_config_path(
    out: Path, model_names: Sequence[str], config_path: str | Path | None
) -> Path:
    """Where the resolved config goes without replacing the user's config file (see run_pipeline)."""
    from her2scope._io import same_file

    target = out / "config.yaml"
    if config_path is None:
        return target
    for m in model_names:
        run_cfg = out / "runs" / run_dir_name(m) / "config.yaml"
        if same_file(config_path, run_cfg):
            raise ConfigError(
                f"config '{config_path}' is the run folder's own config.yaml, which training "
                "rewrites; copy it outside the output folder (e.g. cp it to my_run.yaml) and "
                "run that copy"
            )
    if same_file(config_path, target):
        return out / "config.resolved.yaml"
    return target


def _write_timings(out: Path, result: PipelineResult) -> None:
    write_json(
        out / "timings.json",
        {
            "steps": [dataclasses.asdict(t) for t in result.timings],
            "total_seconds": round(sum(t.seconds for t in result.timings), 3),
            "failures": list(result.failures),
        },
    )


def format_timings(result: PipelineResult) -> str:
    """A small plain-text table of the time of each stage (one line per stage and model)."""
    lines = [f"{'stage':<22}{'seconds':>10}  status"]
    for t in result.timings:
        label = f"{t.stage}[{t.model}]" if t.model else t.stage
        lines.append(f"{label:<22}{t.seconds:>10.1f}  {t.status}")
    total = sum(t.seconds for t in result.timings)
    lines.append(f"{'total':<22}{total:>10.1f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Stage adapters (thin: each calls one stage function)
# ----------------------------------------------------------------------------------------------


def _run_tiling(manifest: Path, tiles_dir: Path, cfg: RunConfig, workers: int) -> None:
    from her2scope.tiling import tile_cohort

    report = tile_cohort(
        manifest,
        tiles_dir,
        cfg.tiling,
        workers=workers,
        allow_absolute=cfg.cohort.allow_absolute_paths,
    )
    for f in report.failures:
        log.warning("tiling: slide '%s' failed: %s", f["slide_id"], f["reason"])
    if report.n_tiles == 0:
        reasons = "; ".join(f"{f['slide_id']}: {f['reason']}" for f in report.failures[:5])
        raise Her2ScopeError(
            f"tiling {manifest} produced no tiles"
            + (f" ({reasons})" if reasons else "; check the ROIs and tiling.max_white")
        )


def _run_stain(tiles_dir: Path, cfg: RunConfig, workers: int) -> None:
    if cfg.stain.mode == "none":  # nothing to fit: tiles are used as scanned
        log.info("stain: normalisation is off (stain.mode=none); nothing to fit")
        return
    from her2scope.stain import fit_stains

    outcome = fit_stains(tiles_dir, cfg.stain, workers=workers)
    failed = outcome.get("failed") or {}
    if failed:
        shown = "; ".join(f"{sid}: {why}" for sid, why in list(failed.items())[:5])
        raise Her2ScopeError(
            f"stain fit failed for {len(failed)} slide(s) ({shown}); fix or remove them from "
            "the manifest, or set stain.mode=none"
        )
    if outcome.get("passthrough"):
        log.warning(
            "stain: %d slide(s) could not be fitted (reasons above) and pass through "
            "unnormalised: %s",
            len(outcome["passthrough"]),
            ", ".join(outcome["passthrough"][:10]),
        )


def _run_train(cfg: RunConfig, model: str, tiles_dir: Path, run_dir: Path, digest: str) -> None:
    from her2scope.engine.train import train_model

    started = run_dir / ".pipeline_started.json"
    resume = False
    if (run_dir / "checkpoints" / "last.pt").is_file() and started.is_file():
        try:
            resume = json.loads(started.read_text(encoding="utf-8")).get("hash") == digest
        except (OSError, ValueError):
            resume = False
    if resume:
        log.info("train[%s]: resuming the interrupted run from its last checkpoint", model)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(started, {"hash": digest})
    train_model(cfg, model, tiles_dir, run_dir, resume=resume)


def _run_evaluate(run_dir: Path, cfg: RunConfig) -> None:
    from her2scope.evaluate.run import evaluate_run

    evaluate_run(run_dir, cfg.evaluate.split, cfg.evaluate)


def _run_compare(run_dirs: list[Path], out_dir: Path) -> None:
    from her2scope.evaluate.compare import compare_runs

    compare_runs(run_dirs, out_dir)


def _run_cells(
    manifest: Path, run_dir: Path, tiles_dir: Path, out: Path, cfg: RunConfig, workers: int
) -> None:
    from her2scope.cells.stage import run_cells_stage
    from her2scope.cohort.manifest import load_manifest

    manifest_df = load_manifest(
        manifest, cfg.cohort.label_scheme, allow_absolute=cfg.cohort.allow_absolute_paths
    )
    agreement = run_cells_stage(
        manifest_df,
        run_dir,
        tiles_dir,
        out,
        cfg.cells,
        split=cfg.evaluate.split,
        aggregate_rule=cfg.evaluate.aggregate,
        percent_threshold=cfg.evaluate.percent_threshold,
        workers=workers,
    )
    for line in agreement["failures"]:
        log.warning("cells: slide %s", line)


def _run_explain(run_dir: Path, cfg: RunConfig) -> None:
    from her2scope.explain.run import explain_run

    explain_run(
        run_dir,
        split=cfg.evaluate.split,
        n=cfg.explain.n_tiles,
        heatmap_max_px=cfg.explain.heatmap_max_px,
    )
    masks = Path(cfg.cohort.manifest).parent / "masks"
    if masks.is_dir():  # a synthetic cohort with ground truth: where do the maps point?
        from her2scope.explain.pointing import POINTING_JSON, measure_pointing

        measured = measure_pointing(run_dir, masks, split=cfg.evaluate.split)
        write_json(run_dir / "explain" / POINTING_JSON, measured)

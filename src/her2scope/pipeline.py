"""The whole protocol as one resumable job: tile → stain → train → evaluate → compare → explain →
cells (when ``cells.enabled``) → report.

The stages are the rows of :data:`STAGE_TABLE`: each names what it reads, the settings its
result depends on, the files it writes (all paths from :class:`her2scope.layout.OutLayout`), when
it is enabled and how it runs; a small executor runs them in order. ``run_pipeline(cfg)`` writes
into ``cfg.out_dir``::

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
from her2scope.layout import OutLayout, RunLayout

log = logging.getLogger(__name__)


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

    def __init__(self, out: OutLayout) -> None:
        self.dir = out.stamps_dir

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


# ----------------------------------------------------------------------------------------------
# The stage table
# ----------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """One invocation: the resolved config, where things go, and what each stage managed."""

    cfg: RunConfig
    out: OutLayout
    manifest: Path
    workers: int
    models: list[str]
    stamps: _Stamps
    result: PipelineResult
    forced: set[str]
    say: Callable[[str], None]
    #: models (or ``[None]`` for a once-stage) each stage finished or found up to date
    done: dict[str, list[str | None]] = field(default_factory=dict)

    def run(self, model: str | None) -> RunLayout:
        if model is None:  # a table mistake: a once-stage asking for a run folder
            raise TypeError("a per-model stage was called without a model")
        return self.out.run(model)

    def evaluated(self) -> list[str]:
        return [m for m in self.done.get("evaluate", []) if m is not None]


@dataclass(frozen=True)
class Stage:
    """One row of :data:`STAGE_TABLE`.

    ``settings(job, model)`` is what the stage's result depends on (hashed: the upstream stages'
    tokens, the config sections it reads); ``outputs(job, model)`` the files that must exist for
    a skip; ``run(job, model, digest)`` does the work. ``after``: a per-model stage runs for the
    models that stage finished (``None``: every model of ``train.models``). ``enabled``: whether
    the stage runs at all this time. ``fatal``: a failure stops the pipeline (else it is recorded
    and the other models go on). ``always``: never skipped.
    """

    name: str
    reads: str
    settings: Callable[[_Job, str | None], Any]
    outputs: Callable[[_Job, str | None], list[Path]]
    run: Callable[[_Job, str | None, str], None]
    per_model: bool = False
    after: str | None = None
    enabled: Callable[[_Job], bool] = lambda job: True
    fatal: bool = False
    always: bool = False


def _train_settings(job: _Job, m: str | None) -> dict[str, Any]:
    train = to_dict(job.cfg.train)
    train.pop("models", None)
    return {
        "up": job.stamps.token("stain"),
        "model": m,
        "seed": job.cfg.seed,
        "cohort": to_dict(job.cfg.cohort),
        "train": train,
    }


def _cells_settings(job: _Job, m: str | None) -> dict[str, Any]:
    first = job.evaluated()[0]
    ev = job.cfg.evaluate
    return {
        "up": [job.stamps.token("stain"), job.stamps.token("evaluate", first)],
        "model": first,
        "cells": to_dict(job.cfg.cells),
        "split": ev.split,
        "aggregate": [ev.aggregate, ev.percent_threshold],
    }


#: The protocol, in run order. Each stage reads the outputs of stages above it (``reads``) and
#: writes the paths its ``outputs`` name, all from :mod:`her2scope.layout`.
STAGE_TABLE: tuple[Stage, ...] = (
    Stage(
        "tile",
        reads="the manifest and its slides and ROIs",
        settings=lambda j, m: {
            "manifest": _file_digest(j.manifest),
            "path": str(j.manifest),
            "tiling": to_dict(j.cfg.tiling),
        },
        outputs=lambda j, m: [j.out.tiles.table, j.out.tiles.report],
        run=lambda j, m, h: _run_tiling(j.manifest, j.out.tiles.root, j.cfg, j.workers),
        fatal=True,
    ),
    Stage(
        "stain",
        reads="tiles/ (table and sidecars)",
        settings=lambda j, m: {"up": j.stamps.token("tile"), "stain": to_dict(j.cfg.stain)},
        outputs=lambda j, m: [j.out.tiles.table],
        run=lambda j, m, h: _run_stain(j.out.tiles.root, j.cfg, j.workers),
        fatal=True,
    ),
    Stage(
        "train",
        reads="tiles/ with the stain sidecars; the manifest's labels",
        settings=_train_settings,
        outputs=lambda j, m: [j.run(m).best],
        run=lambda j, m, h: _run_train(j.cfg, str(m), j.out.tiles.root, j.run(m).root, h),
        per_model=True,
    ),
    Stage(
        "evaluate",
        reads="runs/<model>/checkpoints/best.pt, tiles/",
        settings=lambda j, m: {
            "up": j.stamps.token("train", m),
            "evaluate": to_dict(j.cfg.evaluate),
        },
        outputs=lambda j, m: [j.run(m).results, j.run(m).predictions],
        run=lambda j, m, h: _run_evaluate(j.run(m).root, j.cfg),
        per_model=True,
        after="train",
    ),
    Stage(
        "compare",
        reads="runs/<model>/results.json and predictions.parquet of the evaluated models",
        settings=lambda j, m: {e: j.stamps.token("evaluate", e) for e in j.evaluated()},
        outputs=lambda j, m: [j.out.comparison_csv],
        run=lambda j, m, h: _run_compare([j.run(e).root for e in j.evaluated()], j.out.compare_dir),
        enabled=lambda j: bool(j.evaluated()),
    ),
    Stage(
        "explain",
        reads="runs/<model>/checkpoints/best.pt, splits.csv, tiles/",
        settings=lambda j, m: {
            "up": j.stamps.token("evaluate", m),
            "explain": to_dict(j.cfg.explain),
        },
        outputs=lambda j, m: [j.run(m).gallery_png],
        run=lambda j, m, h: _run_explain(j.run(m).root, j.cfg),
        per_model=True,
        after="evaluate",
    ),
    Stage(
        "cells",
        reads="the manifest, tiles/ sidecars, the first evaluated run's predictions.parquet",
        settings=_cells_settings,
        outputs=lambda j, m: [j.out.cells_agreement],
        run=lambda j, m, h: _run_cells(
            j.manifest,
            j.run(j.evaluated()[0]).root,
            j.out.tiles.root,
            j.out.cells_dir,
            j.cfg,
            j.workers,
        ),
        enabled=lambda j: bool(j.cfg.cells.enabled and j.evaluated()),
    ),
    Stage(
        "report",
        reads="everything above (what OutLayout points at)",
        settings=lambda j, m: None,
        outputs=lambda j, m: [j.out.report],
        run=lambda j, m, h: _run_report(j),
        always=True,  # cheap, and it shows this invocation's timings
    ),
)

#: The stages in run order; names accepted by ``force`` (and ``her2scope run --force``).
STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE)


def _execute(job: _Job, stage: Stage, model: str | None) -> bool:
    """Run one (stage, model) step unless it is up to date; record it; True when it is done."""
    label = f"{stage.name}[{model}]" if model else stage.name
    digest = uuid.uuid4().hex if stage.always else _digest(stage.settings(job, model))
    st = job.stamps.read(stage.name, model)
    complete = all(p.exists() for p in stage.outputs(job, model))
    result = job.result
    if stage.name not in job.forced and st is not None and st.get("hash") == digest and complete:
        result.timings.append(StageTiming(stage.name, model, 0.0, True, "skipped"))
        job.say(f"{label}: up to date, skipped")
        return True
    job.stamps.clear(stage.name, model)
    job.say(f"{label}: running")
    t0 = time.perf_counter()
    try:
        stage.run(job, model, digest)
    except Exception as exc:
        seconds = time.perf_counter() - t0
        reason = _user_reason(exc)
        msg = f"{label} failed: {reason}"
        result.timings.append(StageTiming(stage.name, model, seconds, False, "failed", reason))
        if stage.fatal:
            _write_timings(job.out, result)
            raise
        if isinstance(exc, Her2ScopeError):
            log.debug("%s", msg, exc_info=True)
            job.say(msg)
        else:  # a bug or a library error: the traceback only when debugging, then go on
            log.error("%s", msg, exc_info=_debug())
        result.failures.append(msg)
        return False
    seconds = time.perf_counter() - t0
    job.stamps.write(stage.name, model, digest, seconds)
    result.timings.append(StageTiming(stage.name, model, seconds, False))
    job.say(f"{label}: done in {seconds:.1f} s")
    return True


def _execute_table(job: _Job, table: Sequence[Stage]) -> None:
    """Run ``table`` in order. Consecutive per-model stages run model by model (train then
    evaluate one model before training the next), each for the models its ``after`` stage
    finished."""
    i = 0
    while i < len(table):
        block = [table[i]]
        while block[-1].per_model and i + len(block) < len(table):
            nxt = table[i + len(block)]
            if not nxt.per_model:
                break
            block.append(nxt)
        i += len(block)
        for stage in block:
            job.done[stage.name] = []
        if not block[0].per_model:
            stage = block[0]
            if stage.enabled(job) and _execute(job, stage, None):
                job.done[stage.name].append(None)
            continue
        first = block[0]
        candidates = list(job.models) if first.after is None else list(job.done[first.after])
        for m in candidates:
            for stage in block:
                ready = stage.after is None or m in job.done[stage.after]
                if ready and stage.enabled(job) and _execute(job, stage, m):
                    job.done[stage.name].append(m)


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
    out = OutLayout(Path(cfg.out_dir))
    out.root.mkdir(parents=True, exist_ok=True)
    if workers is None:
        from her2scope.tiling.extract import cpu_workers

        workers = min(4, cpu_workers())
    result = PipelineResult(out.root, None, {m: out.run(m).root for m in model_names})
    from her2scope.config import dump_config

    resolved_path = _resolved_config_path(out.root, model_names, config_path)
    if resolved_path != out.config:
        say(
            f"config: {config_path} is the output folder's config.yaml; it is left unchanged and "
            f"the resolved config is written to {resolved_path.name}"
        )
    dump_config(cfg, resolved_path)
    job = _Job(
        cfg, out, manifest, max(1, int(workers)), model_names, _Stamps(out), result, forced, say
    )
    _execute_table(job, STAGE_TABLE)
    result.report_path = out.report if out.report.is_file() else None
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

    layout = OutLayout(out)
    target = layout.config
    if config_path is None:
        return target
    for m in model_names:
        run_cfg = layout.run(m).config
        if same_file(config_path, run_cfg):
            raise ConfigError(
                f"config '{config_path}' is the run folder's own config.yaml, which training "
                "rewrites; copy it outside the output folder (e.g. cp it to my_run.yaml) and "
                "run that copy"
            )
    if same_file(config_path, target):
        return layout.resolved_config
    return target


def _write_timings(out: OutLayout, result: PipelineResult) -> None:
    write_json(
        out.timings,
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

    run = RunLayout(run_dir)
    started = run.pipeline_started
    resume = False
    if run.last.is_file() and started.is_file():
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
        from her2scope.explain.pointing import measure_pointing

        measured = measure_pointing(run_dir, masks, split=cfg.evaluate.split)
        write_json(RunLayout(run_dir).pointing, measured)


def _run_report(job: _Job) -> None:
    from her2scope.report.html import write_report

    _write_timings(job.out, job.result)  # the report shows this invocation's timings so far
    write_report(job.out.root, job.cfg, job.out.report)

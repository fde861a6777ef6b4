"""``her2scope predict`` (score new slides) and ``her2scope explain`` (Grad-CAM for a run)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from her2scope.scoring.qc import QCConfig


def register(app: typer.Typer) -> None:
    """Add the ``predict`` and ``explain`` commands to ``app``."""
    app.command(name="predict")(predict)
    app.command(name="explain")(explain)


def predict(
    slides: list[Path] = typer.Argument(
        ..., help="Slide files to score.", show_default=False, metavar="SLIDE..."
    ),
    run: Path = typer.Option(..., "--run", help="Trained run folder (checkpoints/best.pt)."),
    roi: Path = typer.Option(
        None,
        "--roi",
        help="ROI file (one slide) or folder of <slide_id>.geojson/.json/.xml. Default: tissue.",
    ),
    out: Path = typer.Option(Path("predictions"), "--out", help="Output folder."),
    workers: int = typer.Option(1, "--workers", help="Worker processes reading tiles."),
    shard: str = typer.Option(
        None, "--shard", help="i/n: score every n-th slide starting at i (0-based), for job arrays."
    ),
    mpp: float = typer.Option(
        None, "--mpp", help="µm/px at level 0 for slides whose file has none."
    ),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … Default: GPU if any."),
    batch_size: int = typer.Option(64, "--batch-size", help="Tiles per forward pass."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Score slides that fail a QC gate (the failed checks stay in the outputs).",
    ),
    center: str = typer.Option(
        None,
        "--center",
        help="Apply this centre's site calibration (her2scope calibrate RUN --center NAME).",
    ),
    cells: bool = typer.Option(
        False,
        "--cells",
        help="Also score each slide's cells by the ASCO/CAP rules (her2scope cells): "
        "<slide_id>.cells.* outputs, and the cell call and its agreement with the CNN in the JSON.",
    ),
    qc_set: list[str] = typer.Option(
        None,
        "--qc",
        help="KEY=VALUE: change one QC threshold for this call (e.g. --qc min_tiles=4); the "
        "defaults are the run's config 'qc' section (docs/predict.md lists them).",
        show_default=False,
    ),
    backend: str = typer.Option(
        "torch",
        "--backend",
        help="torch, or onnx: the run's exported model (her2scope export RUN --onnx) in ONNX "
        "Runtime on the CPU. Both fp32; docs/performance.md.",
    ),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto: on a CPU with native bf16, bf16 with an fp32 recheck of every slide whose "
        "class or reflex flag is within bf16's error of its threshold (so the calls are fp32's on "
        "any CPU; probabilities may differ in the 3rd decimal); fp32 on other CPUs; the run's AMP "
        "setting on CUDA. fp32: always fp32. bf16: bf16 without the recheck (a call can depend on "
        "the CPU). docs/performance.md.",
    ),
    onnx: Path = typer.Option(
        None, "--onnx", help="ONNX file for --backend onnx. Default: RUN/checkpoints/best.onnx."
    ),
    threads: int = typer.Option(
        None, "--threads", help="Compute threads (torch or ONNX Runtime). Default: from the CPUs."
    ),
    readers: int = typer.Option(
        None,
        "--readers",
        help="Tile-reading threads running ahead of the model (0: none). Default: chosen with "
        "--threads from the CPUs, never more than there are.",
    ),
    tile_cache_mb: int = typer.Option(
        None,
        "--tile-cache-mb",
        help="MiB of each slide's tile pixels kept from the tiling pass, so the stain fit and the "
        "model do not decode those tiles again (the same pixels either way; tiles past it are "
        "read again; 0: read every tile again; with --workers > 1 tiles are always read again). "
        "Default: 1024.",
        show_default=False,
    ),
    rescore: bool = typer.Option(
        False,
        "--rescore",
        help="Score again slides whose outputs in --out were made with the same settings "
        "(by default they are skipped, so an interrupted cohort resumes).",
    ),
) -> None:
    """Score slides with a trained run: HER2 score, probabilities, uncertainty, reflex-FISH flag.

    Tiles each slide as in training, fits its stain normaliser on its own tiles, predicts all tiles
    and aggregates them with the run's rule. Writes OUT/<slide_id>.her2scope.json,
    OUT/<slide_id>.her2scope-heatmap.png, OUT/<slide_id>.her2scope-tiles.geojson (QuPath: File →
    Import objects) and OUT/summary.csv; refuses (exit 2, nothing written) when an output would
    replace an input. A failing slide is reported and the others go on; the exit status is 1 when
    any slide failed. A slide already scored into OUT with the same settings is skipped (resume;
    --rescore scores it again). See docs/predict.md and docs/performance.md.
    Research software, not a medical device.
    """
    from her2scope._lock import output_lock
    from her2scope.cli._options import bound_workers, check_device, check_int, check_mpp
    from her2scope.engine.infer import BACKENDS, PRECISIONS, InferenceOptions
    from her2scope.errors import ConfigError
    from her2scope.scoring.score import TILE_CACHE_MB, parse_shard, score_slides

    shard_t = parse_shard(shard) if shard else None
    workers = bound_workers("--workers", workers, None) or 1
    check_int("--batch-size", batch_size, 1, 65536)
    check_int("--threads", threads, 1, 1024)
    check_int("--readers", readers, 0, 1024)
    check_int("--tile-cache-mb", tile_cache_mb, 0, 1 << 20)
    if backend not in BACKENDS:
        raise ConfigError(f"--backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if onnx is not None and backend != "onnx":
        raise ConfigError("--onnx FILE goes with --backend onnx")
    inference = InferenceOptions(
        backend=backend,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        onnx_path=str(onnx) if onnx is not None else None,
        threads=threads,
        readers=readers,
    )
    if problems := inference.problems():
        raise ConfigError("; ".join(problems))
    check_mpp("--mpp", mpp)
    check_device("--device", device)
    _check_run(run)
    qc = _qc_thresholds(run, qc_set or [])
    with output_lock(out, clean_depth=0):  # --out may be the user's slide folder: no walk
        report = score_slides(
            slides,
            run,
            out,
            rois=roi,
            workers=workers,
            shard=shard_t,
            mpp=mpp,
            device=device,
            batch_size=batch_size,
            force=force,
            center=center,
            qc=qc,
            cells=cells,
            inference=inference,
            rescore=rescore,
            tile_cache_mb=TILE_CACHE_MB if tile_cache_mb is None else tile_cache_mb,
        )
    s = report.summary
    n_ok = int((s["status"] == "ok").sum())
    for _, r in s[s["status"] == "ok"].iterrows():
        flag = "  reflex FISH" if bool(r["reflex_fish"]) else ""
        if r.get("qc_passed") is False or str(r.get("qc_passed")) == "False":
            flag += f"  QC FAILED, scored with --force ({r['qc_failed_checks']})"
        typer.echo(f"{r['slide_id']}: {r['score']} (uncertainty {r['uncertainty']:.2f}){flag}")
    for _, r in s[s["status"] == "qc_failed"].iterrows():
        typer.secho(
            f"{r['slide_id']}: not scored, failed QC ({r['qc_failed_checks']}); see its JSON, "
            "or --force",
            fg=typer.colors.YELLOW,
            err=True,
        )
    rate = f", {report.slides_per_hour:.0f} slides/hour" if report.slides_per_hour else ""
    skipped = f" ({report.n_skipped} already scored, skipped)" if report.n_skipped else ""
    typer.echo(
        f"{n_ok}/{len(s)} slide(s) scored{skipped} in {report.seconds:.1f} s{rate}; "
        f"summary: {report.summary_path}"
    )
    if report.failures:
        typer.secho(f"{len(report.failures)} slide(s) failed:", fg=typer.colors.RED, err=True)
        for path, msg in report.failures:
            typer.secho(f"  {path}: {msg}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def _qc_thresholds(run: Path, settings: list[str]) -> QCConfig | None:
    """The run's QC thresholds with ``--qc KEY=VALUE`` applied; None (the run's) when none given."""
    if not settings:
        return None
    from her2scope.config import RunConfig, apply_overrides, load_config
    from her2scope.errors import ConfigError

    bad = [s for s in settings if "=" not in s or s.startswith("qc.")]
    if bad:
        raise ConfigError(f"--qc {bad[0]!r}: write KEY=VALUE, e.g. --qc min_tiles=4")
    from her2scope.layout import RunLayout

    cfg_path = RunLayout(run).config
    base = load_config(cfg_path) if cfg_path.is_file() else RunConfig()
    return apply_overrides(base, [f"qc.{s}" for s in settings]).qc


def explain(
    run: Path = typer.Argument(..., help="Trained run folder.", show_default=False),
    slide: str = typer.Option(None, "--slide", help="Explain this slide id only."),
    split: str = typer.Option("test", "--split", help="Explain the slides of this split."),
    n: int = typer.Option(16, "--n", help="Tiles per class and correct/wrong group."),
    out: Path = typer.Option(None, "--out", help="Output folder. Default: RUN/explain."),
    device: str = typer.Option(None, "--device", help="cpu, cuda … Default: GPU if any."),
    scored: Path = typer.Option(
        None,
        "--scored",
        help="A slide scored by predict (its <slide_id>.her2scope.json): explain that slide.",
    ),
    method: str = typer.Option(
        "input_x_gradient",
        "--method",
        help="input_x_gradient (per pixel, per-slide scale) or gradcam (last block, per tile).",
    ),
) -> None:
    """Explanations: gallery of the most confident tiles per class and stitched slide maps.

    Writes gallery.png, gallery.html and slides/<slide_id>_cam.png (the map beside the
    expected-score heatmap). With --scored, only that slide's map, next to its JSON
    (<slide_id>.her2scope-explain.png) or in --out. See docs/explain.md.
    """
    from her2scope._lock import output_lock
    from her2scope.cli._options import check_device, check_int
    from her2scope.errors import ConfigError
    from her2scope.explain.gradcam import CAM_METHODS
    from her2scope.explain.run import explain_run

    check_int("--n", n, 1, 10_000)
    check_device("--device", device)
    if method not in CAM_METHODS:
        raise ConfigError(f"--method '{method}': choose one of {', '.join(CAM_METHODS)}")
    _check_run(run)
    if scored is not None:
        from her2scope.explain.run import explain_scored

        with output_lock(out if out is not None else scored.parent):
            path = explain_scored(scored, run, out_dir=out, device=device, method=method)
        typer.echo(f"explanation written to {path}")
        return
    with output_lock(out if out is not None else run / "explain"):
        path = explain_run(
            run, slide=slide, split=split, n=n, out_dir=out, device=device, method=method
        )
    typer.echo(f"explanations written to {path}")


def _check_run(run: Path) -> None:
    """A run folder with a best checkpoint, before anything is read or written."""
    from her2scope.errors import ConfigError

    if not run.is_dir():
        raise ConfigError(
            f"--run '{run}' is not a folder; give a run folder from `her2scope train`"
        )
    if not (run / "checkpoints" / "best.pt").is_file():
        raise ConfigError(
            f"--run '{run}' has no checkpoints/best.pt; is it a finished `her2scope train` run?"
        )

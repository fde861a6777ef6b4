"""``her2scope evaluate`` and ``her2scope compare``: metrics with patient-bootstrap CIs, model table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from her2scope.cli._options import default_of


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` and ``compare`` commands to ``app``."""
    app.command(name="evaluate")(evaluate)
    app.command(name="compare")(compare)


def _run_eval_config(run_dir: Path) -> Any:
    """The run's own evaluate settings (its config.yaml), or the defaults."""
    from her2scope.config import load_config
    from her2scope.evaluate.config import EvaluateConfig
    from her2scope.layout import RunLayout

    cfg_path = RunLayout(run_dir).config
    if cfg_path.is_file():
        return load_config(cfg_path).evaluate
    return EvaluateConfig()


def evaluate(
    runs: list[Path] = typer.Argument(..., help="Run folder(s) written by `her2scope train`."),
    split: str = typer.Option(
        None, "--split", help="Split to evaluate: train, val or test (evaluate.split)."
    ),
    aggregate: str = typer.Option(
        None,
        "--aggregate",
        help="Tile → slide/patient rule: mean, majority or percent (evaluate.aggregate).",
    ),
    percent_threshold: float = typer.Option(
        None,
        "--percent",
        help="Percent rule: the highest grade reached by >= this % of tiles "
        "(evaluate.percent_threshold).",
    ),
    n_boot: int = typer.Option(
        None, "--n-boot", help="Patient-bootstrap resamples (evaluate.n_boot)."
    ),
    seed: int = typer.Option(None, "--seed", help="Bootstrap seed (evaluate.seed)."),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Tiles per forward pass (evaluate.batch_size)."
    ),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
) -> None:
    """Predict a split with each run's best checkpoint; write predictions.parquet, results.json
    and plots/ into the run folder. Metrics at tile, slide and patient level with 95 % CIs from a
    bootstrap over patients. An option not given keeps the run's own setting (its config.yaml).
    See docs/evaluation.md."""
    from her2scope._lock import output_lock
    from her2scope.cli._options import overlay
    from her2scope.errors import ConfigError, Her2ScopeError
    from her2scope.evaluate.run import evaluate_run

    given = {
        "split": split,
        "aggregate": aggregate,
        "percent_threshold": percent_threshold,
        "n_boot": n_boot,
        "seed": seed,
        "batch_size": batch_size,
        "plots": False if no_plots else None,
    }
    options = {
        "split": "--split",
        "aggregate": "--aggregate",
        "percent_threshold": "--percent",
        "n_boot": "--n-boot",
        "seed": "--seed",
        "batch_size": "--batch-size",
    }
    failed: list[str] = []
    for run_dir in runs:
        try:
            if not run_dir.is_dir():
                raise ConfigError(f"run folder '{run_dir}' not found")
            # the run's settings with the options given laid over them, every problem at once
            cfg = overlay(_run_eval_config(run_dir), given, options)
            with output_lock(run_dir):
                res = evaluate_run(run_dir, cfg.split, cfg)
        except Her2ScopeError as exc:
            if len(runs) == 1:
                raise
            failed.append(f"{run_dir}: {exc}")
            typer.secho(f"error: {run_dir}: {exc}", fg=typer.colors.RED, err=True)
            continue
        m = res["levels"]["patient"]["macro_auc"]
        n = res["n"]
        head = f"{run_dir}: {n['patients']} patients, {n['slides']} slides, {n['tiles']} tiles"
        if m["value"] is None:
            typer.echo(f"{head}; patient macro-AUC n/a ({m['reason']})")
        else:
            ci = m["ci"] or [float("nan"), float("nan")]
            typer.echo(f"{head}; patient macro-AUC {m['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
        cal = res.get("calibration") or {}
        rf = cal.get("reflex") or {}
        if rf.get("fraction_flagged") is not None:
            ece = cal.get("this_split") or {}
            caught = rf.get("miscalls_caught")
            typer.echo(
                f"  calibration T={cal['temperature']:.2f}, tile ECE "
                f"{ece.get('ece_tile_before') or float('nan'):.3f} -> "
                f"{ece.get('ece_tile_after') or float('nan'):.3f}; reflex threshold "
                f"{rf['threshold']:.3f} flags {rf['fraction_flagged']:.0%} of slides, catches "
                + ("n/a (no mis-call)" if caught is None else f"{caught:.0%} of mis-calls")
            )
        if res.get("synthetic"):
            typer.echo("  (synthetic cohort: not clinical performance)")
    if failed:
        typer.echo(f"{len(failed)} of {len(runs)} run(s) failed:", err=True)
        for f in failed:
            typer.echo(f"  - {f}", err=True)
        raise typer.Exit(1)


def compare(
    runs: list[Path] = typer.Argument(..., help="Evaluated run folders."),
    out: Path = typer.Option(Path("compare"), "--out", help="Folder for comparison.csv/.md."),
    level: str = typer.Option(
        None,
        "--level",
        help="tile, slide or patient.",
        show_default=default_of("her2scope.evaluate.compare", "compare_runs", "level"),
    ),
) -> None:
    """Table of the runs (macro-AUC [CI], per-class AUC, accuracy, macro-F1, kappa) with a paired
    patient bootstrap of macro-AUC against the best run; writes comparison.csv and comparison.md."""
    from her2scope._lock import output_lock
    from her2scope.evaluate.compare import compare_runs
    from her2scope.layout import comparison_paths

    with output_lock(out):
        table = compare_runs(runs, out) if level is None else compare_runs(runs, out, level=level)
    csv_path, md_path = comparison_paths(out)
    typer.echo(md_path.read_text(encoding="utf-8"))
    typer.echo(f"wrote {csv_path} and {md_path} ({len(table)} runs)")

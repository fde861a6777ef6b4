"""``her2scope run`` (the whole protocol from one config) and ``her2scope demo`` (synthetic cohort)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add the ``run`` and ``demo`` commands to ``app``."""
    app.command(name="run")(run)
    app.command(name="demo")(demo)


def parse_models(value: str | None) -> list[str] | None:
    """``alexnet`` / ``alexnet,vgg16`` / ``all`` → model names (None: keep the config's)."""
    if value is None or not value.strip():
        return None
    if value.strip().lower() == "all":
        from her2scope.models.registry import list_models

        return list(list_models())
    return [m.strip() for m in value.split(",") if m.strip()]


def demo_config_path() -> Path:
    """The packaged ``configs/demo.yaml`` (a copy of the repository's ``configs/demo.yaml``)."""
    from importlib.resources import files

    return Path(str(files("her2scope") / "configs" / "demo.yaml"))


def run(
    config: Path = typer.Argument(..., help="Run config YAML (start from configs/study.yaml)."),
    overrides: list[str] = typer.Argument(
        None,
        help="Config overrides as section.key=value, e.g. train.epochs=3 stain.mode=none.",
        show_default=False,
        metavar="[KEY=VALUE]...",
    ),
    force: list[str] = typer.Option(
        None,
        "--force",
        help="Re-run this stage (and what depends on it) even if up to date: tile, stain, "
        "train, evaluate, compare, explain, report or all. Repeatable.",
    ),
    models: str = typer.Option(
        None, "--models", help="Models to train: alexnet, a comma list, or all (default: config)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Processes for tiling and stain fitting (default: CPUs, ≤ 4)."
    ),
) -> None:
    """Run the protocol: tile → fit stains → train each model → evaluate → compare → explain → report.

    Outputs go to the config's out_dir: tiles/, runs/<model>/, compare/, report.html,
    timings.json. A stage whose inputs and settings are unchanged and whose outputs are complete
    is skipped, so re-running after a crash or after adding a model does only what is needed.
    Relative paths in the config are relative to the current directory.
    """
    from her2scope.cli._options import bound_workers, setup_logging
    from her2scope.config import load_config

    workers = bound_workers("--workers", workers, None)
    setup_logging()
    # every problem of the settings, the files they name and the manifest, at once
    cfg = load_config(config, list(overrides or []), validate=True)
    _run_and_print(cfg, force or [], parse_models(models), workers, config)


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder."),
    models: str = typer.Option(
        None, "--models", help="alexnet (default), a comma list, or all (the study's six)."
    ),
    patients: int = typer.Option(24, "--patients", help="Patients in the synthetic cohort."),
    overrides: list[str] = typer.Argument(
        None,
        help="Extra config overrides (section.key=value).",
        show_default=False,
        metavar="[KEY=VALUE]...",
    ),
    force: list[str] = typer.Option(None, "--force", help="Re-run this stage (see `run`)."),
) -> None:
    """Generate the SYNTHETIC dual-centre cohort and run the whole protocol on it.

    Trains at centre A, tests at centre B (configs/demo.yaml), prints the external-centre
    patient-level macro-AUC with its CI and the report path. Synthetic numbers show that the
    pipeline works; they are not clinical performance.
    """
    from her2scope._lock import output_lock
    from her2scope.cli._options import check_int, setup_logging

    check_int("--patients", patients, 3, 10_000)
    setup_logging()
    out = out.resolve()
    with output_lock(out):
        _demo(out, models, patients, overrides, force)


def _demo(
    out: Path,
    models: str | None,
    patients: int,
    overrides: list[str] | None,
    force: list[str] | None,
) -> None:
    import json

    from her2scope.config import load_config

    cohort_dir = out / "cohort"
    manifest = cohort_dir / "manifest.csv"
    names = parse_models(models)
    # every settings problem before the cohort is rendered (the manifest is checked by the run)
    cfg = load_config(
        demo_config_path(),
        [
            f"out_dir={json.dumps(str(out))}",
            f"cohort.manifest={json.dumps(str(manifest))}",
            "synthetic=true",
            *(overrides or []),
            *_models_override(names),
        ],
        validate=True,
        check_manifest=False,
    )
    params = _read_json(cohort_dir / "cohort.json").get("parameters", {})
    if not manifest.is_file() or params.get("n_patients") != patients:
        from her2scope.synth import make_cohort

        typer.echo(f"demo: generating a synthetic cohort of {patients} patients in {cohort_dir}")
        make_cohort(
            cohort_dir, n_patients=patients, n_centers=2, seed=0, masks=True, workers=2
        )  # masks: the explain stage measures where the maps point
    else:
        typer.echo(f"demo: reusing the synthetic cohort in {cohort_dir}")
    _run_and_print(cfg, force or [], names, None)


def _models_override(names: list[str] | None) -> list[str]:
    """``train.models=[...]`` for model names given on the command line (none: nothing)."""
    import json

    return [f"train.models={json.dumps(names)}"] if names else []


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_and_print(
    cfg: Any,
    force: list[str],
    models: list[str] | None,
    workers: int | None,
    config_path: Path | None = None,
) -> None:
    from her2scope.pipeline import format_timings, run_pipeline

    result = run_pipeline(
        cfg,
        force=force,
        models=models,
        workers=workers,
        echo=typer.echo,
        config_path=config_path,
    )
    typer.echo("\nTime of each stage:")
    typer.echo(format_timings(result))
    centres = ", ".join(cfg.cohort.test_centers) or cfg.evaluate.split
    typer.echo(
        f"\nPatient-level macro-AUC on the {cfg.evaluate.split} split (centre(s) {centres}):"
    )
    from her2scope.layout import RunLayout

    for name, run_dir in result.run_dirs.items():
        res = _read_json(RunLayout(run_dir).results)
        m = res.get("levels", {}).get("patient", {}).get("macro_auc")
        if isinstance(m, dict) and m.get("value") is not None:
            ci = m.get("ci") or [None, None]
            lo, hi = ci if len(ci) == 2 else (None, None)
            ci_txt = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
            typer.echo(
                f"  {name:<14} {m['value']:.3f}{ci_txt} "
                f"({cfg.evaluate.ci:.0%} CI, bootstrap over patients)"
            )
        elif isinstance(m, dict):
            typer.echo(f"  {name:<14} not available ({m.get('reason', 'see results.json')})")
        else:
            typer.echo(f"  {name:<14} not available (no results.json)")
    if cfg.synthetic:
        typer.echo("  (synthetic cohort: these numbers are not clinical performance)")
    if result.report_path is not None:
        typer.echo(f"\nReport: {result.report_path}")
    if result.failures:
        typer.echo("\nFailed:", err=True)
        for f in result.failures:
            typer.echo(f"  - {f}", err=True)
        raise typer.Exit(1)

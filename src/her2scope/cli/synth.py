"""``her2scope synth``: render the synthetic dual-centre HER2 IHC cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from her2scope.cli._options import default_of

#: What ``make_cohort`` writes into its folder: ``synth`` refuses a folder holding any of them.
COHORT_NAMES = ("manifest.csv", "cohort.json", "slides", "rois", "masks", "cells")


def _default(key: str) -> str:
    return default_of("her2scope.synth", "make_cohort", key)


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to ``app``."""
    app.command(name="synth")(synth)


def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the cohort into."),
    patients: int = typer.Option(
        None, "--patients", help="Number of patients.", show_default=_default("n_patients")
    ),
    centers: int = typer.Option(
        None,
        "--centers",
        help="Number of centres (named A, B, …).",
        show_default=_default("n_centers"),
    ),
    seed: int = typer.Option(
        None,
        "--seed",
        help="Random seed; the same seed gives the same bytes.",
        show_default=_default("seed"),
    ),
    slide_px: int = typer.Option(
        None,
        "--slide-px",
        help="Level-0 side of each slide in px at 0.5 µm/px (the default: 2 mm, ~25 ROI tiles "
        "of 256 µm).",
        show_default=_default("slide_px"),
    ),
    labels: str = typer.Option(
        None,
        "--labels",
        help="HER2 scores to draw, comma-separated (e.g. 0,1+,2+,3+).",
        show_default=_default("labels"),
    ),
    cells: bool = typer.Option(
        False, "--cells", help="Also write per-cell ground truth (Parquet)."
    ),
    masks: bool = typer.Option(False, "--masks", help="Also write level-0 label masks (PNG)."),
    workers: int = typer.Option(1, "--workers", help="Slides rendered in parallel processes."),
) -> None:
    """Render a SYNTHETIC multi-centre HER2 IHC cohort: slides, Tumor ROIs, manifest.csv.

    For tests and demos only: no number measured on it is clinical performance.
    """
    from her2scope._lock import output_lock
    from her2scope.cli._options import bound_workers, check_int
    from her2scope.errors import ConfigError
    from her2scope.synth import make_cohort

    check_int("--patients", patients, 1, 100_000)
    check_int("--centers", centers, 1, 26)
    check_int("--seed", seed, 0, 2**32 - 1)
    check_int("--slide-px", slide_px, 512, 65536)
    workers = bound_workers("--workers", workers, patients) or 1
    taken = [n for n in COHORT_NAMES if (out / n).exists()]
    if taken:
        raise ConfigError(
            f"--out '{out}' already holds a cohort ({', '.join(taken)}); nothing was changed. "
            "Choose a new or empty folder, or delete the old cohort first"
        )
    # options not given are left out: make_cohort's defaults are the only ones
    given = {
        "n_patients": patients,
        "n_centers": centers,
        "seed": seed,
        "slide_px": slide_px,
        "labels": tuple(s.strip() for s in labels.split(",") if s.strip()) if labels else None,
    }
    with output_lock(out):
        manifest = make_cohort(
            out,
            cells=cells,
            masks=masks,
            workers=workers,
            **{k: v for k, v in given.items() if v is not None},  # type: ignore[arg-type]
        )
    typer.echo(f"wrote {manifest} (synthetic cohort; see cohort.json)")

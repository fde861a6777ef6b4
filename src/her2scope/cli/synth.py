"""``her2scope synth``: render the synthetic dual-centre HER2 IHC cohort."""

from __future__ import annotations

from pathlib import Path

import typer

#: What ``make_cohort`` writes into its folder: ``synth`` refuses a folder holding any of them.
COHORT_NAMES = ("manifest.csv", "cohort.json", "slides", "rois", "masks", "cells")


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to ``app``."""
    app.command(name="synth")(synth)


def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the cohort into."),
    patients: int = typer.Option(24, "--patients", help="Number of patients."),
    centers: int = typer.Option(2, "--centers", help="Number of centres (named A, B, …)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
    slide_px: int = typer.Option(
        None,
        "--slide-px",
        help="Level-0 side of each slide in px at 0.5 µm/px (default 4096: 2 mm, ~25 ROI tiles of 256 µm).",
    ),
    labels: str = typer.Option(
        "1+,2+,3+", "--labels", help="HER2 scores to draw, comma-separated (e.g. 0,1+,2+,3+)."
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
    from her2scope.synth import DEFAULT_SLIDE_PX, make_cohort

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
    with output_lock(out):
        manifest = make_cohort(
            out,
            n_patients=patients,
            n_centers=centers,
            seed=seed,
            slide_px=DEFAULT_SLIDE_PX if slide_px is None else slide_px,
            labels=tuple(s.strip() for s in labels.split(",") if s.strip()),
            cells=cells,
            masks=masks,
            workers=workers,
        )
    typer.echo(f"wrote {manifest} (synthetic cohort; see cohort.json)")

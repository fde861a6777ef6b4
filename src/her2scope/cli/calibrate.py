"""``her2scope calibrate``: fit a new centre's DAB-scale factor into a trained run (issue 11)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``calibrate`` command to ``app``."""
    app.command(name="calibrate")(calibrate)


def calibrate(
    run: Path = typer.Argument(..., help="Trained run folder (checkpoints/best.pt)."),
    manifest: Path = typer.Option(
        ...,
        "--manifest",
        help="Manifest CSV of the centre's calibration slides (slide_id, patient_id, center, "
        "label, slide_path[, roi_path][, mpp]); e.g. 2 labelled slides per class.",
    ),
    center: str = typer.Option(..., "--center", help="The centre's name (its 'center' value)."),
    unsupervised: bool = typer.Option(
        False,
        "--unsupervised",
        help="Ignore the labels and fit the factor from the centre's slides alone (see "
        "--unsupervised-method). Assumes a grade mix similar to the training centres'.",
    ),
    unsupervised_method: str = typer.Option(
        "grade-mix",
        "--unsupervised-method",
        help="With --unsupervised: 'grade-mix' (the factor at which the model's mean expected "
        "grade over the centre's slides equals the training slides' mean grade; needs a model "
        "whose score rises with DAB, e.g. trained with the DAB-order loss) or 'dab' (match the "
        "median slide DAB statistic to the training slides').",
    ),
    workers: int = typer.Option(1, "--workers", help="Worker processes reading tiles."),
) -> None:
    """Fit what a new centre needs (a DAB-scale factor, for a weaker or stronger assay) from a few of
    its slides and store it in RUN/site_calibration.json under the centre's name.

    Then `her2scope predict SLIDES --run RUN --center NAME` applies it and records it in each
    slide's JSON. Calibration slides must not be used to report the centre's performance. See
    docs/generalisation.md.
    """
    from her2scope._lock import output_lock
    from her2scope.cli._options import bound_workers
    from her2scope.scoring.site import UNSUPERVISED_METHODS, calibrate_site, site_file

    method = unsupervised_method.replace("-", "_")
    if method not in UNSUPERVISED_METHODS:
        raise typer.BadParameter(
            f"{unsupervised_method!r}: choose grade-mix or dab", param_hint="--unsupervised-method"
        )
    workers = bound_workers("--workers", workers, None) or 1
    with output_lock(run):
        rec = calibrate_site(
            run,
            manifest,
            center,
            unsupervised=unsupervised,
            workers=workers,
            unsupervised_method=method,
        )
    typer.echo(
        f"centre {center}: DAB × {rec['dab_scale']:.3f} ({rec['method']}, {rec['n_slides']} "
        f"slide(s)) → {site_file(run)}"
    )
    if "accuracy_at_1" in rec:
        typer.echo(
            f"  calibration slides: accuracy {rec['accuracy_at_1']:.2f} → {rec['accuracy']:.2f}, "
            f"NLL {rec['nll_at_1']:.3f} → {rec['nll']:.3f} (in-sample: not a performance estimate)"
        )
    if "train_mean_grade" in rec:
        typer.echo(
            f"  mean expected grade of the centre's slides at DAB × 1: "
            f"{rec['site_mean_grade_at_1']:.2f}; training slides' mean grade (matched): "
            f"{rec['train_mean_grade']:.2f}"
        )
    if "assumption" in rec:
        typer.echo(f"  assumption: {rec['assumption']}")

"""The ``her2scope`` command line.

Thin by design: each command parses its options, builds a config, and calls one stage function.
Heavy imports (torch, openslide, pandas) happen inside commands so ``her2scope --help`` is instant.
Each stage's commands live in their own module here and are registered below.
"""

from __future__ import annotations

import sys

import typer

from her2scope.cli import (
    calibrate,
    cells,
    evaluate,
    export,
    predict,
    run,
    stain,
    synth,
    tile,
    train,
)

app = typer.Typer(
    name="her2scope",
    help=(
        "Score HER2 IHC on breast-cancer whole-slide images with deep learning: tile slides and "
        "ROIs, normalise stains, train the study's six models with patient-level splits, evaluate "
        "on an external centre with honest statistics, explain with Grad-CAM, and score new slides."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        from her2scope import __version__

        typer.echo(f"her2scope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Score HER2 IHC on whole-slide images (see README.md for the quick start)."""


for _module in (synth, tile, stain, train, evaluate, predict, export, calibrate, cells, run):
    _module.register(app)


@app.command()
def version() -> None:
    """Print the her2scope version and the versions of the libraries it reads slides with."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _v

    from her2scope import __version__

    typer.echo(f"her2scope {__version__}")
    for pkg in ("torch", "torchvision", "openslide-python", "openslide-bin", "tiffslide"):
        try:
            typer.echo(f"  {pkg} {_v(pkg)}")
        except PackageNotFoundError:
            typer.echo(f"  {pkg} (not installed)")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Exit status: 0 done; 1 some items (slides, models) failed and were reported; 2 a user or
    environment error (bad option, config, manifest, input file; read-only folder, disk full;
    an output folder in use) printed as one message without a traceback; 130 interrupted
    (Ctrl-C). An unexpected exception is a bug: it is reported as such (exit 1) and its traceback
    is shown only with ``HER2SCOPE_DEBUG=1``.
    """
    import logging
    import os

    from her2scope._io import os_error_reason
    from her2scope.errors import Her2ScopeError

    # tifffile reports harmless quirks of a file (e.g. a missing tag) as log warnings; the
    # readers handle them, so the user does not need to see them.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    debug = os.environ.get("HER2SCOPE_DEBUG", "") not in ("", "0")
    try:
        # standalone mode: usage errors print with exit 2, Ctrl-C exits 130 (typer's handling)
        app(args=argv, standalone_mode=True)
    except Her2ScopeError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:  # raised outside the command (e.g. while importing)
        sys.exit(130)
    except Exception as exc:
        reason = os_error_reason(exc)
        if reason is not None and not debug:
            where = getattr(exc, "filename", None)
            typer.secho(
                f"error: {f'{where}: ' if where else ''}{reason}", fg=typer.colors.RED, err=True
            )
            sys.exit(2)
        if debug:
            raise
        from her2scope.errors import BUG_TYPES, describe_exception

        if isinstance(exc, BUG_TYPES):
            text = (
                "unexpected internal error in her2scope (a bug, not something you did); please "
                "report it with the command line. Re-run with HER2SCOPE_DEBUG=1 to see the details."
            )
        else:
            text = describe_exception(exc) + " (HER2SCOPE_DEBUG=1 shows the details)"
        typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()

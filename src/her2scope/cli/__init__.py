"""The ``her2scope`` command line.

Thin by design: each command parses its options, builds a config, and calls one stage function.
Heavy imports (torch, openslide, pandas) happen inside commands so ``her2scope --help`` is instant.
Each stage's commands live in their own module here and are registered below.
"""

from __future__ import annotations

import sys

import typer

from her2scope.cli import evaluate, predict, run, stain, synth, tile, train

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


@app.callback()
def _root() -> None:
    """Score HER2 IHC on whole-slide images (see README.md for the quick start)."""


for _module in (synth, tile, stain, train, evaluate, predict, run):
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
    """Console-script entry point: user errors print one clear message and exit with status 2."""
    from her2scope.errors import Her2ScopeError

    try:
        app(args=argv, standalone_mode=True)
    except Her2ScopeError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()

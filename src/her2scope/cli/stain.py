"""``her2scope stain``: fit per-slide stain parameters; show raw vs normalised tiles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from her2scope.cli._options import default_of

if TYPE_CHECKING:
    from her2scope.stain.config import StainConfig

stain_app = typer.Typer(help="IHC-aware Macenko stain normalisation (H + DAB). See docs/stain.md.")


def register(app: typer.Typer) -> None:
    """Add the ``stain`` command group to ``app``."""
    app.add_typer(stain_app, name="stain")


def _default(key: str) -> str:
    return default_of("her2scope.stain.config", "StainConfig", key)


def _config(
    config: Path | None, mode: str | None, fit_tiles: int | None, reference: Path | None
) -> StainConfig:
    """The 'stain' section of ``config`` (else the defaults) with the options given laid over it."""
    from her2scope.cli._options import overlay
    from her2scope.stain.config import StainConfig

    if config is not None:
        from her2scope.config import load_config

        base = load_config(config).stain
    else:
        base = StainConfig()
    given = {"mode": mode, "fit_tiles": fit_tiles, "reference": reference}
    options = {"mode": "--mode", "fit_tiles": "--fit-tiles", "reference": "--reference"}
    return overlay(base, given, options)


@stain_app.command("fit")
def fit(
    tiles_dir: Path = typer.Argument(..., help="Tiling output folder (tiles.parquet, slides/)."),
    config: Path = typer.Option(None, "--config", help="Run config YAML (its 'stain' section)."),
    mode: str = typer.Option(
        None,
        "--mode",
        help="preserve_dab, standard or none (stain.mode).",
        show_default=_default("mode"),
    ),
    fit_tiles: int = typer.Option(
        None,
        "--fit-tiles",
        help="Tiles sampled per slide for the fit (stain.fit_tiles).",
        show_default=_default("fit_tiles"),
    ),
    reference: Path = typer.Option(
        None,
        "--reference",
        help="Reference JSON written by fit_reference (stain.reference; null: the packaged one).",
        show_default=_default("reference"),
    ),
    workers: int = typer.Option(1, "--workers", help="Slides fitted in parallel processes."),
) -> None:
    """Fit each slide's H and DAB vectors on tiles pooled from it; store them in the sidecars.

    Exit status 1 when any slide failed (the others are still written).
    """
    from her2scope._lock import output_lock
    from her2scope.cli._options import bound_workers
    from her2scope.errors import ConfigError
    from her2scope.layout import TilesLayout
    from her2scope.stain.slides import fit_stains

    workers = bound_workers("--workers", workers, None) or 1
    if not TilesLayout(tiles_dir).table.is_file():
        raise ConfigError(
            f"'{tiles_dir}' has no tiles.parquet; give the --out folder of `her2scope tile`"
        )
    cfg = _config(config, mode, fit_tiles, reference)
    with output_lock(tiles_dir):
        res = fit_stains(tiles_dir, cfg, workers=workers)
    typer.echo(
        f"stain fit ({cfg.mode}): {len(res['fitted'])} slide(s) fitted, "
        f"{len(res['passthrough'])} passthrough (too little tissue), {len(res['failed'])} failed"
    )
    for sid in res["passthrough"]:
        typer.echo(f"  passthrough: {sid}")
    for sid, reason in res["failed"].items():
        typer.secho(f"  failed: {sid}: {reason}", fg=typer.colors.RED, err=True)
    if res["failed"]:
        raise typer.Exit(1)


@stain_app.command("show")
def show(
    slide_id: str = typer.Argument(..., help="Slide id (as in tiles.parquet)."),
    tiles: Path = typer.Option(..., "--tiles", help="Tiling output folder after `stain fit`."),
    out: Path = typer.Option(None, "--out", help="PNG to write (default TILES/stain_<id>.png)."),
    n: int = typer.Option(
        None,
        "--n",
        help="Number of tiles shown.",
        show_default=default_of("her2scope.stain.show", "show_slide", "n"),
    ),
    config: Path = typer.Option(None, "--config", help="Run config YAML (its 'stain' section)."),
    mode: str = typer.Option(
        None,
        "--mode",
        help="preserve_dab or standard (stain.mode).",
        show_default=_default("mode"),
    ),
) -> None:
    """Write a PNG: raw tiles, normalised tiles, and the H and DAB concentration channels."""
    from her2scope.cli._options import check_int
    from her2scope.stain.show import show_slide

    check_int("--n", n, 1, 64)
    if out is not None and out.suffix.lower() != ".png":
        from her2scope.errors import ConfigError

        raise ConfigError(
            f"--out '{out}': give a .png file name (a picture is written there; any other "
            "name could be one of your files)"
        )
    cfg = _config(config, mode, None, None)
    path = show_slide(tiles, slide_id, cfg, out, **({} if n is None else {"n": n}))
    typer.echo(f"wrote {path}")

"""``her2scope tile``: cut slides into tiles (coordinates in ``tiles.parquet``)."""

from __future__ import annotations

from pathlib import Path

import typer

from her2scope.cli._options import default_of


def _default(key: str) -> str:
    return default_of("her2scope.tiling.config", "TilingConfig", key)


def register(app: typer.Typer) -> None:
    """Add the ``tile`` command to ``app``."""
    app.command(name="tile")(tile)


def tile(
    inputs: list[Path] = typer.Argument(
        ...,
        help="A manifest CSV (slide_id, patient_id, center, label, slide_path[, roi_path][, mpp]; "
        "paths relative to it), or one or more slide files.",
        show_default=False,
        metavar="MANIFEST_OR_SLIDES...",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (tiles.parquet, slides/, qc/)."),
    config: Path = typer.Option(
        None,
        "--config",
        help="Run config YAML: its 'tiling' section (and cohort.allow_absolute_paths) is used; "
        "the options below override single settings.",
    ),
    rois: Path = typer.Option(
        None,
        "--rois",
        help="With slide paths: folder of ROI files named after the slides "
        "(<stem>.geojson / .json / .xml). Slides without one are tiled on their tissue mask.",
    ),
    mpp: float = typer.Option(
        None,
        "--mpp",
        help="µm/px at level 0 for slides whose file has none (and no 'mpp' manifest column).",
    ),
    tile_px: int = typer.Option(
        None,
        "--tile-px",
        help="Side of a tile in output pixels (tiling.tile_px).",
        show_default=_default("tile_px"),
    ),
    target_mpp: float = typer.Option(
        None,
        "--target-mpp",
        help="µm/px of the tiles (read from the best pyramid level and resized), between 0.05 "
        "and 1000 (tiling.target_mpp; null: each slide's own level-0 µm/px).",
        show_default=_default("target_mpp"),
    ),
    max_white: float = typer.Option(
        None,
        "--max-white",
        help="Drop a tile whose white fraction is above this, 0-1 (tiling.max_white).",
        show_default=_default("max_white"),
    ),
    white_level: int = typer.Option(
        None,
        "--white-level",
        help="A pixel is white when R, G and B are all above this, 0-255 (tiling.white_level).",
        show_default=_default("white_level"),
    ),
    roi_rule: str = typer.Option(
        None,
        "--roi-rule",
        help="Keep a tile when its centre lies in the ROI ('centre') or when the ROI covers at "
        "least --min-roi-cover of it ('coverage') (tiling.roi_rule).",
        show_default=_default("roi_rule"),
    ),
    min_roi_cover: float = typer.Option(
        None,
        "--min-roi-cover",
        help="Coverage needed by --roi-rule coverage, (0, 1] (tiling.min_roi_cover).",
        show_default=_default("min_roi_cover"),
    ),
    roi_classes: str = typer.Option(
        None,
        "--roi-classes",
        help="Only ROIs of these classes, comma-separated, e.g. Tumor (tiling.roi_classes; "
        "null: every ROI).",
        show_default=_default("roi_classes"),
    ),
    workers: int = typer.Option(1, "--workers", help="Worker processes reading tiles."),
    export_tiles: bool = typer.Option(
        False, "--export-tiles", help="Also write every kept tile as PNG under OUT/tiles/."
    ),
    reader: str = typer.Option(
        None,
        "--reader",
        help="Slide reader: auto, openslide, tiffslide or image (tiling.reader).",
        show_default=_default("reader"),
    ),
    allow_absolute_paths: bool = typer.Option(
        None,
        "--allow-absolute-paths",
        help="Accept manifest paths that are absolute or leave the manifest's folder "
        "(cohort.allow_absolute_paths).",
        show_default=False,
    ),
) -> None:
    """Tile slides inside their ROIs (or tissue), dropping tiles with too much white background.

    Writes OUT/tiles.parquet (one row per kept tile: where it is, not its pixels), OUT/slides/<slide_id>.json (µm/px, tiles kept and dropped), OUT/qc/<slide_id>.png (ROI outline and kept tiles) and OUT/tiling_report.json.

    A slide that fails is reported with its reason and the others go on; the exit status is 1 when any slide failed. See docs/tiling.md.
    """
    from her2scope._lock import output_lock
    from her2scope.cli._options import bound_workers, check_int, check_mpp, overlay
    from her2scope.errors import ConfigError
    from her2scope.tiling.config import TilingConfig
    from her2scope.tiling.extract import entries_from_paths, read_tiling_manifest, tile_entries

    check_mpp("--mpp", mpp)
    check_int("--workers", workers, 0)  # bounded by the CPUs below
    base = TilingConfig()
    if config is not None:
        from her2scope.config import load_config

        run_cfg = load_config(config)
        base = run_cfg.tiling
        if allow_absolute_paths is None:
            allow_absolute_paths = run_cfg.cohort.allow_absolute_paths
    # every setting has one default, TilingConfig's; the options given are laid over it
    cfg = overlay(
        base,
        {
            "tile_px": tile_px,
            "target_mpp": target_mpp,
            "max_white": max_white,
            "white_level": white_level,
            "roi_rule": roi_rule,
            "min_roi_cover": min_roi_cover,
            "roi_classes": roi_classes,
            "reader": reader,
        },
        _OPTIONS,
    )
    csvs = [p for p in inputs if p.suffix.lower() == ".csv"]
    if csvs:
        if len(inputs) != 1:
            raise ConfigError("give either one manifest CSV or slide files, not both")
        if rois is not None:
            raise ConfigError("--rois is for slide paths; a manifest names ROIs in 'roi_path'")
        entries = read_tiling_manifest(csvs[0], allow_absolute=bool(allow_absolute_paths))
        for e in entries:
            e.mpp = e.mpp if e.mpp is not None else mpp
    else:
        if rois is not None and not rois.is_dir():
            raise ConfigError(f"--rois '{rois}' is not a folder")
        entries = entries_from_paths(inputs, rois, mpp)
    workers = bound_workers("--workers", workers) or 1  # a slide's tiles are split over them
    with output_lock(out):
        report = tile_entries(entries, out, cfg, workers=workers, export_tiles=export_tiles)
    _print_summary(report)
    if report.failures:
        typer.secho(
            f"{len(report.failures)} of {len(report.slides)} slide(s) failed:",
            fg=typer.colors.RED,
            err=True,
        )
        for f in report.failures:  # whole reasons, one line each (the table folds long ones)
            typer.secho(f"  {f['slide_id']}: {f['reason']}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def _print_summary(report: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from her2scope.tiling.extract import COUNT_KEYS

    table = Table(title=f"tiling: {report.n_tiles} tiles → {report.tiles_path}")  # type: ignore[attr-defined]
    for col in ("slide", "status", "grid", "kept", "white", "outside ROI", "read errors", "note"):
        table.add_column(col, overflow="fold")
    for r in report.slides:  # type: ignore[attr-defined]
        if r["status"] == "ok":
            note = f"{r['warnings']} warning(s), see sidecar" if r["warnings"] else ""
            table.add_row(
                r["slide_id"],
                "ok",
                *(str(r[k]) for k in COUNT_KEYS),
                note,
            )
        else:
            table.add_row(r["slide_id"], "[red]FAILED[/red]", "", "", "", "", "", r["reason"])
    Console(width=160).print(table)


#: CLI option of each tiling setting, for error messages.
_OPTIONS = {
    "tile_px": "--tile-px",
    "target_mpp": "--target-mpp",
    "max_white": "--max-white",
    "white_level": "--white-level",
    "min_roi_cover": "--min-roi-cover",
    "roi_classes": "--roi-classes",
    "roi_rule": "--roi-rule",
    "reader": "--reader",
}

"""``her2scope cells``: cell-level HER2 membrane scoring by the ASCO/CAP rules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from her2scope.cli._options import default_of

if TYPE_CHECKING:
    from her2scope.cells.config import CellConfig


def register(app: typer.Typer) -> None:
    """Add the ``cells`` and ``cells-fit`` commands to ``app``."""
    app.command(name="cells")(cells)
    app.command(name="cells-fit")(cells_fit)


def _overrides(items: list[str] | None) -> dict[str, str]:
    from her2scope.errors import ConfigError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("cells.")
        if not sep or not key:
            raise ConfigError(f"setting '{item}': use KEY=VALUE, e.g. od_strong=0.5")
        out[key] = value.strip()
    return out


def build_config(
    settings: list[str] | None,
    dab_scale: float | None,
    target_mpp: float | None,
    noise_od: float | None = None,
) -> CellConfig:
    """A :class:`CellConfig` from ``KEY=VALUE`` settings (YAML values) and the explicit options."""
    import difflib

    import yaml

    from her2scope._configbase import field_names
    from her2scope.cells.config import CellConfig
    from her2scope.cli._options import overlay
    from her2scope.errors import ConfigError

    known = sorted(field_names(CellConfig))
    given: dict[str, object] = {}
    for key, raw in _overrides(settings).items():
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(
                f"unknown cells setting '{key}'"
                + (f"; did you mean '{near[0]}'?" if near else "")
                + f"; known: {', '.join(known)}"
            )
        try:
            given[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"cells setting {key}={raw!r}: not a value") from None
    if dab_scale is not None:
        given["dab_scale"] = dab_scale
    if target_mpp is not None:
        given["target_mpp"] = target_mpp
    if noise_od is not None:
        given["center_noise_od"] = noise_od
    return overlay(
        CellConfig(),
        given,
        {"dab_scale": "--dab-scale", "target_mpp": "--target-mpp", "center_noise_od": "--noise-od"},
    )


def _fitted(path: Path, center: str) -> tuple[float, float | None]:
    """``(dab_scale, noise floor)`` of ``center`` in a ``cells_fit.json`` (``her2scope cells-fit``)."""
    import json

    from her2scope.errors import ConfigError

    try:
        centres = json.loads(path.read_text(encoding="utf-8"))["centers"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"--calibration '{path}': not a cells_fit.json of `her2scope cells-fit` ({exc})"
        ) from None
    if center not in centres:
        raise ConfigError(
            f"--calibration '{path}': no centre {center!r} (centres: {', '.join(sorted(centres))})"
        )
    rec = centres[center]
    return float(rec["dab_scale"]), rec.get("noise_od")


def _default(key: str) -> str:
    return default_of("her2scope.cells.config", "CellConfig", key)


def cells(
    slides: list[Path] = typer.Argument(
        ..., help="Slide files to analyse.", show_default=False, metavar="SLIDE..."
    ),
    roi: Path = typer.Option(
        None,
        "--roi",
        help="ROI file (one slide) or folder of <slide_id>.geojson/.json/.xml. Default: whole slide.",
    ),
    out: Path = typer.Option(Path("cells"), "--out", help="Output folder."),
    tiles: Path = typer.Option(
        None,
        "--tiles",
        help="Tiling folder whose slides/<slide_id>.json holds `stain fit` vectors. Default: "
        "fit the stain vectors on the slide itself.",
    ),
    workers: int = typer.Option(1, "--workers", help="Slides analysed in parallel processes."),
    mpp: float = typer.Option(
        None, "--mpp", help="µm/px at level 0 for slides whose file has none."
    ),
    target_mpp: float = typer.Option(
        None,
        "--target-mpp",
        help="µm/px to analyse at (cells.target_mpp).",
        show_default=_default("target_mpp"),
    ),
    dab_scale: float = typer.Option(
        None,
        "--dab-scale",
        help="Per-centre factor on measured DAB OD, from `her2scope cells fit` (cells.dab_scale).",
        show_default=_default("dab_scale"),
    ),
    site_run: Path = typer.Option(
        None,
        "--site-run",
        help="Take --dab-scale from RUN/site_calibration.json (`her2scope calibrate`) for --center.",
    ),
    noise_od: float = typer.Option(
        None,
        "--noise-od",
        help="This centre's noise floor (membrane OD of unstained membranes), from `her2scope "
        "cells-fit` (cells.center_noise_od). Default: cells.dab_noise_od.",
    ),
    calibration: Path = typer.Option(
        None,
        "--calibration",
        help="Take --dab-scale and --noise-od for --center from a cells_fit.json (`cells-fit`).",
    ),
    center: str = typer.Option(
        None,
        "--center",
        help="The slides' centre: its values in --site-run or --calibration; with "
        "cells.stain_scope=center its slides share one stain fit.",
    ),
    predict_dir: Path = typer.Option(
        None,
        "--predict",
        help="Output folder of `her2scope predict` for these slides: reconcile the CNN call with "
        "the cell call (review flag, cells_agreement.json).",
    ),
    settings: list[str] = typer.Option(
        None,
        "--set",
        help="Any CellConfig value, KEY=VALUE (repeatable), e.g. --set od_strong=0.5.",
    ),
) -> None:
    """Find nuclei and membranes, class every cell and call each slide by the ASCO/CAP rules.

    Per slide writes OUT/<slide_id>.cells.parquet (one row per cell: level-0 x, y, nucleus area
    µm², membrane DAB OD mean/p90, completeness, class), OUT/<slide_id>.cells.json (call, rule
    that fired, % of cells per class, H-score), OUT/<slide_id>.cells.geojson (QuPath cells:
    File → Import objects) and OUT/<slide_id>.cells.png (overlay); and OUT/cells_summary.csv.
    A failing slide is reported at the end and the others go on (exit status 1). Research
    software, not a medical device. See docs/cells.md.
    """
    from her2scope._lock import output_lock
    from her2scope.cells.slide import run_cells
    from her2scope.cli._options import bound_workers, check_mpp
    from her2scope.errors import ConfigError

    if site_run is not None and calibration is not None:
        raise ConfigError("give either --site-run or --calibration, not both")
    source = site_run if site_run is not None else calibration
    if source is not None:
        opt = "--site-run" if site_run is not None else "--calibration"
        if center is None:
            raise ConfigError(f"{opt} needs --center (the centre's name in '{source}')")
        if dab_scale is not None:
            raise ConfigError(f"give either --dab-scale or {opt}/--center, not both")
    if site_run is not None:
        from her2scope.scoring.site import site_record

        dab_scale = float(site_record(site_run, center)["dab_scale"])
        typer.echo(f"centre {center}: dab_scale {dab_scale:.3f} from {site_run}")
    if calibration is not None:
        if noise_od is not None:
            raise ConfigError("give either --noise-od or --calibration/--center, not both")
        dab_scale, noise_od = _fitted(calibration, center)
        floor = "dab_noise_od" if noise_od is None else f"{noise_od:.4f}"
        typer.echo(
            f"centre {center}: dab_scale {dab_scale:.4f}, noise floor {floor} from {calibration}"
        )
    cfg = build_config(settings, dab_scale, target_mpp, noise_od)
    check_mpp("--mpp", mpp)
    workers = bound_workers("--workers", workers, len(slides)) or 1
    with output_lock(out):
        report = run_cells(
            slides,
            out,
            rois=roi,
            cfg=cfg,
            tiles_dir=tiles,
            workers=workers,
            mpp=mpp,
            predict_dir=predict_dir,
            center=center,
        )
    s = report.summary
    ok = s[s["status"] == "ok"]
    for _, r in ok.iterrows():
        flag = "  (borderline)" if bool(r["borderline"]) else ""
        if predict_dir is not None and r.get("review") is True:
            flag += f"  REVIEW: CNN says {r.get('cnn_score')}"
        typer.echo(f"{r['slide_id']}: {r['call']} — {r['n_cells']} cells — {r['rule']}{flag}")
    typer.echo(f"{len(ok)}/{len(s)} slide(s) analysed; summary: {report.summary_path}")
    if predict_dir is not None:
        import json

        from her2scope.layout import CELLS_AGREEMENT_JSON

        agree = json.loads((out / CELLS_AGREEMENT_JSON).read_text(encoding="utf-8"))
        k = agree["kappa_quadratic"]
        typer.echo(
            f"CNN vs cell rules: {agree['n_slides']} slide(s) compared, "
            f"agreement {agree['agreement'] if agree['agreement'] is None else round(agree['agreement'], 3)}, "
            f"κ {k if k is None else round(k, 3)}, {agree['n_review']} to review"
        )
    if report.failures:
        typer.secho(f"{len(report.failures)} slide(s) failed:", fg=typer.colors.RED, err=True)
        for path, msg in report.failures:
            typer.secho(f"  {path}: {msg}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def cells_fit(
    manifest: Path = typer.Argument(
        ..., help="Manifest CSV of labelled slides (slide_id, center, label).", show_default=False
    ),
    cells_dir: Path = typer.Option(
        ..., "--cells", help="Folder of <slide_id>.cells.parquet from `her2scope cells score`."
    ),
    out: Path = typer.Option(
        None, "--out", help="JSON file for the fitted values. Default: CELLS/cells_fit.json."
    ),
    settings: list[str] = typer.Option(
        None, "--set", help="Thresholds to call with, KEY=VALUE (default: the current defaults)."
    ),
) -> None:
    """Fit a DAB-scale factor per centre so that the cell-rule calls agree with the labels.

    Reads each slide's cell table (as scored, with the settings recorded in its
    <slide_id>.cells.json), searches the factor that maximises the quadratic κ between calls and
    manifest labels per centre (the middle of the best plateau, so the value has a margin), and
    writes the fitted values with the κ before and after; each centre's noise floor is the 90th
    percentile of its HER2-0 slides' membrane OD. Apply them with
    `her2scope cells --calibration cells_fit.json --center NAME`.
    """
    from her2scope.cells.fit import fit_dab_scale

    result = fit_dab_scale(manifest, cells_dir, out, cfg=build_config(settings, None, None))
    for centre, r in result["centers"].items():
        floor = "" if r["noise_od"] is None else f", noise floor {r['noise_od']:.4f}"
        typer.echo(
            f"centre {centre}: dab_scale {r['dab_scale']:.3f}{floor} "
            f"(κ {r['kappa_before']:.3f} → {r['kappa_after']:.3f}, {r['n_slides']} slides)"
        )
    typer.echo(f"wrote {result['path']}")

"""``her2scope train``: train one or more models on a tiled cohort (single process or torchrun)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""
    app.command(name="train")(train)


def train(
    overrides: list[str] = typer.Argument(
        None,
        help="Config overrides as section.key=value, e.g. train.epochs=3 stain.mode=none.",
        show_default=False,
        metavar="[KEY=VALUE]...",
    ),
    config: Path = typer.Option(
        None, "--config", help="Run config YAML (see configs/study.yaml). Not needed with --resume."
    ),
    tiles: Path = typer.Option(
        None, "--tiles", help="Tiles folder from `her2scope tile` (default: <out_dir>/tiles)."
    ),
    out: Path = typer.Option(
        None, "--out", help="Folder for the run folders, one per model (default: <out_dir>/runs)."
    ),
    models: str = typer.Option(
        None,
        "--models",
        help="Comma-separated models, e.g. alexnet,vgg16, or 'all' for the study's six "
        "(default: train.models).",
    ),
    resume: Path = typer.Option(
        None, "--resume", help="A run folder to continue from its checkpoints/last.pt."
    ),
    deterministic: bool = typer.Option(
        False, "--deterministic", help="Deterministic algorithms (slower on GPU)."
    ),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: auto)."),
) -> None:
    """Train the study's models with patient-level splits; one run folder per model.

    Each run folder holds config.yaml (resolved), splits.csv, checkpoints/best.pt and last.pt, and metrics.jsonl.

    Several GPUs or nodes: launch with `torchrun --nproc_per_node N -m her2scope train ...`. See docs/training.md.
    """
    import json
    import logging

    from her2scope._lock import output_lock
    from her2scope.cli._options import check_device, setup_logging
    from her2scope.config import load_config
    from her2scope.engine.checkpoint import load_checkpoint
    from her2scope.engine.loco import train_model_or_folds
    from her2scope.engine.train import train_model
    from her2scope.errors import ConfigError
    from her2scope.layout import OutLayout, RunLayout, run_dir_name

    setup_logging()
    log = logging.getLogger("her2scope.train")
    check_device("--device", device)
    overrides = list(overrides or [])
    if deterministic:
        overrides.append("train.deterministic=true")

    if resume is not None:
        ckpt_path, cfg_path = RunLayout(resume).last, RunLayout(resume).config
        if not cfg_path.is_file():
            raise ConfigError(f"cannot resume '{resume}': no config.yaml there")
        # every problem of the config, the files it names and the manifest, before any work
        cfg = load_config(cfg_path, overrides, validate=True)
        with output_lock(resume):
            ckpt = load_checkpoint(ckpt_path)
            tiles_dir = tiles or Path(ckpt["tiles_dir"])
            train_model(cfg, ckpt["model_name"], tiles_dir, resume, resume=True, device=device)
        typer.echo(f"resumed and finished: {resume}")
        return

    if config is None:
        raise ConfigError("give --config CONFIG.yaml (or --resume RUN_DIR)")
    if models is not None:  # laid over train.models, and checked with everything else
        names = [m.strip() for m in models.split(",") if m.strip()]
        if names == ["all"]:
            from her2scope.models import list_models

            names = list(list_models())
        overrides.append(f"train.models={json.dumps(names)}")
    # every problem of the config, the files it names and the manifest, before any work
    cfg = load_config(config, overrides, validate=True)
    names = list(cfg.train.models)
    tiles_dir = tiles or OutLayout(Path(cfg.out_dir)).tiles.root
    runs_root = out or OutLayout(Path(cfg.out_dir)).runs_dir
    failed: list[str] = []
    with output_lock(runs_root):
        for name in names:
            run_dir = runs_root / run_dir_name(name)
            try:
                for done in train_model_or_folds(cfg, name, tiles_dir, run_dir, device=device):
                    typer.echo(f"{name}: {done}")
            except ConfigError:
                raise
            except Exception as exc:  # one model failing does not stop the others
                if len(names) == 1:
                    raise
                log.error("%s failed: %s", name, _reason(exc))
                failed.append(name)
    if failed:
        typer.secho(f"failed: {', '.join(failed)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def _reason(exc: BaseException) -> str:
    from her2scope.errors import describe_exception

    return describe_exception(exc)

"""The training loop: :func:`train_model`, in three readable steps.

1. :func:`prepare_data` reads ``tiles_dir/tiles.parquet``, labels slides (from the manifest, or the
   tile table), splits patients (or reloads the run's ``splits.csv``) and builds the datasets;
2. :func:`build_training` makes the model, optimiser (AdamW/SGD), warm-up + cosine schedule per
   optimiser step, loss (optional label smoothing and class balancing) and augmentation;
3. :func:`train_model` runs the epochs: :func:`train_one_epoch`, validation, early stopping on
   validation macro-AUC (:mod:`her2scope.evaluate.metrics`), checkpoints.

AMP on CUDA; works alone or under ``torchrun`` (DDP). Loader processes and torch threads are
chosen together from the cores (:mod:`her2scope.engine.cpu_plan`).

Reproducibility: every epoch reseeds torch/numpy/python from ``(seed, epoch, rank)`` and draws its
sample order from a generator seeded the same way, so a run resumed from ``last.pt`` repeats the
epochs it missed exactly as an uninterrupted run would (no RNG state needs saving).

Run directory: ``config.yaml``, ``splits.csv``, ``checkpoints/{best,last}.pt``, ``metrics.jsonl``,
``provenance.json`` (weights actually loaded, training tile µm/px; :mod:`her2scope.engine.runinfo`)
and ``calibration.json`` (temperature and reflex policy fitted on validation after training;
:mod:`her2scope.evaluate.calibration`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from her2scope._io import write_json, write_text
from her2scope._progress import track
from her2scope.config import RunConfig, dump_config
from her2scope.engine.cpu_plan import CpuPlan, plan_cpu, torch_threads
from her2scope.engine.distributed import DistInfo
from her2scope.errors import ConfigError, Her2ScopeError, ManifestError
from her2scope.labels import get_scheme
from her2scope.layout import RunLayout, TilesLayout
from her2scope.tiling.table import LABEL_COLUMNS, PIXEL_COLUMNS

log = logging.getLogger(__name__)

#: Columns training needs in ``tiles.parquet``.
TRAIN_COLUMNS: tuple[str, ...] = (*PIXEL_COLUMNS, *LABEL_COLUMNS)


@dataclass
class TrainData:
    """The tiles of one run, split and labelled, and their datasets."""

    classes: tuple[str, ...]
    train_df: pd.DataFrame
    val_df: pd.DataFrame
    train_ds: Any  # TileDataset
    val_ds: Any
    normalizers: dict[str, Any]
    missing_val: list[str]  # classes absent from validation


@dataclass
class Trainer:
    """The model and everything that updates it."""

    model: nn.Module  # the bare model (checkpoints, validation)
    net: nn.Module  # what the training step calls: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    augment: Any
    mean: torch.Tensor  # [1, 3, 1, 1] on the device
    std: torch.Tensor
    channels_last: bool
    precision: str  # resolved: "fp32", "bf16" or "fp16"
    dab_order: Any = None  # her2scope.engine.dab_order.DabOrderLoss, or None


def train_model(
    cfg: RunConfig,
    model_name: str,
    tiles_dir: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    device: str | None = None,
) -> Path:
    """Train ``model_name`` on the tiles of ``tiles_dir`` into ``run_dir``; return ``run_dir``.

    ``resume=True`` continues from ``run_dir/checkpoints/last.pt`` (its splits and config; the
    model name must match). Under ``torchrun`` each process trains on its share of every epoch
    and rank 0 alone writes files. Raises ``ConfigError`` / ``ManifestError`` for bad inputs.
    """
    from her2scope.engine.distributed import init_distributed

    dist = init_distributed(device)
    plan = plan_cpu(
        cfg.train.workers,
        dist.device.type,
        processes_per_node=_local_world_size(dist),
    )
    log.info(
        "%d loader process(es), %d torch thread(s) on %d core(s): %s",
        plan.loader_workers, plan.torch_threads, plan.cores, plan.why,
    )  # fmt: skip
    with torch_threads(plan.torch_threads):
        return _train(cfg, model_name, Path(tiles_dir), Path(run_dir), resume, dist, plan)


def _train(
    cfg: RunConfig,
    model_name: str,
    tiles_dir: Path,
    run_dir: Path,
    resume: bool,
    dist: DistInfo,
    plan: CpuPlan,
) -> Path:
    from her2scope.data.dataset import seed_worker
    from her2scope.engine.checkpoint import save_checkpoint
    from her2scope.engine.distributed import (
        all_gather_objects,
        barrier,
        broadcast_object,
        sync_buffers,
    )
    from her2scope.engine.seed import seed_everything, set_deterministic

    tcfg = cfg.train
    layout = RunLayout(run_dir)
    set_deterministic(tcfg.deterministic)
    seed_everything(cfg.seed)

    ckpt = _resume_checkpoint(layout, model_name) if resume else None
    start_epoch = int(ckpt["epoch"]) if ckpt is not None else 0
    data = prepare_data(cfg, tiles_dir, run_dir, resume=resume, write=dist.is_main)
    dev = dist.device
    with _WeightsNotice() as notice:
        tr = build_training(
            tcfg,
            model_name,
            data,
            dev,
            world_size=dist.world_size,
            pretrained=False if resume else tcfg.pretrained,
            distributed=dist.distributed,
            augment=_make_augment(cfg) if tcfg.augment else None,
        )
    if dist.is_main and not (resume and layout.provenance.is_file()):
        write_json(
            layout.provenance,
            {
                "weights": weights_record(model_name, tcfg.pretrained, notice.fell_back),
                "train_tile_mpp": _median_mpp(data.train_df),
                "tiles_dir": str(tiles_dir.resolve()),
            },
        )
    state, metrics = _restore(tr, ckpt, layout)

    def save(path: Path, epoch: int, full: bool = True) -> None:
        # best.pt is for inference: model only; last.pt also carries what resuming needs
        save_checkpoint(
            path,
            model=tr.model,
            model_name=model_name,
            classes=data.classes,
            config=cfg,
            input_px=tcfg.input_px,
            tiles_dir=tiles_dir.resolve(),
            epoch=epoch,
            optimizer=tr.optimizer if full else None,
            scheduler=tr.scheduler if full else None,
            scaler=tr.scaler if full and tr.scaler.is_enabled() else None,
            train_state=state,
        )

    for epoch in range(start_epoch, tcfg.epochs):
        if state["bad_epochs"] >= tcfg.early_stop_patience:
            break
        seed_everything(_epoch_seed(cfg.seed, epoch, dist.rank))
        loader = _train_loader(
            data.train_ds, tcfg, cfg.seed, epoch, dist, seed_worker, plan.loader_workers
        )
        t0 = time.perf_counter()
        loss_sum, n_seen = train_one_epoch(
            tr, loader, tcfg.grad_accum, dev,
            desc=f"{model_name} epoch {epoch + 1}/{tcfg.epochs}", show=dist.is_main,
        )  # fmt: skip
        elapsed = time.perf_counter() - t0
        totals = all_gather_objects(dist, (loss_sum, n_seen))
        train_loss = sum(t[0] for t in totals) / max(1, sum(t[1] for t in totals))
        images = sum(t[1] for t in totals)

        sync_buffers(dist, tr.model)  # every rank evaluates with rank 0's BatchNorm statistics
        val = _validate(tr, data.val_ds, tcfg.batch_size, plan.loader_workers, dev, dist)
        if dist.is_main:
            row = {
                "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"],
                "val_macro_auc": val["auc"], "val_classes_missing": data.missing_val,
                "lr": tr.optimizer.param_groups[0]["lr"],
                "images_per_s": images / elapsed if elapsed > 0 else None,
                "train_images": images, "val_images": len(data.val_ds),
            }  # fmt: skip
            metrics.append(row)
            improved = _update_early_stopping(state, val, epoch + 1)
            write_text(
                layout.metrics,
                "".join(json.dumps(m, allow_nan=False) + "\n" for m in metrics),
            )
            if improved:
                save(layout.best, epoch + 1, full=False)
            save(layout.last, epoch + 1)
            log.info(
                "%s epoch %d: train loss %.4f, val loss %s, val macro-AUC %s, %.1f images/s",
                model_name, epoch + 1, train_loss, _fmt(val["loss"]), _fmt(val["auc"]),
                row["images_per_s"] or 0.0,
            )  # fmt: skip
        state = broadcast_object(dist, state)
        barrier(dist)
    if dist.is_main and not layout.best.is_file() and layout.last.is_file():
        import shutil

        shutil.copyfile(layout.last, layout.best)
    if dist.is_main and not data.val_df.empty and layout.best.is_file():
        _write_calibration(run_dir, data.val_df, data.normalizers, data.classes, cfg)
    barrier(dist)
    return run_dir


def _resume_checkpoint(layout: RunLayout, model_name: str) -> dict[str, Any]:
    """The run's ``last.pt``, refused when it trains another model."""
    from her2scope.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(layout.last)
    if ckpt["model_name"] != model_name:
        raise ConfigError(
            f"cannot resume '{layout.root}': it trains '{ckpt['model_name']}', not '{model_name}'"
        )
    return ckpt


def _restore(
    tr: Trainer, ckpt: dict[str, Any] | None, layout: RunLayout
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Early-stopping state and the metrics rows so far: fresh, or restored (with the model,
    optimiser, schedule and grad scaler) from a resumed checkpoint."""
    state: dict[str, Any] = {"best": None, "best_epoch": 0, "bad_epochs": 0, "monitor": ""}
    if ckpt is None:
        return state, []
    tr.model.load_state_dict(ckpt["model_state"])
    tr.optimizer.load_state_dict(ckpt["optimizer_state"])
    tr.scheduler.load_state_dict(ckpt["scheduler_state"])
    if ckpt.get("scaler_state"):
        tr.scaler.load_state_dict(ckpt["scaler_state"])
    state.update(ckpt["train_state"])
    log.info("resuming %s from epoch %d", layout.root, int(ckpt["epoch"]))
    return state, _read_metrics(layout.metrics)[: int(ckpt["epoch"])]


def prepare_data(
    cfg: RunConfig, tiles_dir: Path, run_dir: Path, *, resume: bool, write: bool
) -> TrainData:
    """Tiles, labels, splits and datasets of a run (step 1).

    Splits are made from ``cfg.cohort`` (or reloaded from ``run_dir/splits.csv`` on resume);
    ``write`` (rank 0) writes ``config.yaml`` and ``splits.csv`` into ``run_dir``.
    """
    from her2scope.cohort import check_no_leakage, make_splits, read_splits, write_splits
    from her2scope.data.dataset import TileDataset
    from her2scope.stain import load_normalizers

    tcfg = cfg.train
    scheme = get_scheme(cfg.cohort.label_scheme)
    classes = scheme.classes
    tiles = _read_tiles(tiles_dir, cfg, scheme)
    slides = tiles.drop_duplicates("slide_id")[["slide_id", "patient_id", "center", "label"]]
    layout = RunLayout(run_dir)
    if resume and layout.splits.is_file():
        splits = read_splits(layout.splits)
        check_no_leakage(splits)
    else:
        splits = make_splits(slides, cfg.cohort)
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, layout.config)
        write_splits(splits, layout.splits)
        _log_split_table(splits, tiles, classes)
    split_of = dict(zip(splits["slide_id"], splits["split"], strict=True))
    tiles["split"] = tiles["slide_id"].map(split_of)
    tiles = _cap_tiles_per_slide(tiles, tcfg.max_tiles_per_slide, cfg.seed)
    train_df = tiles[tiles["split"] == "train"].reset_index(drop=True)
    val_df = tiles[tiles["split"] == "val"].reset_index(drop=True)
    if train_df.empty:
        raise ConfigError("the training split has no tiles; check the splits and tiling")
    normalizers = dict(load_normalizers(tiles_dir, cfg.stain))  # {} for stain.mode=none
    train_ds = TileDataset(train_df, tcfg.input_px, normalizers, train_df["label_idx"].to_numpy())
    val_ds = TileDataset(val_df, tcfg.input_px, normalizers, val_df["label_idx"].to_numpy())
    missing_val = [c for i, c in enumerate(classes) if not (val_ds.labels == i).any()]
    if val_df.empty:
        log.warning("no validation tiles: the last epoch's model is kept as best.pt")
    elif missing_val:
        log.warning(
            "validation lacks class(es) %s: macro-AUC is not computed; early stopping and "
            "best.pt use validation loss instead",
            ", ".join(missing_val),
        )
    return TrainData(classes, train_df, val_df, train_ds, val_ds, normalizers, missing_val)


def build_training(
    tcfg: Any,
    model_name: str,
    data: TrainData,
    dev: torch.device,
    *,
    world_size: int = 1,
    pretrained: Any = False,
    distributed: bool = False,
    augment: Any = None,
) -> Trainer:
    """Model, optimiser, schedule, loss and precision for ``tcfg`` (step 2)."""
    from her2scope.models import create_model, model_preprocessing

    n_classes = len(data.classes)
    model = create_model(
        model_name,
        n_classes,
        pretrained=pretrained,
        input_px=tcfg.input_px,
        objective=tcfg.objective,
    ).to(dev)
    channels_last = tcfg.channels_last and dev.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = (
        torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in model_preprocessing(model_name)
    )
    net: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = _make_optimizer(model, tcfg)
    per_rank = math.ceil(len(data.train_ds) / world_size)
    steps_per_epoch = max(1, math.ceil(math.ceil(per_rank / tcfg.batch_size) / tcfg.grad_accum))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        WarmupCosine(tcfg.warmup_epochs * steps_per_epoch, tcfg.epochs * steps_per_epoch),
    )
    precision = _resolve_precision(tcfg.precision, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    class_weights = None
    if tcfg.balance == "loss":
        counts = np.bincount(data.train_ds.labels, minlength=n_classes).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
        class_weights = torch.tensor(w, dtype=torch.float32, device=dev)
    criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=tcfg.label_smoothing)
    dab_order = None
    if tcfg.dab_order_weight > 0:
        from her2scope.engine.dab_order import DabOrderLoss

        dab_order = DabOrderLoss(tcfg.dab_order_weight, tcfg.dab_order_range, tcfg.objective)
    return Trainer(
        model, net, optimizer, scheduler, scaler, criterion, augment, mean, std, channels_last,
        precision, dab_order,
    )  # fmt: skip


def train_one_epoch(
    tr: Trainer, loader: Any, grad_accum: int, dev: torch.device, desc: str, show: bool = True
) -> tuple[float, int]:
    """One pass over ``loader``; returns (sum of per-image losses, images seen)."""
    from her2scope.data.dataset import normalise_input, to_model_input
    from her2scope.engine.predict import autocast_context
    from her2scope.models import INCEPTION_AUX_WEIGHT
    from her2scope.models.registry import split_outputs

    tr.net.train()
    loss_sum, n_seen = 0.0, 0
    tr.optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    for step, (xb, yb) in enumerate(
        track(loader, desc, total=n_batches, disable=None if show else True)
    ):
        xb = xb.to(dev, non_blocking=True)
        yb = yb.to(dev, non_blocking=True)
        n = len(yb)
        if tr.dab_order is None:
            x = to_model_input(xb, tr.mean, tr.std, tr.channels_last, tr.augment)
        else:  # each tile and its DAB-scaled copy in one forward pass
            x01 = xb.float().div_(255.0)
            x01 = tr.augment(x01) if tr.augment is not None else x01
            x_pair, log_f = tr.dab_order.pair(x01)
            x = normalise_input(torch.cat([x01, x_pair]), tr.mean, tr.std, tr.channels_last)
        with autocast_context(dev, tr.precision):
            logits, aux = split_outputs(tr.net(x))
            loss = tr.criterion(logits[:n].float(), yb)
            if aux is not None:
                loss = loss + INCEPTION_AUX_WEIGHT * tr.criterion(aux[:n].float(), yb)
            if tr.dab_order is not None:
                loss = loss + tr.dab_order(logits[:n], logits[n:], log_f)
        tr.scaler.scale(loss / grad_accum).backward()
        if (step + 1) % grad_accum == 0 or step + 1 == n_batches:
            tr.scaler.step(tr.optimizer)
            tr.scaler.update()
            tr.optimizer.zero_grad(set_to_none=True)
            tr.scheduler.step()
        loss_sum += float(loss.detach()) * len(yb)
        n_seen += len(yb)
    return loss_sum, n_seen


def _local_world_size(dist: DistInfo) -> int:
    """Processes of this run on this machine (``torchrun`` sets ``LOCAL_WORLD_SIZE``)."""
    import os

    env = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(env) if env.isdigit() and int(env) > 0 else dist.world_size


def _write_calibration(
    run_dir: Path, val_df: pd.DataFrame, normalizers: Any, classes: tuple[str, ...], cfg: RunConfig
) -> None:
    """Fit temperature and reflex policy on the validation tiles with ``best.pt``; write them."""
    from her2scope.engine.checkpoint import load_run_model
    from her2scope.engine.predict import predict_tiles
    from her2scope.evaluate.calibration import fit_calibration

    best, meta = load_run_model(run_dir, "best")
    probs = predict_tiles(best, meta, val_df, normalizers, batch_size=cfg.train.batch_size)
    tiles = pd.DataFrame(
        {
            "slide_id": val_df["slide_id"].astype(str),
            "label": [classes[i] for i in val_df["label_idx"]],
        }
    )
    cal = fit_calibration(
        probs,
        tiles,
        classes,
        cfg.evaluate.aggregate,
        cfg.evaluate.percent_threshold,
        n_bins=cfg.evaluate.ece_bins,
    )
    write_json(RunLayout(run_dir).calibration, cal.to_dict())
    log.info(
        "calibration on %d validation tiles: T = %.3f, ECE %s -> %s; reflex threshold %.3f (%s)",
        cal.n_val_tiles, cal.temperature, _fmt(cal.ece_before), _fmt(cal.ece_after),
        cal.policy.threshold, cal.policy.validation.get("why", ""),
    )  # fmt: skip


class _WeightsNotice(logging.Handler):
    """Catches the registry's "no pretrained weights … random initialisation" notice."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.fell_back = False

    def emit(self, record: logging.LogRecord) -> None:
        if "random initialisation" in record.getMessage():
            self.fell_back = True

    def __enter__(self) -> _WeightsNotice:
        logging.getLogger("her2scope.models").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("her2scope.models").removeHandler(self)


def weights_record(model_name: str, pretrained: Any, fell_back: bool) -> dict[str, Any]:
    """What initialised the model: ``pretrained_loaded``, ``source``, ``sha256`` (or None).

    ``fell_back``: ``pretrained="auto"`` found no weights and used random initialisation.
    """
    from her2scope.engine.runinfo import file_sha256
    from her2scope.models.registry import _parse_pretrained

    mode = _parse_pretrained(pretrained)
    if mode is False:
        return {"pretrained_loaded": False, "source": "random init (train.pretrained=false)",
                "sha256": None}  # fmt: skip
    if fell_back:
        return {"pretrained_loaded": False, "sha256": None,
                "source": "random init: pretrained=auto found no cached ImageNet weights"}  # fmt: skip
    if isinstance(mode, Path):
        path = mode.resolve()
        return {"pretrained_loaded": True, "source": str(path), "sha256": file_sha256(path)}
    if model_name.startswith("timm:"):
        return {"pretrained_loaded": True, "sha256": None,
                "source": f"timm pretrained weights for {model_name[5:]} (hub cache)"}  # fmt: skip
    from her2scope.models.registry import torchvision_cache_file

    cache = torchvision_cache_file(model_name)
    return {
        "pretrained_loaded": True,
        "source": str(cache),
        "sha256": file_sha256(cache) if cache.is_file() else None,
    }


def _median_mpp(tiles: pd.DataFrame) -> float | None:
    if "mpp" not in tiles.columns or tiles.empty:
        return None
    return float(np.median(tiles["mpp"].to_numpy(np.float64)))


# ---- helpers (each small and testable) ----------------------------------------------------


def _read_tiles(tiles_dir: Path, cfg: RunConfig, scheme: Any) -> pd.DataFrame:
    """The tile table with canonical ``label`` and ``label_idx`` (manifest labels win)."""
    path = TilesLayout(tiles_dir).table
    if not path.is_file():
        raise ConfigError(f"no tile table at '{path}'; run `her2scope tile` first")
    from her2scope._io import read_parquet

    tiles = read_parquet(path)  # a damaged table: a clear error naming it, not a traceback
    missing = [c for c in TRAIN_COLUMNS if c not in tiles.columns]
    if missing:
        raise ConfigError(f"tile table '{path}' lacks column(s) {', '.join(missing)}")
    if tiles.empty:
        raise ConfigError(f"tile table '{path}' has no tiles")
    tiles["slide_id"] = tiles["slide_id"].astype(str)
    manifest = Path(cfg.cohort.manifest) if cfg.cohort.manifest else None
    if manifest is not None and manifest.is_file():
        from her2scope.cohort import load_manifest

        man = load_manifest(manifest, cfg.cohort.label_scheme, cfg.cohort.allow_absolute_paths)
        lab = dict(zip(man["slide_id"].astype(str), man["label"], strict=True))
        absent = sorted(set(tiles["slide_id"]) - set(lab))
        if absent:
            raise ManifestError(
                manifest,
                [f"tiled slide(s) not in the manifest: {', '.join(absent[:10])}"],
            )
        for col in ("patient_id", "center"):
            tiles[col] = tiles["slide_id"].map(dict(zip(man["slide_id"], man[col], strict=True)))
        tiles["label"] = tiles["slide_id"].map(lab)
    else:
        if manifest is not None:
            log.info("manifest '%s' not found; using the labels in %s", manifest, path)
        raw = tiles.drop_duplicates("slide_id").set_index("slide_id")["label"]
        mapped = {sid: scheme.class_of(v) for sid, v in raw.items()}
        bad = [f"'{sid}' ({raw[sid]!r})" for sid, c in mapped.items() if c is None]
        if bad:
            raise ManifestError(
                path,
                [
                    f"slide {b} has a label that scheme '{scheme.name}' does not know "
                    f"({scheme.describe()})"
                    for b in bad[:20]
                ],
            )
        tiles["label"] = tiles["slide_id"].map(mapped)
    tiles["label_idx"] = tiles["label"].map({c: i for i, c in enumerate(scheme.classes)})
    for col in ("patient_id", "center"):
        tiles[col] = tiles[col].astype(str)
    return tiles


def _log_split_table(splits: pd.DataFrame, tiles: pd.DataFrame, classes: tuple[str, ...]) -> None:
    from her2scope.cohort import format_split_table, split_table

    table = split_table(splits, tiles, classes)
    log.info(
        "patients/slides/tiles per split and class:\n%s\nleakage check: no patient in two "
        "splits (%d patients)",
        format_split_table(table),
        splits["patient_id"].nunique(),
    )


def _cap_tiles_per_slide(tiles: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    if cap is None:
        return tiles
    if cap < 1:
        raise ConfigError(f"train.max_tiles_per_slide must be >= 1 or null, got {cap}")
    parts = [
        g if len(g) <= cap else g.sample(n=cap, random_state=seed)
        for _, g in tiles.groupby("slide_id", sort=True)
    ]
    return pd.concat(parts).sort_index()


def _make_augment(cfg: RunConfig) -> Any:
    """The stain module's training augmentation (flips/rot90, H-DAB jitter, brightness/contrast,
    optional assay and zoom); randomness comes from torch's global RNG, which every epoch
    reseeds."""
    from her2scope.stain.augment import default_train_augment

    return default_train_augment(
        assay_dab_range=cfg.train.assay_dab_range, zoom_range=cfg.train.zoom_range
    )


def _make_optimizer(model: nn.Module, tcfg: Any) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=tcfg.lr, momentum=0.9, nesterov=True, weight_decay=tcfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)


class WarmupCosine:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` steps."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, max(total, 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def _resolve_precision(precision: str, dev: torch.device) -> str:
    if dev.type != "cuda":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**31


def _train_loader(
    ds: Any, tcfg: Any, seed: int, epoch: int, dist: Any, worker_init: Any, workers: int
) -> Any:
    from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

    gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch, 0))
    sampler: Any
    if dist.distributed:
        if tcfg.balance == "sampler":
            raise ConfigError("train.balance=sampler is not supported with torchrun; use 'loss'")
        sampler = DistributedSampler(
            ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
    elif tcfg.balance == "sampler":
        counts = np.bincount(ds.labels, minlength=ds.labels.max() + 1).astype(np.float64)
        weights = 1.0 / counts[ds.labels]
        sampler = WeightedRandomSampler(weights.tolist(), len(ds), replacement=True, generator=gen)
    else:
        sampler = torch.utils.data.RandomSampler(ds, generator=gen)
    return DataLoader(
        ds,
        batch_size=tcfg.batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=worker_init,
        generator=gen,
        pin_memory=dist.device.type == "cuda",
        persistent_workers=False,
        drop_last=False,
    )


def _validate(
    tr: Trainer, ds: Any, batch_size: int, workers: int, dev: torch.device, dist: Any
) -> dict[str, Any]:
    """Validation loss and macro-AUC; each rank scores every world_size-th tile, rank 0 combines."""
    from torch.utils.data import DataLoader, Subset

    from her2scope.data.dataset import to_model_input
    from her2scope.engine.distributed import all_gather_objects
    from her2scope.engine.predict import autocast_context

    if len(ds) == 0:
        return {"loss": None, "auc": None}
    idx = list(range(dist.rank, len(ds), dist.world_size))
    loader = DataLoader(Subset(ds, idx), batch_size=batch_size, num_workers=workers)
    tr.model.eval()
    chunks = []
    with torch.inference_mode():
        for xb, _ in loader:
            x = to_model_input(xb.to(dev), tr.mean, tr.std, tr.channels_last)
            with autocast_context(dev, tr.precision):
                logits = tr.model(x)
            chunks.append(logits.float().cpu())
    local = torch.cat(chunks) if chunks else torch.zeros(0)
    parts = all_gather_objects(dist, (idx, local))
    if not dist.is_main:
        return {"loss": None, "auc": None}
    logits = torch.zeros((len(ds), parts[0][1].shape[1]))
    for ids, lg in parts:
        logits[ids] = lg
    y = torch.as_tensor(np.array(ds.labels, dtype=np.int64))
    loss = float(nn.functional.cross_entropy(logits, y))
    probs = torch.softmax(logits, 1).numpy()
    return {"loss": loss, "auc": tile_macro_auc(ds.labels, probs)}


def tile_macro_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro-AUC of tiles over all K classes (:mod:`her2scope.evaluate.metrics`); None when a
    class is absent from ``y``."""
    from her2scope.evaluate.aggregate import argmax_high
    from her2scope.evaluate.metrics import point_metrics, sufficient_stats

    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    one_unit = np.zeros(len(y), dtype=np.int64)  # tiles, not patients: no resampling here
    classes = [str(k) for k in range(probs.shape[1])]
    value = point_metrics(sufficient_stats(y, probs, argmax_high(probs, axis=1), one_unit, classes))
    return None if math.isnan(value["macro_auc"]) else value["macro_auc"]


def _update_early_stopping(state: dict[str, Any], val: dict[str, Any], epoch: int) -> bool:
    """Update best/bad-epoch counters; return whether this epoch is the new best.

    Monitors val macro-AUC (higher is better) when available, else val loss (lower is better);
    an epoch that ties the best AUC (often 1.0 on easy data, from the first epoch on) is better
    when its val loss is lower. Without validation every epoch counts as the best.
    """
    if val["auc"] is not None:
        monitor, score = "val_macro_auc", val["auc"]
    elif val["loss"] is not None:
        monitor, score = "val_loss", -val["loss"]
    else:
        state.update(best=None, best_epoch=epoch, bad_epochs=0, monitor="none")
        return True
    if state["monitor"] not in ("", monitor):
        raise Her2ScopeError(f"early stopping changed monitor from {state['monitor']} to {monitor}")
    state["monitor"] = monitor
    loss = val["loss"] if val["loss"] is not None else math.inf
    best_loss = state.get("best_loss")
    tie_better = score == state["best"] and best_loss is not None and loss < best_loss
    if state["best"] is None or score > state["best"] or tie_better:
        state.update(best=score, best_loss=loss, best_epoch=epoch, bad_epochs=0)
        return True
    state["bad_epochs"] += 1
    return False


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"

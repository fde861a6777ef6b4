"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint is a plain dictionary of tensors and primitive containers (no pickled classes):
``model_state``, ``optimizer_state``, ``scheduler_state``, ``epoch`` (completed epochs),
``rng`` (python / numpy / torch / cuda states), ``config`` (the resolved ``RunConfig`` as a dict),
``classes``, ``model_name``, ``input_px``, ``tiles_dir``, ``train_state`` (early-stopping state)
and ``model_hash`` (SHA-256 of the model tensors, checked on load so a corrupted file is caught).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from her2scope._io import atomic_path
from her2scope.errors import Her2ScopeError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from her2scope.config import RunConfig

FORMAT_VERSION = 1


@dataclass
class RunMeta:
    """What a trained run's checkpoint says about its model."""

    model_name: str
    classes: tuple[str, ...]
    config: RunConfig
    input_px: int
    tiles_dir: str
    epoch: int = 0
    run_dir: str = ""
    mean: tuple[float, ...] = field(default=(0.485, 0.456, 0.406))
    std: tuple[float, ...] = field(default=(0.229, 0.224, 0.225))
    checkpoint: str = ""


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, shapes, dtypes and bytes (order-independent of dict order)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def get_rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/primitives (weights_only-safe)."""
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_primitive(random.getstate()),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`get_rng_state`."""
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_primitive(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_to_primitive(x) for x in v]
    return v


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    model_name: str,
    classes: tuple[str, ...] | list[str],
    config: RunConfig,
    input_px: int,
    tiles_dir: str | Path,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically to ``path`` and return it. ``epoch`` counts completed epochs."""
    import torch

    from her2scope.config import to_dict

    net = model.module if hasattr(model, "module") else model
    model_state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "classes": list(classes),
        "input_px": int(input_px),
        "tiles_dir": str(tiles_dir),
        "epoch": int(epoch),
        "config": to_dict(config),
        "model_state": model_state,
        "model_hash": state_hash(model_state),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "scaler_state": scaler.state_dict() if scaler is not None else None,
        "rng": get_rng_state(),
        "train_state": dict(train_state or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and verify its model hash.

    Raises ``Her2ScopeError`` naming the file when it is missing, unreadable or corrupted.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise Her2ScopeError(f"checkpoint '{path}' not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise Her2ScopeError(
            f"checkpoint '{path}' could not be read ({type(exc).__name__}: {exc}); "
            "it may be truncated — retrain or use the other checkpoint (best.pt / last.pt)"
        ) from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise Her2ScopeError(f"checkpoint '{path}' is not a her2scope checkpoint")
    if state_hash(ckpt["model_state"]) != ckpt.get("model_hash"):
        raise Her2ScopeError(
            f"checkpoint '{path}': model tensors do not match the stored hash (corrupted file)"
        )
    return ckpt


def meta_from_checkpoint(ckpt: dict[str, Any], run_dir: str | Path = "", path: str = "") -> RunMeta:
    """Build :class:`RunMeta` (with the model's normalisation) from a loaded checkpoint."""
    from her2scope.config import RunConfig, from_dict
    from her2scope.models import model_preprocessing

    mean, std = model_preprocessing(ckpt["model_name"])
    return RunMeta(
        model_name=ckpt["model_name"],
        classes=tuple(ckpt["classes"]),
        config=from_dict(RunConfig, ckpt["config"]),
        input_px=int(ckpt["input_px"]),
        tiles_dir=str(ckpt["tiles_dir"]),
        epoch=int(ckpt["epoch"]),
        run_dir=str(run_dir),
        mean=mean,
        std=std,
        checkpoint=str(path),
    )


def load_run_model(
    run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, RunMeta]:
    """Rebuild a run's model from ``run_dir/checkpoints/<which>.pt`` in eval mode.

    ``which`` is ``best`` or ``last`` (or a path to a ``.pt`` file). No pretrained download
    happens: the architecture is built randomly and the checkpoint's weights loaded into it.
    """
    from her2scope.models import create_model

    run_dir = Path(run_dir)
    path = Path(which) if which.endswith(".pt") else run_dir / "checkpoints" / f"{which}.pt"
    ckpt = load_checkpoint(path)
    meta = meta_from_checkpoint(ckpt, run_dir, str(path))
    model = create_model(
        meta.model_name,
        len(meta.classes),
        pretrained=False,
        input_px=meta.input_px,
        objective=meta.config.train.objective,
    )
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise Her2ScopeError(
            f"checkpoint '{path}' does not fit model '{meta.model_name}': {exc}"
        ) from None
    model.to(device).eval()
    return model, meta

"""Tile prediction with a trained run's model and the training preprocessing (no augmentation)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from her2scope.engine.checkpoint import RunMeta


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``: CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_context(device: torch.device, precision: str = "auto") -> Any:
    """bf16/fp16 autocast on CUDA (``auto``: bf16 when supported, else fp16); off on CPU."""
    import torch

    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    if precision == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def predict_tiles(
    model: nn.Module,
    meta: RunMeta,
    tiles_df: pd.DataFrame,
    normalizers: Mapping[str, Any] | None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    workers: int = 0,
) -> np.ndarray:
    """Softmax probabilities ``[N, K]`` (float32) for the rows of ``tiles_df``, in ``meta.classes`` order.

    Pixels go through the same :class:`TileDataset` path as training (stain normaliser of each
    slide, resize to ``meta.input_px``, the model's mean/std). AMP on CUDA. An empty table gives
    an empty ``[0, K]`` array.
    """
    import torch
    from torch.utils.data import DataLoader

    from her2scope._progress import track
    from her2scope.data.dataset import TileDataset, to_model_input

    k = len(meta.classes)
    if len(tiles_df) == 0:
        return np.zeros((0, k), dtype=np.float32)
    dev = resolve_device(device)
    ds = TileDataset(tiles_df.reset_index(drop=True), meta.input_px, normalizers)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
    )
    mean = torch.tensor(meta.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, device=dev).view(1, 3, 1, 1)
    channels_last = bool(getattr(meta.config.train, "channels_last", False)) and dev.type == "cuda"
    was_training = model.training
    model.to(dev).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    out = np.zeros((len(ds), k), dtype=np.float32)
    start = 0
    try:
        with torch.inference_mode():
            for xb, _ in track(loader, f"predict {meta.model_name}", total=len(loader)):
                x = to_model_input(xb.to(dev, non_blocking=True), mean, std, channels_last)
                with autocast_context(dev, meta.config.train.precision):
                    logits = model(x)
                if not isinstance(logits, torch.Tensor):  # defensive: inception outputs
                    logits = logits[0]
                probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
                if probs.shape[1] != k:
                    raise ValueError(f"model gives {probs.shape[1]} classes, run has {k}")
                out[start : start + len(probs)] = probs
                start += len(probs)
    finally:
        model.train(was_training)
    return out

"""Tile prediction with a trained run's model and the training preprocessing (no augmentation)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from her2scope.engine.checkpoint import RunMeta
    from her2scope.engine.infer import InferenceOptions, Predictor


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
    model: nn.Module | None,
    meta: RunMeta,
    tiles_df: pd.DataFrame,
    normalizers: Mapping[str, Any] | None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    workers: int | None = None,
    *,
    options: InferenceOptions | None = None,
    predictor: Predictor | None = None,
    pixels: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """Softmax probabilities ``[N, K]`` (float32) for the rows of ``tiles_df``, in ``meta.classes`` order.

    Pixels go through the same :class:`TileDataset` path as training (stain normaliser of each
    slide, resize to ``meta.input_px``, the model's mean/std). The model runs as ``options`` say
    (default: fp32 in channels_last memory format on a CPU, the run's AMP setting on CUDA; see
    :mod:`her2scope.engine.infer`); pass a ``predictor`` built once to score many tables with one
    set-up (an ONNX session, say). ``workers`` is the number of tile-reading threads (0: read in
    this thread; None: chosen with torch's threads from the CPUs). ``pixels`` (row of
    ``tiles_df`` → the tile as ``Slide.read_tile`` gives it) are used instead of reading those
    rows again. An empty table gives an empty ``[0, K]`` array.
    """
    from her2scope._progress import track
    from her2scope.data.dataset import TileDataset
    from her2scope.engine.infer import InferenceOptions, Predictor, prefetch_batches

    k = len(meta.classes)
    if len(tiles_df) == 0:
        return np.zeros((0, k), dtype=np.float32)
    if predictor is None:
        opts = options or InferenceOptions()
        if workers is not None:
            opts = dataclasses.replace(opts, readers=workers)
        predictor = Predictor(model, meta, resolve_device(device), opts)
    ds = TileDataset(tiles_df.reset_index(drop=True), meta.input_px, normalizers, pixels=pixels)
    n_batches = -(-len(ds) // batch_size)
    out = np.zeros((len(ds), k), dtype=np.float32)
    start = 0
    try:
        with predictor.prepare():
            batches = prefetch_batches(ds, batch_size, predictor.readers)
            for xb in track(batches, f"predict {meta.model_name}", total=n_batches):
                probs = predictor.probs(xb)
                out[start : start + len(probs)] = probs
                start += len(probs)
    finally:
        ds.close()
    return out

"""TileDataset: tiles read lazily from their slides, stain-normalised and resized for a model.

One row of ``tiles.parquet`` is one item. Pixels come from
``open_slide(slide_path).read_tile((x, y), level, read_px, tile_px)``; the slide's fitted stain
normaliser (if any) is applied, then the tile is resized to ``input_px``. Items are uint8 tensors
``[3, input_px, input_px]`` (cheap to move between processes); scaling to [0, 1], augmentation and
mean/std normalisation happen on the batch, on the training device.

Each worker process keeps its own cache of open slide handles (handles are never shared across a
fork).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from her2scope.errors import SlideError
from her2scope.tiling.table import PIXEL_COLUMNS as TILE_COLUMNS  # the columns read here


class TileDataset(Dataset):
    """Tiles of ``tiles_df`` as ``(uint8 [3, input_px, input_px] tensor, label index)``.

    ``labels`` (one int per row, -1 for unknown) defaults to -1 everywhere. ``normalizers`` maps a
    slide id to an object with ``transform(rgb_uint8) -> rgb``; slides without one are passed
    through unchanged. ``pixels`` maps a row to that tile's pixels already read (``tile_px`` square,
    as ``Slide.read_tile`` gives them: the tiling pass's, so a tile is decoded once); rows without
    are read from the slide. A tile that cannot be read raises ``SlideError`` naming the slide
    and position.
    """

    def __init__(
        self,
        tiles_df: pd.DataFrame,
        input_px: int,
        normalizers: Mapping[str, Any] | None = None,
        labels: np.ndarray | None = None,
        max_open_slides: int = 64,
        pixels: Mapping[int, np.ndarray] | None = None,
    ) -> None:
        missing = [c for c in TILE_COLUMNS if c not in tiles_df.columns]
        if missing:
            raise ValueError(f"tile table lacks column(s) {', '.join(missing)}")
        self.input_px = int(input_px)
        self.slide_id = tiles_df["slide_id"].astype(str).to_numpy()
        self.slide_path = tiles_df["slide_path"].astype(str).to_numpy()
        self.xy = tiles_df[["x", "y"]].to_numpy(dtype=np.int64)
        self.level = tiles_df["level"].to_numpy(dtype=np.int64)
        self.read_px = tiles_df["read_px"].to_numpy(dtype=np.int64)
        self.tile_px = tiles_df["tile_px"].to_numpy(dtype=np.int64)
        # µm/px is only needed to open a slide whose file lacks it; pixels do not depend on it.
        self.mpp = (
            tiles_df["mpp"].to_numpy(dtype=np.float64)
            if "mpp" in tiles_df.columns
            else np.full(len(tiles_df), 0.5)
        )
        if labels is None:
            labels = np.full(len(tiles_df), -1, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(tiles_df):
            raise ValueError(f"{len(self.labels)} labels for {len(tiles_df)} tiles")
        self.normalizers = dict(normalizers or {})
        self.pixels = pixels or {}
        self.max_open_slides = max_open_slides
        self._slides: dict[str, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slides"] = {}  # handles stay in the process that opened them
        return state

    def close(self) -> None:
        """Close the slides this process opened (the dataset stays usable: they reopen)."""
        for slide in self._slides.values():
            slide.close()
        self._slides = {}

    def _slide(self, i: int) -> Any:
        from her2scope.slide.reader import open_slide

        if os.getpid() != self._pid:  # forked worker: start its own cache
            self._slides, self._pid = {}, os.getpid()
        path = self.slide_path[i]
        slide = self._slides.get(path)
        if slide is None:
            if len(self._slides) >= self.max_open_slides:
                oldest = next(iter(self._slides))
                self._slides.pop(oldest).close()
            slide = open_slide(path, mpp=float(self.mpp[i]))
            self._slides[path] = slide
        return slide

    def read_rgb(self, i: int) -> np.ndarray:
        """The normalised, resized tile ``i`` as ``input_px × input_px × 3`` uint8 RGB."""
        rgb = self.pixels.get(i)
        if rgb is None:
            x, y = int(self.xy[i, 0]), int(self.xy[i, 1])
            try:
                rgb = self._slide(i).read_tile(
                    (x, y), int(self.level[i]), int(self.read_px[i]), int(self.tile_px[i])
                )
            except SlideError as exc:
                raise SlideError(
                    self.slide_path[i],
                    f"tile of slide '{self.slide_id[i]}' at ({x}, {y}): {exc.reason}",
                ) from exc
        norm = self.normalizers.get(self.slide_id[i])
        if norm is not None:
            rgb = np.asarray(norm.transform(rgb))
            if rgb.dtype != np.uint8:
                scale = 255.0 if rgb.max(initial=0) <= 1.0 else 1.0
                rgb = np.clip(np.rint(rgb * scale), 0, 255).astype(np.uint8)
        if rgb.shape[0] != self.input_px or rgb.shape[1] != self.input_px:
            import cv2

            interp = cv2.INTER_AREA if rgb.shape[0] > self.input_px else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (self.input_px, self.input_px), interpolation=interp)
        return np.ascontiguousarray(rgb)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rgb = self.read_rgb(int(i))
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), int(self.labels[i])


def to_model_input(
    batch_uint8: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    channels_last: bool = False,
    augment: Any = None,
) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float, optionally augmented (on [0, 1] RGB), then mean/std-normalised.

    ``mean``/``std`` are [1, 3, 1, 1] tensors on the batch's device.
    """
    x = batch_uint8.float().div_(255.0)
    if augment is not None:
        x = augment(x)
    return normalise_input(x, mean, std, channels_last)


def normalise_input(
    x01: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False
) -> torch.Tensor:
    """A float RGB batch in [0, 1] → the model's mean/std-normalised input."""
    x = (x01 - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and python from torch's per-worker seed."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)

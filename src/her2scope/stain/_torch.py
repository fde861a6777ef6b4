"""Batched torch application of a fitted stain map (CPU or GPU); same maths as the numpy path."""

from __future__ import annotations

import numpy as np
import torch


def transform_nchw(x: torch.Tensor, od_matrix: np.ndarray | None, io: float) -> torch.Tensor:
    """Apply the 3×3 OD map to an NCHW (or CHW) uint8 tensor; returns uint8 on x's device.

    ``od_matrix=None`` (passthrough) returns a clone of ``x``.
    """
    if x.dtype != torch.uint8 or x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(
            f"stain transform: expected NCHW or CHW uint8 RGB tensor, got {x.dtype} {tuple(x.shape)}"
        )
    if od_matrix is None:
        return x.clone()
    neg_od = x.float().add_(1.0).div_(io).log_()  # -OD = ln((I + 1) / io)
    m = torch.as_tensor(od_matrix, dtype=torch.float32, device=x.device)
    shape = neg_od.shape
    out = torch.matmul(m, neg_od.reshape(-1, 3, shape[-2] * shape[-1])).reshape(shape)  # -M·OD
    return out.exp_().mul_(io).clamp_(0.0, 255.0).round_().to(torch.uint8)

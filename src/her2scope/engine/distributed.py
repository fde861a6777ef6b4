"""Distributed data parallel helpers for ``torchrun`` (one process per GPU, or CPU with gloo).

Nothing here starts distributed training implicitly: :func:`init_distributed` reads the variables
``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and only then creates a process group
(NCCL on CUDA, gloo on CPU). Without them it returns a single-process :class:`DistInfo`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Set up the process group when launched by ``torchrun``; pick this process's device.

    ``device``: ``None`` chooses ``cuda:<LOCAL_RANK>`` when CUDA is available, else CPU.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or (device == "cuda" and world > 1):
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def barrier(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.distributed:
        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` when not distributed)."""
    import torch.distributed as dist

    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(info: DistInfo, model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last training step the
    ranks' running statistics differ; call this before evaluating on several ranks.
    """
    import torch.distributed as dist

    if not info.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)

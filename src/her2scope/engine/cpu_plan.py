"""How the cores of this process are shared between the model's threads and the loader processes.

Training on a CPU is bound by the model: every core a DataLoader worker takes is a core torch's
threads lose, and two loader processes on two cores fight the two torch threads (measured:
0.79× the bare loop with 2 workers, 0.97× with none, ``benchmarks/bench_train.py``). Reading a
tile costs a small fraction of a training step, so on a CPU device the loader gets one process
per :data:`CORES_PER_LOADER_WORKER` cores (none below that: the main process reads between
steps) and torch gets the rest. On an accelerator the model does not need the cores: loaders get
all but one, torch one thread.

Both numbers can be set: ``train.workers`` caps the loader processes, and ``threads`` (or the
usual ``OMP_NUM_THREADS``) fixes torch's threads, in which case the loader gets the cores left.

Prediction shares the cores the same way between reader threads and compute threads
(:func:`plan_threads`, used by :mod:`her2scope.engine.infer`). The count of this process's CPUs
is :func:`her2scope.tiling.scan.cpu_workers` for every plan.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: On a CPU device, one DataLoader worker per this many cores.
CORES_PER_LOADER_WORKER = 8


@dataclass(frozen=True)
class CpuPlan:
    """Loader worker processes and torch threads of one training process."""

    loader_workers: int
    torch_threads: int
    cores: int
    why: str


def plan_cpu(
    max_workers: int,
    device_type: str = "cpu",
    *,
    cores: int | None = None,
    threads: int | None = None,
    processes_per_node: int = 1,
) -> CpuPlan:
    """Choose loader workers and torch threads together so that they never exceed the cores.

    ``max_workers`` is ``train.workers`` (0: read in the main process). ``threads`` fixes
    torch's threads (default: ``OMP_NUM_THREADS`` when set, else the plan). ``cores`` defaults to
    :func:`her2scope.tiling.scan.cpu_workers`, shared equally by ``processes_per_node`` (``torchrun`` ranks).
    """
    if max_workers < 0:
        raise ValueError(f"max_workers must be >= 0, got {max_workers}")
    if cores is None:
        from her2scope.tiling.scan import cpu_workers  # the one count of this process's CPUs

        cores = cpu_workers()
    total = cores
    share = max(1, total // max(1, processes_per_node))
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        threads = int(env) if env.isdigit() and int(env) > 0 else None
    if threads is not None:
        threads = max(1, min(int(threads), share))
        workers = min(max_workers, share - threads)
        why = (
            f"{threads} torch thread(s) as set; the loader gets the {share - threads} core(s) left"
        )
    elif device_type == "cpu":
        workers = min(max_workers, share // CORES_PER_LOADER_WORKER)
        threads = share - workers
        why = (
            f"CPU training: the model needs the cores; one loader process per "
            f"{CORES_PER_LOADER_WORKER} cores"
        )
    else:
        workers = min(max_workers, share - 1)
        threads = 1
        why = f"{device_type} training: the loader gets the cores, torch one thread"
    return CpuPlan(max(0, workers), threads, share, why)


def plan_threads(
    n_cpus: int, device_type: str, threads: int | None = None, readers: int | None = None
) -> tuple[int, int]:
    """``(compute threads, reader threads)`` for ``n_cpus`` cores, together never more than
    ``n_cpus`` (or than what the caller asked for).

    On a GPU the CPU only reads: one compute thread, the other cores read. On a CPU the model
    is what limits prediction, so, as in training, one reader thread per
    :data:`CORES_PER_LOADER_WORKER` cores and the rest compute; below that the tiles are read
    between batches. Measured on 2 cores (``bench_predict.py --paths old,default,inline,oversub``):
    1 compute + 1 reader thread ran the prediction step at 0.68x the bare forward at 512 px,
    2 compute threads reading between batches at 1.11x. A value the caller gives is kept; given
    threads, the readers take the cores left (at most their default number); given readers,
    the compute threads take the cores left (at least one).
    """
    n = max(1, int(n_cpus))
    if device_type != "cpu":
        t = threads if threads is not None else 1
        r = readers if readers is not None else max(1, n - 1)
        return t, r
    if readers is None:
        readers = n // CORES_PER_LOADER_WORKER
        if threads is not None:
            readers = max(0, min(readers, n - threads))
    if threads is None:
        threads = max(1, n - readers)
    return threads, readers


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads; the previous number is restored after."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

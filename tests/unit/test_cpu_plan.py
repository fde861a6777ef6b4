"""Loader processes and torch threads are planned together from the cores (no oversubscription)."""

from __future__ import annotations

import pytest
import torch

from her2scope.engine.cpu_plan import CORES_PER_LOADER_WORKER, plan_cpu, torch_threads


@pytest.fixture(autouse=True)
def _no_omp_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 7, 8, 16, 64])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("workers", [0, 2, 256])
def test_workers_and_threads_never_exceed_the_cores(cores: int, device: str, workers: int) -> None:
    plan = plan_cpu(workers, device, cores=cores)
    assert 0 <= plan.loader_workers <= workers
    assert plan.torch_threads >= 1
    assert plan.loader_workers + plan.torch_threads <= cores


def test_cpu_training_on_two_cores_reads_in_the_main_process() -> None:
    # measured (benchmarks/bench_train.py): 2 loader processes + 2 torch threads on 2 cores
    # ran at 0.79x the bare loop; 0 loader processes at 0.97x
    plan = plan_cpu(2, "cpu", cores=2)
    assert (plan.loader_workers, plan.torch_threads) == (0, 2)
    big = plan_cpu(4, "cpu", cores=4 * CORES_PER_LOADER_WORKER)
    assert (big.loader_workers, big.torch_threads) == (4, 4 * CORES_PER_LOADER_WORKER - 4)


def test_gpu_training_gives_the_cores_to_the_loader() -> None:
    plan = plan_cpu(8, "cuda", cores=6)
    assert (plan.loader_workers, plan.torch_threads) == (5, 1)
    assert plan_cpu(2, "cuda", cores=6).loader_workers == 2  # train.workers caps it


def test_threads_setting_and_omp_num_threads_leave_the_rest_to_the_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = plan_cpu(4, "cpu", cores=8, threads=5)
    assert (plan.loader_workers, plan.torch_threads) == (3, 5)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan = plan_cpu(2, "cpu", cores=2)
    assert (plan.loader_workers, plan.torch_threads) == (1, 1)


def test_torchrun_ranks_share_the_cores() -> None:
    plan = plan_cpu(2, "cpu", cores=16, processes_per_node=2)
    assert plan.cores == 8 and (plan.loader_workers, plan.torch_threads) == (1, 7)


def test_torch_threads_are_restored() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before

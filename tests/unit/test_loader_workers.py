"""train.workers is capped by the CPUs of this process (issue 14: no oversubscription)."""

from __future__ import annotations

import os

import pytest


def test_loader_workers_never_exceed_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from her2scope.engine.cpu_plan import plan_cpu

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one torch thread: one core left for the loader
    assert plan_cpu(256).loader_workers == 1
    assert plan_cpu(2).loader_workers == 1
    assert plan_cpu(1).loader_workers == 1
    assert plan_cpu(0).loader_workers == 0  # 0 = read in the main process, kept

"""train.workers is capped by the CPUs of this process (issue 14: no oversubscription)."""

from __future__ import annotations

import os

import pytest


def test_loader_workers_never_exceed_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from her2scope.engine.train import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert loader_workers(256) == 2
    assert loader_workers(2) == 2
    assert loader_workers(1) == 1
    assert loader_workers(0) == 0  # 0 = read in the main process, kept

"""her2scope._pool.process_pool: an interrupted batch cancels its queued tasks instead of finishing them."""

from __future__ import annotations

import threading

import pytest

from her2scope._pool import process_pool


def _wait_for(path: str) -> int:
    """A task that blocks until ``path`` exists (the test releases it), then returns 1."""
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return 1


def test_exception_in_the_block_cancels_queued_tasks(tmp_path) -> None:
    gate = str(tmp_path / "go")
    futures = []
    with pytest.raises(KeyboardInterrupt), process_pool(1) as pool:
        futures = [pool.submit(_wait_for, gate) for _ in range(12)]
        # release the one running task from another thread while shutdown waits for it
        threading.Timer(0.5, lambda: open(gate, "w").close()).start()
        raise KeyboardInterrupt
    # one task running and up to two in the worker's call queue (the executor's look-ahead:
    # workers + 1 items) cannot be cancelled; the other nine never started (a plain
    # `with ProcessPoolExecutor` would have run all twelve)
    assert sum(f.cancelled() for f in futures) >= 9
    assert all(f.done() for f in futures)


def test_normal_exit_runs_every_task(tmp_path) -> None:
    gate = tmp_path / "go"
    gate.touch()
    with process_pool(2) as pool:
        futures = [pool.submit(_wait_for, str(gate)) for _ in range(4)]
    assert [f.result() for f in futures] == [1, 1, 1, 1]

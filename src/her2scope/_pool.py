"""Worker process pools that stop promptly: an interrupted batch does not finish its queue first.

``with ProcessPoolExecutor(...)`` waits on exit for every task submitted — after Ctrl-C too, so a
batch submitted with ``map`` went on rendering or scoring every queued item before the command
could exit. :func:`process_pool` cancels the tasks not yet started when the block ends with an
exception (``KeyboardInterrupt`` included) and waits only for those already running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any


@contextlib.contextmanager
def process_pool(max_workers: int, **kwargs: Any) -> Iterator[ProcessPoolExecutor]:
    """A :class:`ProcessPoolExecutor` that cancels its queued tasks if the block raises."""
    pool = ProcessPoolExecutor(max_workers=max_workers, **kwargs)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

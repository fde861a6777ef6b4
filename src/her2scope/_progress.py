"""One progress bar style for every long loop (rich, on stderr; quiet when not a terminal)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars are drawn on an interactive stderr unless HER2SCOPE_NO_PROGRESS is set."""
    return sys.stderr.isatty() and not os.environ.get("HER2SCOPE_NO_PROGRESS")


def track(
    items: Iterable[T], description: str, total: int | None = None, disable: bool | None = None
) -> Iterator[T]:
    """Iterate ``items`` showing a progress bar with ``description``, count, rate and ETA."""
    if disable is None:
        disable = not progress_enabled()
    if disable:
        yield from items
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)

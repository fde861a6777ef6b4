"""Atomic file output: a crash never leaves a half-written file that looks complete.

Each writer writes to a temporary file in the destination folder, flushes and fsyncs it, then
renames it over the destination (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Use for writers that want a file name (``DataFrame.to_parquet``, ``Figure.savefig``,
    ``torch.save``). The temporary name keeps the suffix so writers that sniff it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _commit(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _commit(tmp_path: Path, path: Path) -> None:
    """Flush ``tmp_path`` to disk and rename it over ``path`` (the one low-level commit)."""
    with open(tmp_path, "rb+") as fh:
        os.fsync(fh.fileno())
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_umask())
    os.replace(tmp_path, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that atomically replaces ``path`` when closed cleanly."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh
        fh.flush()


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically. NaN/Inf are refused (they are not valid JSON)."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=indent, allow_nan=False, default=_json_default)
        fh.write("\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths: the usual suspects in results dictionaries
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_manifest_csv(path: str | Path) -> Any:
    """Read a manifest CSV as strings (no NaN, stripped headers) or raise ``ManifestError``.

    Shared by the tiling stage (which checks only what it needs) and the cohort stage (full
    validation), so both read the file the same way.
    """
    import pandas as pd

    from her2scope.errors import ManifestError

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise ManifestError(path, ["file not found"]) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(path, [f"not a readable CSV file ({exc})"]) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df

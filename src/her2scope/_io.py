"""Atomic file output: a crash never leaves a half-written file that looks complete.

Each writer writes to a temporary file in the destination folder, flushes and fsyncs it, then
renames it over the destination (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from her2scope.errors import OutputError, os_error_reason  # re-exported: callers import it here

#: Temporary files of :func:`atomic_path`: ``.<stem>.<8 random chars>.tmp<suffix>``.
_TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]{1,8})?$")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Use for writers that want a file name (``DataFrame.to_parquet``, ``Figure.savefig``,
    ``torch.save``). The temporary name keeps the suffix so writers that sniff it still work.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
    except OSError as exc:
        reason = os_error_reason(exc)
        if reason is None:
            raise
        raise OutputError(path, reason, exc.errno) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _commit(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if not isinstance(exc, OutputError):
            # disk full / read-only (OSError), or torch.save's zip writer failing part-way
            reason = os_error_reason(exc)
            if reason is not None:
                raise OutputError(path, reason, getattr(exc, "errno", None)) from None
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
    # one string, one write: json.dump's chunked writes took ~4x as long (GeoJSON of many tiles)
    text = json.dumps(obj, indent=indent, allow_nan=False, default=_json_default)
    with atomic_open(path) as fh:
        fh.write(text)
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


def ensure_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove a file can be created in it, before any work.

    Raises :class:`~her2scope.errors.OutputError` naming the folder and the reason (read-only,
    permission denied, disk full, a file in the way) instead of failing after the work is done.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".her2scope-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise OutputError(folder, f"the {what} exists and is a file, not a folder") from None
    except OSError as exc:
        reason = os_error_reason(exc) or f"cannot write there ({exc.strerror or exc})"
        raise OutputError(folder, f"{what} is not writable: {reason}", exc.errno) from None
    return folder


def is_atomic_temp(name: str) -> bool:
    """True for names that :func:`atomic_path` gives its temporary files (and nothing else)."""
    return bool(_TEMP_RE.match(name))


def clean_orphan_temps(folder: str | Path, max_depth: int = 4) -> list[Path]:
    """Delete temporary files our atomic writer left behind after a kill (``kill -9``, power cut).

    Looks in ``folder`` and its sub-folders down to ``max_depth`` levels (0: the folder only;
    the pipeline's deepest outputs, ``runs/<model>/explain/slides/``, are 4 down); symlinked
    folders are not followed. Only names matching :func:`is_atomic_temp` are removed, never other
    files. Call it only while holding the folder's lock (:mod:`her2scope._lock`): a live writer's
    temporary file would otherwise be removed under it. Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    base_depth = len(folder.parts)
    for dirpath, dirs, files in os.walk(folder):
        if len(Path(dirpath).parts) - base_depth >= max_depth:
            dirs[:] = []  # do not descend further
        for name in files:
            if is_atomic_temp(name):
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file():
                    continue
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


def create_exclusive(path: str | Path, text: str) -> bool:
    """Atomically create ``path`` holding ``text`` unless it exists; True when this call made it.

    The content is written to a temporary file first and hard-linked into place, so another
    process never sees a half-written file, and two processes can never both succeed. (Where the
    file system has no hard links, an ``O_EXCL`` create is used instead.)
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, 0o666 & ~_umask())
        except FileNotFoundError:
            return False
        try:
            os.link(tmp, path)
        except (FileExistsError, FileNotFoundError):
            # exists; or our temporary file was cleaned up by the process holding the lock
            return False
        except OSError:  # no hard links here: exclusive create, then write
            try:
                fd2 = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd2, "w", encoding="utf-8") as fh:
                fh.write(text)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when two paths name the same file (after symlinks; hard links too when both exist)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_replacing_inputs(
    outputs: Iterable[str | Path], inputs: Iterable[str | Path], fix: str
) -> None:
    """Raise :class:`OutputError` when any output path is (or resolves to) an input file.

    Paths are compared after resolving symlinks, and existing files also by device and inode (a
    hard link is the same file). ``fix`` tells the user what to do (e.g. "choose another --out").
    Every clash is listed. Linear in the number of paths (cohorts of thousands of slides).
    """
    by_path: dict[Path, Path] = {}
    by_inode: dict[tuple[int, int], Path] = {}
    for i in (Path(p) for p in inputs):
        by_path.setdefault(i.resolve(), i)
        key = _inode(i)
        if key is not None:
            by_inode.setdefault(key, i)
    clashes: list[tuple[Path, Path]] = []
    for o in (Path(p) for p in outputs):
        hit = by_path.get(o.resolve())
        if hit is None:
            key = _inode(o)
            hit = by_inode.get(key) if key is not None else None
        if hit is not None:
            clashes.append((o, hit))
    if clashes:
        shown = "; ".join(f"'{o}' is the input '{i}'" for o, i in clashes[:5])
        more = f"; and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise OutputError(
            clashes[0][0], f"writing here would replace an input ({shown}{more}); {fix}"
        )


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def host_name() -> str:
    """This machine's name (for lock files and provenance)."""
    return socket.gethostname()


def read_parquet(path: str | Path, columns: list[str] | None = None, fix: str = "") -> Any:
    """Read an intermediate Parquet table (``tiles.parquet``, ``predictions.parquet``) or raise
    :class:`~her2scope.errors.Her2ScopeError` naming the file and what to do when it is missing,
    damaged, truncated or lacks ``columns`` (a tampered intermediate never gives a traceback).

    ``fix`` says how to rebuild it (default: delete it and re-run the stage that wrote it).
    """
    import pandas as pd

    from her2scope.errors import Her2ScopeError, reason_of

    path = Path(path)
    todo = fix or (
        "delete it and re-run the stage that wrote it (e.g. `her2scope run CONFIG --force tile`)"
    )
    if not path.is_file():
        raise Her2ScopeError(f"'{path}' not found; {todo}")
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, KeyError, … on a bad file
        why = reason_of(exc, "damaged or truncated")
        raise Her2ScopeError(f"'{path}' is not a readable Parquet table ({why}); {todo}") from None

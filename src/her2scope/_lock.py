"""Output-folder locks: two her2scope runs never write into one folder at the same time.

A writer takes ``<folder>/.her2scope.lock`` (JSON: ``pid``, ``host``, ``started_utc``,
``command``, ``pid_start``) before it writes anything and removes it when it ends, also on
Ctrl-C or an error. A second writer into the same folder, into a folder *inside* it, or into a
folder that *contains* it (two levels deep: ``out/`` vs ``out/runs/<model>/``) gets a
:class:`~her2scope.errors.OutputError` naming the other run.

A lock left by a killed run is **stale** when it was written on this host and its process is
gone (or the pid now belongs to a process started later); it is then taken over with a notice on
the ``her2scope`` logger. A lock from another host is never presumed stale: the message says to
delete it by hand if that run is over. Nested takes within one process are re-entrant; in a
``torchrun`` job only rank 0 takes the lock (the other ranks are part of the same run).

Holding the lock also makes it safe to delete the atomic writer's orphan temporary files in the
folder (:func:`her2scope._io.clean_orphan_temps`), which :func:`output_lock` does on entry.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from her2scope._io import clean_orphan_temps, create_exclusive, ensure_writable, host_name
from her2scope.errors import OutputError

log = logging.getLogger("her2scope")

LOCK_NAME = ".her2scope.lock"

#: Folders this process holds, with a count for re-entrant takes.
_HELD: dict[Path, int] = {}


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # field 22 counts from 1; the command name (field 2) may contain spaces, so split after ')'
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, pid_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    if pid_start is not None:
        now = _proc_start(pid)
        if now is not None and now != pid_start:
            return False  # the pid was reused by a process started later
    return True


def _read(lock: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(info: dict[str, Any] | None) -> str:
    if info is None:
        return "an unreadable lock file"
    return (
        f"pid {info.get('pid')} on host '{info.get('host')}', started "
        f"{info.get('started_utc')}, command '{info.get('command')}'"
    )


def _is_stale(info: dict[str, Any] | None) -> bool:
    if info is None or info.get("host") != host_name():
        return False
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    start = info.get("pid_start")
    return not _alive(pid, str(start) if start is not None else None)


def _is_mine(info: dict[str, Any] | None) -> bool:
    return (
        info is not None
        and info.get("host") == host_name()
        and info.get("pid") == os.getpid()
        and info.get("pid_start") == _proc_start(os.getpid())
    )


def _nearby_locks(folder: Path) -> list[Path]:
    """Lock files of folders containing ``folder`` and of its sub-folders two levels down."""
    found = [p / LOCK_NAME for p in folder.parents if (p / LOCK_NAME).is_file()]
    with contextlib.suppress(OSError):
        found += [p for p in folder.glob(f"*/{LOCK_NAME}") if p.is_file()]
        found += [p for p in folder.glob(f"*/*/{LOCK_NAME}") if p.is_file()]
    return found


def _busy_error(folder: Path, lock: Path, info: dict[str, Any] | None) -> OutputError:
    where = "" if lock.parent == folder else f" (lock of '{lock.parent}')"
    return OutputError(
        folder,
        f"in use by another her2scope run{where}: {_describe(info)}. Wait for it to finish; "
        f"if it is not running any more, delete '{lock}' and re-run",
    )


def _command_line() -> str:
    args = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else []
    text = " ".join(args)
    return text if len(text) <= 300 else text[:297] + "..."


def _secondary_rank() -> bool:
    """True in the processes of a ``torchrun`` job other than rank 0."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


@contextlib.contextmanager
def output_lock(
    folder: str | Path, command: str | None = None, clean_depth: int = 4
) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) for the duration of the ``with`` block.

    Checks first that the folder is writable. Raises
    :class:`~her2scope.errors.OutputError` when another live run holds this folder, a folder
    containing it, or a sub-folder of it. Removes orphan temporary files of the atomic writer
    once the lock is held, in the folder and ``clean_depth`` levels of sub-folders (0 for a
    command that writes only into the folder itself, such as ``predict``). ``command`` is recorded in the lock (default: this process's
    command line). A folder this call created is removed again when it is still empty at the
    end (a command refused after taking the lock leaves nothing behind).
    """
    created = not Path(folder).exists()
    folder = ensure_writable(Path(folder).resolve())
    if _secondary_rank():  # torchrun: rank 0 holds the lock for the whole job
        yield folder
        return
    if folder in _HELD:
        _HELD[folder] += 1
        try:
            yield folder
        finally:
            _HELD[folder] -= 1
        return
    for other in _nearby_locks(folder):
        if other.parent in _HELD or other.parent == folder:
            continue
        info = _read(other)
        if not _is_stale(info) and not _is_mine(info):
            raise _busy_error(folder, other, info)
    lock = folder / LOCK_NAME
    info_text = json.dumps(
        {
            "pid": os.getpid(),
            "host": host_name(),
            "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command or _command_line(),
            "pid_start": _proc_start(os.getpid()),
        },
        indent=2,
    )
    for _attempt in range(3):
        if create_exclusive(lock, info_text + "\n"):
            break
        info = _read(lock)
        if _is_mine(info):  # a lock this process left (e.g. a crash inside a test)
            break
        if not _is_stale(info):
            raise _busy_error(folder, lock, info)
        log.warning(
            "her2scope: taking over a stale lock in %s (%s is not running any more)",
            folder,
            _describe(info),
        )
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    else:  # pragma: no cover - three lost races in a row
        raise _busy_error(folder, lock, _read(lock))
    _HELD[folder] = 1
    try:
        removed = clean_orphan_temps(folder, max_depth=clean_depth)
        if removed:
            log.warning(
                "her2scope: removed %d temporary file(s) left by an interrupted run in %s",
                len(removed),
                folder,
            )
        yield folder
    finally:
        _HELD.pop(folder, None)
        if _is_mine(_read(lock)):
            with contextlib.suppress(OSError):
                lock.unlink()
        if created:  # a command that stopped before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()

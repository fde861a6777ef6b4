"""Harness of the hostile-user suite (plain helpers): run the CLI as a clumsy or malicious user would, and check
that it fails *well*.

Every case in ``tests/hostile/`` asserts the same four things, with the helpers below:

1. the exit status (2 for a user error, 1 for "some slides failed", 130 for Ctrl-C);
2. that the message names the problem (the file, row, value or option, and what to do);
3. that no Python traceback and no raw exception name (``IndexError``, ``RecursionError``…) reaches
   the user;
4. that no input and no earlier output changed (hashes of every file before/after).

Helpers
-------
``cli(*args, cwd=None, env=None)``
    Run ``her2scope ARGS`` in this process through :func:`her2scope.cli.main` (fast: no new
    interpreter, torch already imported) and return a :class:`CliResult` with ``exit_code``,
    ``stdout``, ``stderr`` and ``output`` (both). An exception that escapes ``main`` is caught and
    its traceback put into ``stderr``, as the console script would print it, so
    :func:`assert_clean_error` reports it. ``cwd`` changes the directory for the call.
``cli_subprocess(*args, cwd=None, env=None, timeout=120)``
    The same through ``python -m her2scope`` in a child process: slower (seconds), use it only when
    the process boundary matters (signals, logging set-up, warnings printed to stderr).
``assert_clean_error(result, *needles, code=2)``
    Exit status ``code``; every needle (case-insensitive substring) in the output; no traceback and
    no raw Python exception name (:data:`RAW_REASONS`).
``assert_no_traceback(result)``
    Only the third check (for successful runs that print warnings).
``snapshot(*paths) -> Snapshot``
    SHA-256 of every file under the given files/folders (recursively, symlinks not followed).
    ``snap.assert_unchanged()`` re-hashes and fails naming each file that changed, vanished or
    (unless ``allow_new=True``) appeared. Typical use::

        snap = snapshot(cohort_dir, run_dir)
        r = cli("predict", str(slide), "--run", str(run_dir), "--out", str(cohort_dir))
        assert_clean_error(r, "would replace", "--out")
        snap.assert_unchanged()

``untouched(*paths, allow_new=False)``
    Context-manager form of ``snapshot``/``assert_unchanged``.
``writable_copy(src, dst)``
    Copy a session fixture (which must stay read-only) to ``dst`` before a test mutates it.
``read_only(monkeypatch, folder)``
    Make one folder behave as a read-only file system for her2scope's writers (``EROFS``).
``fail_writes(monkeypatch, err=errno.ENOSPC)``
    Make every atomic write of :mod:`her2scope._io` fail at commit time with ``OSError(err)``
    (``ENOSPC`` disk full, ``EROFS`` read-only file system, ``EACCES`` permission denied). The
    suite runs as root in CI, where ``chmod`` cannot make a folder read-only, so faults are
    injected instead.

The fixtures that go with these helpers are in ``conftest.py``; test files import the helpers
from here (``from tests.hostile.harness import cli, ...``), never from a conftest.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Raw Python exception names that must never reach a user (they mean "a bug", not a reason).
RAW_REASONS = (
    "Traceback (most recent call last)",
    "RecursionError",
    "IndexError",
    "KeyError",
    "TypeError",
    "AttributeError",
    "ZeroDivisionError",
    "UnboundLocalError",
    "NameError",
    "AssertionError",
    "inline_container",
    "enforce fail",
    "weights_only=False",
)

_RAW_RE = re.compile("|".join(re.escape(s) for s in RAW_REASONS))


@dataclass
class CliResult:
    """What one CLI call printed and returned."""

    args: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:  # shown by pytest when an assertion on the result fails
        return (
            f"her2scope {' '.join(self.args)}\n-> exit {self.exit_code}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1  # sys.exit("message") prints the message and exits 1


def cli(
    *args: str | os.PathLike[str],
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> CliResult:
    """Run ``her2scope ARGS`` in-process; see the module docstring."""
    from her2scope.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    old_cwd = Path.cwd()
    old_env = dict(os.environ)
    code = 0
    try:
        if env:
            os.environ.update(env)
        os.environ.setdefault("HER2SCOPE_NO_PROGRESS", "1")
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as exc:
                code = _exit_code(exc.code)
            except KeyboardInterrupt:
                err.write("KeyboardInterrupt escaped main()\n")
                code = 130
            except BaseException:  # what the console script would print: a traceback
                err.write(traceback.format_exc())
                code = 1
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return CliResult(tuple(argv), code, out.getvalue(), err.getvalue())


def cli_subprocess(
    *args: str | os.PathLike[str],
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> CliResult:
    """Run ``python -m her2scope ARGS`` in a child process; see the module docstring."""
    argv = [str(a) for a in args]
    full_env = {**os.environ, **_quiet_env(), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "her2scope", *argv],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def _quiet_env() -> dict[str, str]:
    return {
        "HER2SCOPE_NO_PROGRESS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONWARNINGS": "default",
    }


def assert_no_traceback(result: CliResult) -> None:
    """No traceback and no raw Python exception name in what the user saw."""
    m = _RAW_RE.search(result.output)
    assert m is None, f"raw Python reason {m.group(0)!r} reached the user:\n{result}"


def assert_clean_error(result: CliResult, *needles: str, code: int = 2) -> None:
    """Exit status ``code``, every needle in the output (case-insensitive), no traceback."""
    assert result.exit_code == code, f"expected exit {code}:\n{result}"
    low = result.output.lower()
    missing = [n for n in needles if n.lower() not in low]
    assert not missing, f"message does not name {missing}:\n{result}"
    assert_no_traceback(result)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_tree(paths: tuple[Path, ...]) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for root in paths:
        root = Path(root)
        if root.is_symlink():
            hashes[str(root)] = "symlink->" + os.readlink(root)
        elif root.is_file():
            hashes[str(root)] = _hash_file(root)
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    p = Path(dirpath) / name
                    hashes[str(p)] = (
                        "symlink->" + os.readlink(p) if p.is_symlink() else _hash_file(p)
                    )
    return hashes


@dataclass
class Snapshot:
    """Hashes of every file under some paths at one moment; see :func:`snapshot`."""

    paths: tuple[Path, ...]
    hashes: dict[str, str] = field(default_factory=dict)

    def changes(self, allow_new: bool = False) -> list[str]:
        now = _hash_tree(self.paths)
        out = [f"changed: {p}" for p, h in self.hashes.items() if p in now and now[p] != h]
        out += [f"vanished: {p}" for p in self.hashes if p not in now]
        if not allow_new:
            out += [f"appeared: {p}" for p in now if p not in self.hashes]
        return out

    def assert_unchanged(self, allow_new: bool = False) -> None:
        diff = self.changes(allow_new=allow_new)
        assert not diff, "files were touched:\n  " + "\n  ".join(diff)


def snapshot(*paths: str | Path) -> Snapshot:
    """Hash every file under ``paths`` now; call ``.assert_unchanged()`` later."""
    ps = tuple(Path(p) for p in paths)
    return Snapshot(ps, _hash_tree(ps))


@contextlib.contextmanager
def untouched(*paths: str | Path, allow_new: bool = False) -> Iterator[Snapshot]:
    """``with untouched(inputs): ...`` asserts on exit that no file under ``inputs`` changed."""
    snap = snapshot(*paths)
    yield snap
    snap.assert_unchanged(allow_new=allow_new)


def writable_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy a file or folder (a session fixture, which must stay read-only) to ``dst``."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dst


def fail_writes(monkeypatch: pytest.MonkeyPatch, err: int = _errno.ENOSPC) -> None:
    """Make every atomic output of ``her2scope._io`` fail with ``OSError(err)`` when committed."""
    import her2scope._io as _io

    def _fail(tmp: Path, path: Path) -> None:
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(_io, "_commit", _fail)


def read_only(monkeypatch: pytest.MonkeyPatch, folder: str | Path) -> None:
    """Make ``folder`` (and everything under it) behave as a read-only file system for the
    writers of :mod:`her2scope._io`: creating a temporary file or committing one there raises
    ``OSError(EROFS)``; elsewhere writes go on as usual."""
    import tempfile
    import types

    import her2scope._io as _io

    root = Path(folder).resolve()
    real_mkstemp = tempfile.mkstemp
    real_commit = _io._commit

    def _inside(p: str | Path | None) -> bool:
        return p is not None and Path(p).resolve().is_relative_to(root)

    def mkstemp(*args: object, dir: str | Path | None = None, **kw: object) -> tuple[int, str]:
        if _inside(dir):
            raise OSError(_errno.EROFS, os.strerror(_errno.EROFS), str(dir))
        return real_mkstemp(*args, dir=dir, **kw)  # type: ignore[call-overload]

    def commit(tmp: Path, path: Path) -> None:
        if _inside(path):
            raise OSError(_errno.EROFS, os.strerror(_errno.EROFS), str(path))
        real_commit(tmp, path)

    monkeypatch.setattr(_io, "tempfile", types.SimpleNamespace(mkstemp=mkstemp))
    monkeypatch.setattr(_io, "_commit", commit)


#: The model of ``hostile_run``: timm's smallest test network.
HOSTILE_MODEL = "timm:test_resnet"

"""The project's exception types.

Every error a user can cause (a bad slide, a bad manifest row, a bad config value) is raised as a
:class:`Her2ScopeError` subclass whose message names the file, row or value and says what to do.
The CLI prints these without a traceback; anything else is a bug.
"""

from __future__ import annotations

import errno
from pathlib import Path


class Her2ScopeError(Exception):
    """Base class of all errors her2scope raises on purpose."""


class SlideError(Her2ScopeError):
    """A slide could not be opened or read. Carries the path and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"slide '{self.path}': {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across worker processes
        return (type(self), (self.path, self.reason))


class RoiError(Her2ScopeError):
    """An ROI file could not be parsed."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"ROI file '{self.path}': {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, self.reason))


class ManifestError(Her2ScopeError):
    """A manifest has problems; ``problems`` lists every one found (not just the first)."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"manifest '{self.path}' has {len(self.problems)} problem(s):\n{lines}")

    def __reduce__(self) -> tuple[type, tuple[str, list[str]]]:
        return (type(self), (self.path, self.problems))


class ConfigError(Her2ScopeError):
    """A configuration value is missing, unknown or out of range."""


class LeakageError(Her2ScopeError):
    """A patient appears in more than one split."""


class WeightsError(Her2ScopeError):
    """Pretrained weights were asked for but cannot be found or loaded."""


class OutputError(Her2ScopeError, OSError):
    """An output could not be written: read-only folder, disk full, permission denied, a lock
    held by another run, or an output that would replace an input. ``errno`` is kept when the
    cause was an ``OSError`` so callers can still tell "disk full" from "read-only"."""

    def __init__(self, path: str | Path, reason: str, errno: int | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"output '{self.path}': {reason}")
        self.errno = errno
        self.filename = self.path

    def __str__(self) -> str:
        return f"output '{self.path}': {self.reason}"

    def __reduce__(self) -> tuple[type, tuple[str, str, int | None]]:
        return (type(self), (self.path, self.reason, self.errno))


#: Exception types that mean a bug (or an input check that is missing), never a reason to show.
BUG_TYPES: tuple[type[BaseException], ...] = (
    AssertionError,
    AttributeError,
    IndexError,
    KeyError,
    NameError,
    RecursionError,
    TypeError,
    ValueError,
    ZeroDivisionError,
)


#: ``errno`` values that are the user's environment, not a bug, and what to tell the user.
_ENV_ERRNOS = {
    errno.ENOSPC: "disk full (no space left on the device); free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EROFS: "read-only file system; choose a writable output folder",
    errno.EACCES: "permission denied; choose an output folder you can write to",
    errno.EPERM: "operation not permitted; choose an output folder you can write to",
    errno.ENOTDIR: "a path component is a file, not a folder; choose another output folder",
    errno.EISDIR: "a folder is in the way of this output file; move it or choose another folder",
    errno.ENAMETOOLONG: "file name too long; use a shorter output path or slide id",
}


def os_error_reason(exc: BaseException) -> str | None:
    """The user-facing reason of an environment error (disk full, read-only, …), else ``None``.

    Also recognises torch's ``RuntimeError`` from a failed ``torch.save`` (its zip writer reports
    a full disk as ``[enforce fail at inline_container.cc…]``); the raw text is never shown.
    """
    if isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS:
        return _ENV_ERRNOS[exc.errno]
    text = str(exc)
    if isinstance(exc, RuntimeError) and (
        "inline_container" in text or "PytorchStreamWriter" in text or "file write failed" in text
    ):
        return (
            "writing the file failed part-way (most often: disk full); free some space or "
            "write elsewhere, then re-run"
        )
    return None


def reason_of(exc: BaseException, fallback: str) -> str:
    """The user-facing reason of ``exc``, or ``fallback`` where its text is a raw Python reason.

    Our own errors keep their message; disk full / read-only are said in words; a library's own
    message (e.g. a decoder's "not a JPEG file") is kept without the exception's type name; a
    bug type (:data:`BUG_TYPES`: "IndexError: list index out of range") gives ``fallback``,
    which says what it means for the user (e.g. "the file is damaged").
    """
    if isinstance(exc, Her2ScopeError):
        return str(exc)
    env = os_error_reason(exc)
    if env is not None:
        return env
    if isinstance(exc, MemoryError):
        return (
            "out of memory; use smaller batches (--batch-size, train.batch_size) or fewer workers"
        )
    if isinstance(exc, BUG_TYPES) or not str(exc).strip():
        return fallback
    return str(exc).strip().splitlines()[0][:500]


def describe_exception(exc: BaseException) -> str:
    """What to tell a user about ``exc``: our own message as it is; disk full / read-only in
    words; a library's message (e.g. a GPU out of memory) without the Python type name; and for
    a bug type (:data:`BUG_TYPES`) only that it is a bug — raw reasons such as "IndexError: index
    4 is out of bounds" never reach the user (``HER2SCOPE_DEBUG=1`` shows the traceback)."""
    return reason_of(exc, "unexpected internal error (a bug; HER2SCOPE_DEBUG=1 shows the details)")

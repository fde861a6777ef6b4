"""What the commands share: logging set-up, options laid over config sections, value checks.

Options that set a config setting default to "not given" (None) and are laid over the section
(:func:`overlay`), so the section's own default is the only one; ``--help`` shows it through
:func:`default_of`. Each check raises :class:`~her2scope.errors.ConfigError` naming the option,
the value and the allowed range, so ``main`` prints one line and exits with status 2 before any
work starts.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from her2scope.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger("her2scope")


def setup_logging() -> None:
    """INFO messages of her2scope to stderr, unless the application configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")


class _Default(str):
    """A default for ``--help``, read from where it is defined only when help is printed.

    Reading it at import would import the stage's package (pandas for some) on every command.
    """

    _where: tuple[str, str, str]

    def __new__(cls, module: str, owner: str, key: str) -> _Default:
        obj = super().__new__(cls, f"{owner}.{key}")
        obj._where = (module, owner, key)
        return obj

    def _value(self) -> str:
        import dataclasses
        import inspect

        from her2scope._configbase import field_default, show

        module, owner, key = self._where
        obj = getattr(importlib.import_module(module), owner)
        if dataclasses.is_dataclass(obj):
            return show(field_default(typing.cast(type, obj), key))
        return show(inspect.signature(obj).parameters[key].default)

    def __format__(self, spec: str) -> str:
        return format(self._value(), spec)

    def __str__(self) -> str:
        return self._value()


def default_of(module: str, owner: str, key: str) -> str:
    """``show_default`` of an option that sets ``key`` of ``module.owner`` (one source).

    ``owner`` is a config section (its field's default) or a function (its parameter's).
    """
    return _Default(module, owner, key)


def overlay(base: T, given: Mapping[str, Any], options: Mapping[str, str]) -> T:
    """``base`` (a config section) with the given options (the values not None) laid over it.

    Validated as a whole; a problem of a given option names it as typed (``--tile-px 4: must be
    within [8, 8192] …``), a problem of a value from the config file keeps its dotted key.
    """
    from pydantic import ValidationError

    from her2scope._configbase import SECTION_NAMES, adapter, to_dict, translate

    changes = {k: v for k, v in given.items() if v is not None}
    cls = type(base)
    name = SECTION_NAMES[cls]
    data = {**to_dict(base), **changes}
    try:
        return typing.cast(T, adapter(cls).validate_python(data))
    except ValidationError as exc:
        lines = []
        for key, message in translate(exc, cls, name):
            field = key.split("[")[0].removeprefix(f"{name}.")
            if field in changes and field in options:
                message = message.replace(f"{name}.{field}=", f"{options[field]} ", 1)
                message = message.replace(f"{name}.{field}", options[field])
            lines.append(message)
        raise ConfigError("; ".join(lines)) from None


#: µm/px accepted for a slide's ``--mpp``: below 0.05 µm/px no optical scanner resolves anything
#: (the diffraction limit is ~0.2 µm); the upper end is the one ``tiling.target_mpp`` has.
MPP_RANGE = (0.05, 1000.0)


def check_int(option: str, value: int | None, lo: int, hi: int | None = None) -> int | None:
    """``value`` (None passes) must satisfy ``lo <= value [<= hi]``."""
    if value is None:
        return None
    if value < lo or (hi is not None and value > hi):
        allowed = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{option} {value}: must be {allowed}")
    return value


def check_float(
    option: str,
    value: float | None,
    lo: float,
    hi: float,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float | None:
    """``value`` (None passes) must be finite and in ``[lo, hi]`` (ends optionally open)."""
    if value is None:
        return None
    ok = math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo)
    ok = ok and (value < hi if hi_open else value <= hi)
    if not ok:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ConfigError(f"{option} {value}: must be a number in {lb}{lo:g}, {hi:g}{rb}")
    return value


def check_mpp(option: str, value: float | None) -> float | None:
    """µm/px within :data:`MPP_RANGE` (None passes)."""
    lo, hi = MPP_RANGE
    if value is None:
        return None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(
            f"{option} {value}: µm/px must be between {lo:g} and {hi:g} "
            "(e.g. 0.25 for a 40x scan, 0.5 for 20x, 1.0 for 10x)"
        )
    return value


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def bound_workers(option: str, value: int | None, n_items: int | None = None) -> int | None:
    """Validate a worker count and cap it at the CPUs available and at ``n_items``.

    Negative values are refused. A value above the cap is lowered with a notice (more processes
    than CPUs or than slides only costs memory: ``--workers 100000`` once started a thousand
    processes). 0 means "in this process" and is kept.
    """
    if value is None:
        return None
    if value < 0:
        raise ConfigError(f"{option} {value}: must be 0 (in this process) or a positive count")
    cap = available_cpus()
    if n_items is not None:
        cap = min(cap, max(1, n_items))
    if value > cap:
        log.warning(
            "%s %d lowered to %d (CPUs available: %d%s)",
            option,
            value,
            cap,
            available_cpus(),
            f", items: {n_items}" if n_items is not None else "",
        )
        return cap
    return value


def check_device(option: str, device: str | None) -> str | None:
    """A torch device string that exists here (None: automatic choice), else ``ConfigError``."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"{option} '{device}' is not a device; use cpu, cuda or cuda:N (or leave it out "
            "to use a GPU when there is one)"
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(
                f"{option} '{device}': no CUDA GPU is available here (torch.cuda.is_available() "
                "is False); use --device cpu, or leave it out"
            )
        if dev.index is not None and dev.index >= n:
            raise ConfigError(
                f"{option} '{device}': this machine has {n} CUDA GPU(s), numbered 0 to {n - 1}"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"{option} '{device}': Apple MPS is not available here; use cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"{option} '{device}': only cpu, cuda[:N] and mps are supported")
    return device

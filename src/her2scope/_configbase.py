"""What every config section shares: the pydantic dataclass they are, and errors in our words.

A section is a frozen pydantic dataclass (:func:`config_section`): values are validated when it is
built, by ``dataclasses.replace`` too, so an object that exists is in range. Building one with a
bad value raises :class:`~her2scope.errors.ConfigError` listing every problem, each as
``section.key=value: what is allowed`` (pydantic's own messages never reach the user).
Sections are dataclasses on purpose: ``dataclasses.replace`` re-validates, where
``BaseModel.model_copy(update=...)`` would not.

This module imports no stage; :mod:`her2scope.config` composes the sections.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass
from pydantic_core import PydanticCustomError
from typing_extensions import dataclass_transform

from her2scope.errors import ConfigError

T = TypeVar("T")

#: ``(dotted key, message)``; the key orders problems and says which setting a message is about.
Problem = tuple[str, str]

#: Settings of every section: unknown keys refused, NaN and infinities refused.
SECTION_SETTINGS = ConfigDict(extra="forbid", allow_inf_nan=False)

#: Section name (``"train"``) of each section class; ``""`` for the top level.
SECTION_NAMES: dict[type, str] = {}


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _split_commas(value: Any) -> Any:
    """``"A, B"`` → ``["A", "B"]`` (a list written on the command line without brackets).

    Numbers in the list are names too: YAML reads centre ``[1, 2]`` as integers, the manifest
    (read as text) has ``"1"`` and ``"2"``.
    """
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [
            str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value
        ]
    return value


#: A path kept as text (a ``Path`` given in code is accepted).
PathText = typing.Annotated[str, BeforeValidator(_fspath)]
#: Names: a YAML list, or ``"A,B"`` from a command line.
Names = typing.Annotated[tuple[str, ...], BeforeValidator(_split_commas)]


def problem(key: str, message: str) -> PydanticCustomError:
    """An error for a model validator to raise: ``message`` is shown as it is, about ``key``."""
    return problems_error([(key, message)])


def problems_error(problems: list[Problem]) -> PydanticCustomError:
    """One pydantic error carrying several of our problems (a model validator raises it)."""
    text = "; ".join(m for _, m in problems)
    return PydanticCustomError("her2scope", "{text}", {"text": text, "problems": problems})


@dataclass_transform(frozen_default=True, field_specifiers=(Field, dataclasses.field))
def config_section(name: str) -> Callable[[type[T]], type[T]]:
    """Make ``cls`` a frozen, validated config section called ``name`` in messages."""

    def wrap(cls: type[T]) -> type[T]:
        built: Any = _pydantic_dataclass(frozen=True, config=SECTION_SETTINGS)(cls)
        SECTION_NAMES[built] = name
        init = built.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError("; ".join(m for _, m in translate(exc, built, name))) from None

        built.__init__ = __init__
        return typing.cast(type[T], built)

    return wrap


def validate_section(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build section ``cls`` from a mapping; :class:`ConfigError` lists every problem."""
    try:
        return typing.cast(T, adapter(cls).validate_python(dict(data)))
    except ValidationError as exc:
        raise ConfigError("; ".join(m for _, m in translate(exc, cls, where))) from None


def adapter(cls: Any) -> Any:
    """The (cached) pydantic validator of section ``cls``."""
    return _adapter(cls)


@functools.cache
def _adapter(cls: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def field_names(cls: type) -> list[str]:
    """The settings of section ``cls``, in their order."""
    return [f.name for f in dataclasses.fields(typing.cast(Any, cls))]


def field_default(cls: type, name: str) -> Any:
    """The default of setting ``name`` of section ``cls`` (one source for CLI help and docs)."""
    f = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def show(value: Any) -> str:
    """A setting's value as the user writes it: ``None`` → ``null``, tuples as lists."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


# --- pydantic errors → our problems ------------------------------------------------------------


def translate(exc: ValidationError, root: type, prefix: str = "") -> list[Problem]:
    """Every error of ``exc`` (validating ``root``) as ``(dotted key, message)``, one per setting."""
    out: list[Problem] = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False):
        if err["type"] == "her2scope":
            for key, message in err["ctx"]["problems"]:
                out.append((key, message))
            continue
        key, field, owner = _locate(root, prefix, err["loc"])
        if key in seen:  # the branches of a union: one message for the setting
            continue
        seen.add(key)
        out.append((key, _message(err, key, field, owner)))
    return out


def _locate(root: type, prefix: str, loc: Iterable[Any]) -> tuple[str, Any, type | None]:
    """Dotted key of an error location, the field it ends on and the section owning it."""
    key = prefix
    cls: type | None = root
    field = None
    owner: type | None = None
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
            continue
        fields = getattr(cls, "__dataclass_fields__", None) if cls is not None else None
        if fields is None or part not in fields:
            if fields is not None:  # an unknown key of this section
                key = f"{key}.{part}" if key else str(part)
                owner, field, cls = cls, None, None
            continue  # a union branch tag ('bool', 'str')
        owner, field = cls, fields[part]
        key = f"{key}.{part}" if key else str(part)
        cls = _section_type(_hints(owner)[part])
    return key, field, owner


def _section_type(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


@functools.cache
def _hints(owner: type) -> dict[str, Any]:
    return typing.get_type_hints(owner, include_extras=True)


def _message(err: Any, key: str, field: Any, owner: type | None) -> str:
    kind: str = err["type"]
    value = err.get("input")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return _unknown_key(key, owner)
    if kind == "missing":
        return f"{key} is missing"
    tp = _hints(owner).get(field.name) if field is not None and owner is not None else None
    shown = f"{key}={_repr(value, tp)}"
    if kind in (
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "finite_number",
    ):
        rule = _range_rule(tp)
        hint = _description(tp)
        return f"{shown}: {rule or 'must be a finite number'}" + (f" ({hint})" if hint else "")
    if kind == "literal_error":
        choices = _literal_choices(tp)
        allowed = ", ".join(choices) if choices else err.get("ctx", {}).get("expected", "")
        return f"{shown}: not allowed; choose one of {allowed}"
    if kind.startswith("int_"):
        return f"{shown}: must be an integer"
    if kind.startswith("float_"):
        return f"{shown}: must be a number"
    if kind.startswith("bool_"):
        return f"{shown}: must be true or false"
    if kind.startswith("string_"):
        return f"{shown}: must be a string"
    if kind in ("tuple_type", "list_type", "iterable_type"):
        return f"{shown}: must be a list, e.g. [a, b]"
    if kind in ("dataclass_type", "dataclass_args_type", "dict_type", "model_type"):
        return f"{key or 'the config'}={value!r}: must be a mapping of settings (key: value)"
    if kind == "too_short":
        return f"{shown}: needs at least {err.get('ctx', {}).get('min_length', 1)} item(s)"
    if kind == "value_error":
        return f"{shown}: {err['ctx']['error']!s}"
    return f"{shown}: {err['msg']}"


def _unknown_key(key: str, owner: type | None) -> str:
    section, _, name = key.rpartition(".")
    allowed = sorted(getattr(owner, "__dataclass_fields__", {}))
    near = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    guess = f"did you mean '{section + '.' if section else ''}{near[0]}'? " if near else ""
    return (
        f"{key}: unknown config key; {guess}allowed under "
        f"'{section or 'top level'}': {', '.join(allowed)}"
    )


def _strip(tp: Any) -> tuple[Any, list[Any]]:
    """``Annotated[X | None, ...]`` → ``(X, metadata)``."""
    meta: list[Any] = []
    while get_origin(tp) is typing.Annotated:
        args = get_args(tp)
        tp, meta = args[0], meta + list(args[1:])
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return _strip(rest[0])[0], meta + _strip(rest[0])[1]
    return tp, meta


def _bounds(tp: Any) -> tuple[float | None, float | None, bool, bool]:
    lo: Any = None
    hi: Any = None
    lo_open = hi_open = False
    for m in _strip(tp)[1]:
        for item in getattr(m, "metadata", [m]):  # FieldInfo keeps its constraints in .metadata
            if isinstance(item, annotated_types.Gt):
                lo, lo_open = item.gt, True
            elif isinstance(item, annotated_types.Ge):
                lo, lo_open = item.ge, False
            elif isinstance(item, annotated_types.Lt):
                hi, hi_open = item.lt, True
            elif isinstance(item, annotated_types.Le):
                hi, hi_open = item.le, False
    return lo, hi, lo_open, hi_open


def range_rule(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """``must be within (0, 10]`` / ``must be >= 1`` / ``must be < 1``."""

    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    if lo is not None and hi is not None:
        return (
            f"must be within {'(' if lo_open else '['}{num(lo)}, {num(hi)}{')' if hi_open else ']'}"
        )
    if lo is not None:
        return f"must be {'>' if lo_open else '>='} {num(lo)}"
    if hi is not None:
        return f"must be {'<' if hi_open else '<='} {num(hi)}"
    return ""


def _range_rule(tp: Any) -> str:
    return range_rule(*_bounds(tp))


def _description(tp: Any) -> str:
    for m in _strip(tp)[1]:
        if getattr(m, "description", None):
            return str(m.description)
    return ""


def _literal_choices(tp: Any) -> list[str]:
    base = _strip(tp)[0]
    return [str(a) for a in get_args(base)] if get_origin(base) is Literal else []


def _repr(value: Any, tp: Any) -> str:
    """The value as given, numbers as the setting's type shows them (``-1`` → ``-1.0``)."""
    base = _strip(tp)[0] if tp is not None else None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if get_origin(base) is tuple and isinstance(value, (list, tuple)):
        inner = get_args(base)[0] if get_args(base) else None
        if inner is float:
            value = [
                float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value
            ]
        return repr(list(value))
    return repr(value)


def describe(cls: type, name: str) -> tuple[str, str]:
    """``(what is allowed, what it means)`` of setting ``name`` of section ``cls``, for docs."""
    tp = _hints(cls)[name]
    base, _ = _strip(tp)
    optional = get_origin(_strip_annotated(tp)) in (Union, types.UnionType) and type(
        None
    ) in get_args(_strip_annotated(tp))
    rule = _range_rule(tp).removeprefix("must be ")
    if get_origin(base) is Literal:
        allowed = "one of " + ", ".join(f"`{a}`" for a in get_args(base))
    elif base is bool:
        allowed = "true or false"
    elif base is int:
        allowed = f"integer {rule}" if rule else "integer"
    elif base is float:
        allowed = f"number {rule}" if rule else "number"
    elif get_origin(base) is tuple:
        inner = get_args(base)[0] if get_args(base) else str
        allowed = "list of numbers" if inner is float else "list of names"
    elif base is str:
        allowed = "text"
    else:
        allowed = "true, false or text"
    if optional:
        allowed += " or `null`"
    return allowed, _description(tp)


def _strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    return tp


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe dictionary of a (nested) config section; tuples become lists."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return typing.cast(dict[str, Any], conv(cfg))

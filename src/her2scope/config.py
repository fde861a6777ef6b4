"""Configuration: one frozen dataclass per stage, composed into :class:`RunConfig`.

Each stage owns its dataclass (``her2scope.<stage>.config``); this module only composes them and
converts to and from plain dictionaries / YAML. Unknown keys are errors that name the key and the
allowed ones (a typo never silently falls back to a default). ``Literal`` fields are checked.

Overrides use dotted keys: ``apply_overrides(cfg, ["train.epochs=3", "stain.mode=standard"])``;
values are parsed as YAML scalars/lists.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from her2scope.errors import ConfigError

T = TypeVar("T")


def _stage_configs() -> dict[str, type]:
    # Imported lazily so that `import her2scope.config` stays cheap and free of cycles.
    from her2scope.cells.config import CellConfig
    from her2scope.cohort.config import CohortConfig
    from her2scope.engine.config import TrainConfig
    from her2scope.evaluate.config import EvaluateConfig
    from her2scope.explain.config import ExplainConfig
    from her2scope.scoring.qc import QCConfig
    from her2scope.stain.config import StainConfig
    from her2scope.tiling.config import TilingConfig

    return {
        "cohort": CohortConfig,
        "tiling": TilingConfig,
        "stain": StainConfig,
        "train": TrainConfig,
        "evaluate": EvaluateConfig,
        "explain": ExplainConfig,
        "cells": CellConfig,
        "qc": QCConfig,
    }


def _default(name: str) -> Any:
    return field(default_factory=lambda: _stage_configs()[name]())


@dataclass(frozen=True)
class RunConfig:
    """The whole protocol: every stage's settings plus where outputs go."""

    out_dir: str = "runs/her2scope"
    seed: int = 0
    synthetic: bool = False  # set by `her2scope demo`; puts a banner on every report
    cohort: Any = _default("cohort")
    tiling: Any = _default("tiling")
    stain: Any = _default("stain")
    train: Any = _default("train")
    evaluate: Any = _default("evaluate")
    explain: Any = _default("explain")
    cells: Any = _default("cells")
    qc: Any = _default("qc")  # thresholds of predict's slide QC gates (her2scope.scoring.qc)


def check_range(
    problems: list[str],
    where: str,
    value: float | None,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
) -> None:
    """Append ``"where = value: must be …"`` to ``problems`` unless ``lo ≤ value ≤ hi``.

    ``lo_open`` / ``hi_open`` make a bound strict; NaN and infinities are always out of range.
    ``hint`` is added after the rule (what the setting means or what to do). The stage config
    dataclasses use it in their ``problems()`` methods, so each rule has one home.
    """
    import math

    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if ok:
        return

    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    if lo is not None and hi is not None:
        rule = (
            f"must be within {'(' if lo_open else '['}{num(lo)}, {num(hi)}{')' if hi_open else ']'}"
        )
    elif lo is not None:
        rule = f"must be {'>' if lo_open else '>='} {num(lo)}"
    else:
        assert hi is not None
        rule = f"must be {'<' if hi_open else '<='} {num(hi)}"
    problems.append(f"{where} = {value!r}: {rule}" + (f" ({hint})" if hint else ""))


def config_problems(cfg: RunConfig) -> list[str]:
    """Every out-of-range or inconsistent setting of every section (no file but config paths read).

    Each section's rules live in its dataclass (``problems()``); this only collects them and adds
    the top-level ones.
    """
    problems: list[str] = []
    if not str(cfg.out_dir).strip():
        problems.append("out_dir is empty; name the output folder")
    check_range(problems, "seed", cfg.seed, 0, 2**32 - 1)
    for name in _stage_configs():
        section = getattr(cfg, name)
        check = getattr(section, "problems", None)
        if check is not None:
            problems += check()
    return problems


def validate_all(cfg: RunConfig, check_manifest: bool = True) -> None:
    """Check the whole resolved config and (``check_manifest``) the manifest before any work.

    Collects every problem of every section (ranges, choices, model names from the model
    registry, files named by the config: pretrained weights, stain reference, splits CSV), then
    reads the manifest with the project's one reader (columns, rows, labels under
    ``cohort.label_scheme``, files, paths) and plans the splits on it (``test_centers`` exist in
    the manifest, a patient in one centre, something left to train on, folds). Raises one
    :class:`ConfigError` listing them all; returns None when everything is fine. Reads only; it
    writes nothing. Called at the start of ``run_pipeline`` and of the CLI commands.
    """
    problems = config_problems(cfg)
    if check_manifest:
        problems += _manifest_problems(cfg)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(
            f"{len(problems)} problem(s) in the configuration and manifest; nothing was run. "
            f"Fix them (in the config file or as KEY=VALUE overrides) and run again:\n{lines}"
        )


def _manifest_problems(cfg: RunConfig) -> list[str]:
    from her2scope.errors import Her2ScopeError, ManifestError

    manifest = Path(cfg.cohort.manifest)
    if not str(cfg.cohort.manifest).strip():
        return ["cohort.manifest is empty; give the manifest CSV (cohort.manifest=PATH)"]
    if not manifest.is_file():
        return [
            f"cohort.manifest '{manifest}' not found (looked for {manifest.resolve()}); set it in "
            "the config or with cohort.manifest=PATH"
        ]
    from her2scope.cohort.manifest import load_manifest
    from her2scope.cohort.splits import make_splits
    from her2scope.labels import SCHEMES

    if cfg.cohort.label_scheme not in SCHEMES:
        return []  # already reported by the cohort section
    try:
        df = load_manifest(manifest, cfg.cohort.label_scheme, cfg.cohort.allow_absolute_paths)
    except ManifestError as exc:
        return [f"manifest '{exc.path}': {p}" for p in exc.problems]
    if cfg.cohort.split_mode == "file" and not (
        cfg.cohort.splits_csv and Path(cfg.cohort.splits_csv).is_file()
    ):
        return []  # reported by the cohort section; the split cannot be planned without it
    try:
        make_splits(df, cfg.cohort)
    except Her2ScopeError as exc:
        return [f"splits of manifest '{manifest}': {exc}"]
    return []


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe dictionary of a (nested) config dataclass; tuples become lists."""

    def conv(v: Any) -> Any:
        if is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a dictionary, checking keys and simple types.

    ``where`` is the dotted path used in error messages (``train.epochs``).
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    if cls is RunConfig:
        hints.update(_stage_configs())
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"allowed under '{where or 'top level'}': {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config '{where}' must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            f"config '{where}': {value!r} fits none of the allowed types ({'; '.join(errors)})"
        )
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"config '{where}' = {value!r} is not allowed; choose one of: "
                + ", ".join(repr(a) for a in args)
            )
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config '{where}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config '{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config '{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"config '{where}' must be a string, got {value!r}")
        return str(value)
    return value


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config file, apply dotted overrides, and validate it."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at top level")
    data = _apply_overrides_dict(data, overrides or [])
    try:
        return from_dict(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a new config with ``key.sub=value`` overrides applied."""
    return from_dict(RunConfig, _apply_overrides_dict(to_dict(cfg), overrides))


def _apply_overrides_dict(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    import yaml

    from her2scope._io import write_text

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

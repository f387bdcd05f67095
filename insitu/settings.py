"""Typed settings, loaded in one order for every process: defaults, then a TOML file,
then ``INSITU_<SECTION>_<FIELD>`` environment variables, then command-line flags.

No other module reads ``os.environ``; processes build one settings object at start.

Example::

    s = load_settings(CoordinatorSettings, "coordinator", file=Path("c.toml"),
                      overrides={"listen": "127.0.0.1:0"})
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from insitu.errors import ErrorCode, InsituError

__all__ = ["load_settings", "settings_to_toml"]

T = TypeVar("T")


def _coerce(value: Any, typ: Any, name: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(value, args[0], name)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            return int(value)
        if typ is float:
            return float(value)
        if typ is Path:
            return Path(value).expanduser()
        if typ is str:
            if not isinstance(value, str | int | float):
                raise ValueError(value)
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            (inner, *_rest) = typing.get_args(typ)
            return tuple(_coerce(v, inner, name) for v in value)
    except (TypeError, ValueError):
        raise InsituError(ErrorCode.CONFIG, f"setting {name!r} has an invalid value") from None
    return value


def load_settings(
    cls: type[T],
    section: str,
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` (a dataclass) from defaults, ``file`` [section], env, then overrides.

    Unknown keys in the file are an error (a typo must not silently change nothing).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError("settings class must be a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(Path(file).read_text())
        except FileNotFoundError:
            raise InsituError(ErrorCode.CONFIG, f"config file {file} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise InsituError(ErrorCode.CONFIG, f"config file {file} is not TOML: {e}") from None
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise InsituError(ErrorCode.CONFIG, f"[{section}] must be a table")
        unknown = set(table) - fields
        if unknown:
            raise InsituError(
                ErrorCode.CONFIG, f"unknown settings in [{section}]: {sorted(unknown)}"
            )
        values.update(table)
    environ = os.environ if env is None else env
    prefix = f"INSITU_{section.upper()}_"
    for name in fields:
        key = prefix + name.upper()
        if key in environ:
            values[name] = environ[key]
    for name, value in (overrides or {}).items():
        if name not in fields:
            raise InsituError(ErrorCode.CONFIG, f"unknown setting {name!r}")
        if value is not None:
            values[name] = value
    coerced = {k: _coerce(v, hints[k], k) for k, v in values.items()}
    try:
        return cls(**coerced)
    except TypeError as e:
        raise InsituError(ErrorCode.CONFIG, f"missing settings for [{section}]: {e}") from None


def settings_to_toml(section: str, obj: Any) -> str:
    """Render a settings dataclass as a TOML table (paths as strings, None omitted)."""
    lines = [f"[{section}]"]
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        if isinstance(v, bool):
            lines.append(f"{f.name} = {'true' if v else 'false'}")
        elif isinstance(v, int | float):
            lines.append(f"{f.name} = {v}")
        elif isinstance(v, tuple):
            lines.append(f"{f.name} = [{', '.join(_q(str(x)) for x in v)}]")
        else:
            lines.append(f"{f.name} = {_q(str(v))}")
    return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

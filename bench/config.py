"""Plugin configs: frozen dataclasses built from user overrides and checked on entry.

A config dataclass is the single source of truth for a plugin's settings: it is hashed into cell
ids, written into every record, and set from grid files. `build_config` turns a mapping of
overrides into an instance, naming the field and the allowed values when something is wrong.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Iterable, Literal, Mapping


class ConfigError(ValueError):
    """A bad plugin name, config field or value. The message names the field and what is allowed."""


def comma_choices(text: str | Iterable[str], allowed: Iterable[str], option: str, noun: str) -> tuple[str, ...]:
    """'a,b' (or ['a', 'b']) -> ('a', 'b'): each one of `allowed`, in the given order, once.

    Anything else is a ValueError that names `option` and the allowed names.
    """
    allowed = tuple(allowed)
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        problem = f"unknown {noun} {unknown[0]!r}" if unknown else f"name at least one {noun}"
        raise ValueError(f"{option}: {problem}; allowed: {', '.join(allowed)} (any comma-separated subset)")
    return tuple(dict.fromkeys(names))


def build_config(cls: type, overrides: Mapping[str, Any] | None, owner: str):
    """Instantiate the dataclass `cls` from `overrides`, coercing strings from the CLI."""
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(
            f"{owner}: unknown config field {unknown[0]!r}; valid fields: {', '.join(fields) or '(none)'}"
        )
    hints = typing.get_type_hints(cls)
    values = {name: coerce(value, hints[name], f"{owner}.{name}") for name, value in overrides.items()}
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{owner}.{err}") from None


def coerce(value: Any, type_: Any, where: str) -> Any:
    """Check `value` against `type_`, converting CLI strings and TOML ints where that is lossless."""
    origin = typing.get_origin(type_)
    if origin is Literal:
        allowed = typing.get_args(type_)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(type_)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, *rest) = typing.get_args(type_) or (Any,)
        return tuple(coerce(v, item_type, where) for v in value)
    if type_ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if type_ in (int, float):
        if isinstance(value, str):
            try:
                value = parse_number(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if type_ is int:
            if float(value) != int(value):
                raise ConfigError(f"{where}: expected a whole number, got {value!r}")
            return int(value)
        return float(value)
    if type_ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return value
    return value


def parse_number(text: str) -> float:
    """Numbers as researchers write budgets: '0.03', '8/255'."""
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def require(condition: bool, field: str, message: str) -> None:
    """Raise a ConfigError for `field` unless `condition` holds (used in __post_init__)."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


OMITTED_AT_DEFAULT = "omitted_at_default"  # field metadata key: see `added_field`


def added_field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field added after records were made with its class: left out of `as_dict` while it holds
    its default (`default`, or what `default_factory` makes: `dict` for an empty dict).

    Cell ids hash `as_dict`, so a field that adds an option (and whose default keeps the old
    behaviour) leaves the ids of configs, and cells, that do not set it unchanged; set, it is hashed
    and recorded like any other field.
    """
    return dataclasses.field(default=default, default_factory=default_factory, metadata={OMITTED_AT_DEFAULT: True})


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def as_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a config dataclass (tuples become lists), without `added_field`s at their
    default, its nested dataclasses' (a cell's `DataSpec`) included."""
    if not dataclasses.is_dataclass(config):
        return {}
    d = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get(OMITTED_AT_DEFAULT) and value == _default(f):
            continue
        d[f.name] = as_dict(value) if dataclasses.is_dataclass(value) else value
    return json_ready(d)


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value

"""Plugin configs: frozen dataclasses built from user overrides and checked on entry.

A config dataclass is the single source of truth for a plugin's settings: it is hashed into cell
ids, written into every record, and set from grid files. `build_config` turns a mapping of
overrides into an instance, naming the field and the allowed values when something is wrong.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import math
import textwrap
import tokenize
import types
import typing
from fractions import Fraction
from typing import Any, Callable, Iterable, Literal, Mapping


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
    except ConfigError as err:  # a check that names its field under `owner` already (data.train_size) keeps it
        message = str(err)
        raise ConfigError(message if message.startswith(f"{owner}.") else f"{owner}.{message}") from None


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
            except (ValueError, ZeroDivisionError):
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if type_ is int:
            # NaN and infinity (TOML's nan, inf) are no whole number; int() of them would raise.
            if not math.isfinite(value) or float(value) != int(value):
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


def on_255_grid(value: float) -> int | None:
    """k where `value` is k/255 (to float precision), else None: budgets and step sizes as written."""
    frac = Fraction(value).limit_denominator(255)
    return frac.numerator if frac.denominator == 255 and math.isclose(float(frac), value, rel_tol=1e-6) else None


def budget_label(norm: str, budget: float) -> str:
    """'Linf 8/255' for L-inf budgets on the 1/255 grid, 'L2 1.30' for L2, 'L0 1 px' for L0, and
    'unbounded' for L-inf 1 (the whole pixel range: what an attack bounded by no norm, CUDA, claims).
    The reports' label of a budget, and every command's."""
    if budget == 0:
        return ""
    if norm == "linf" and budget >= 1:
        return "unbounded"
    if norm == "l0":
        return f"L0 {budget:g} px"
    levels = round(budget * 255)
    if norm == "linf" and math.isclose(levels, budget * 255, rel_tol=1e-5):  # 3/255 too (1/85 in lowest terms)
        return f"Linf {levels}/255"
    return f"{'Linf' if norm == 'linf' else 'L2'} {budget:.2f}"


HELP = "help"  # field metadata key: a field's help where a comment in its source cannot say it


def field_help(cls: type) -> dict[str, str]:
    """Each init field of the dataclass `cls` -> its help: `metadata["help"]` where the field sets one,
    else the comment at the end of its line in the source of the class that declares it (the nearest
    parent that comments it, for an inherited or re-declared field), else the comment lines right above it. '' where there is none or the
    source cannot be read (a class made at run time).

    Configs say a field's unit and reason in a comment, as the code is read; this reads the same
    comments for `bench show`, so the help cannot drift from the code.
    """
    helps = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        text = f.metadata.get(HELP)
        if text is None:  # a class that declares the field again for another default may leave its help to a parent
            owners = [k for k in cls.__mro__ if f.name in vars(k).get("__annotations__", {})]
            text = next((t for k in owners if (t := _declared_comments(k).get(f.name))), "")
        helps[f.name] = text
    return helps


def argument_help(function: Callable) -> dict[str, str]:
    """Each parameter of `function` -> the comment at the end of its line in the signature (where it is
    the line's only parameter) or the comment lines right above it; '' where there is none."""
    names = list(inspect.signature(function).parameters)
    found = _declared_comments(inspect.unwrap(function))
    return {name: found.get(name, "") for name in names}


@functools.cache
def _declared_comments(obj: Any) -> dict[str, str]:
    """Name -> comment of each field a class body declares (`name: type = ...`), or of each parameter
    of a function's signature, read from the source with `tokenize` (so a `#` in a string is no comment)."""
    try:
        source = textwrap.dedent("".join(inspect.getsourcelines(obj)[0]))
        tree = ast.parse(source)
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    lines = source.splitlines()
    node = tree.body[0]
    if isinstance(node, ast.ClassDef):
        declared = [(n.target.id, n.lineno, n.end_lineno) for n in node.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        params = [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs,
                  *([a.kwarg] if a.kwarg else [])]
        per_line = [p.lineno for p in params]
        # A comment on a line of several parameters says nothing of any one of them.
        declared = [(p.arg, p.lineno, p.lineno) for p in params if per_line.count(p.lineno) == 1]
    else:
        return {}
    found = {}
    for name, first, last in declared:
        trailing = [comments[n] for n in range(first, last + 1) if n in comments]
        above, n = [], first - 1
        while n in comments and lines[n - 1].lstrip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        found[name] = " ".join(trailing or above)
    return found


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

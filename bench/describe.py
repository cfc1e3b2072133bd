"""What `bench show NAME` prints: a plugin's or recipe's settings, their defaults and help, and its presets.

The help of each setting is the comment beside it in the code (`bench.config.field_help`,
`argument_help`), so what `bench show` says is what the code's reader sees. A name is looked up in
every kind (attack, defense, arch, recipe); `KIND:NAME` says which where one name is of two kinds.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from bench.config import ConfigError, argument_help, field_help, on_255_grid
from bench.registry import ARCHS, ATTACKS, COMPOSE, DEFENSES, defense_parts
from bench.train import RECIPES, Recipe

KINDS = ("attack", "defense", "arch", "recipe")
RECIPE = "recipe"  # `bench show recipe`: the recipe's fields; a preset's name (em60) shows that preset
SUPPLIED = ("num_classes",)  # an architecture's arguments the data sets, not the grid


@dataclass(frozen=True)
class Setting:
    name: str
    type: str
    default: Any
    help: str


@dataclass(frozen=True)
class Description:
    kind: str
    name: str
    summary: str
    paper: str
    settings: tuple[Setting, ...]
    presets: dict  # preset name -> [(field, default, value)]
    where: str  # how a grid sets a field
    column: str = "default"  # what the value column holds: the defaults, or a preset's values


def describe(text: str) -> list[Description]:
    """The description of `text` (`NAME` or `KIND:NAME`; a composed defense `a+b` gives one per part).
    ConfigError for a name of no kind (with the close ones) or of several (with how to say which)."""
    kind, sep, name = text.partition(":")
    if not sep:
        kind, name = "", text
    kind = kind.strip().removesuffix("s")
    name = name.strip()
    if sep and kind not in KINDS:
        raise ConfigError(f"bench show {text}: unknown kind {kind!r}; allowed: {', '.join(KINDS)} (as in attack:em)")
    if COMPOSE in name and kind in ("", "defense"):
        return [d for part in defense_parts(name) for d in describe(f"defense:{part}")]
    kinds = [kind] if kind else kinds_of(name)
    if not kinds:
        close = difflib.get_close_matches(name, all_names(), n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ConfigError(f"bench show {text}: no attack, defense, arch or recipe is called {name!r}{hint} "
                          "(bench list shows them all)")
    if len(kinds) > 1:
        raise ConfigError(f"bench show {text}: {name!r} is {' and '.join(f'an {k}' if k[0] in 'aeiou' else f'a {k}' for k in kinds)}; "
                          f"say which: {' or '.join(f'bench show {k}:{name}' for k in kinds)}")
    (kind,) = kinds
    if kind not in kinds_of(name):
        if kinds_of(name):
            raise ConfigError(f"bench show {text}: {name!r} is no {kind}; it is " + " and ".join(
                f"{'an' if k[0] in 'aeiou' else 'a'} {k} (bench show {k}:{name})" for k in kinds_of(name)))
        registry = {"attack": ATTACKS, "defense": DEFENSES, "arch": ARCHS}.get(kind)
        if registry is not None:
            registry.entry(name)  # the registry's error: unknown, did you mean, the known names
        raise ConfigError(f"bench show {text}: no recipe preset {name!r}; known: {RECIPE}, {', '.join(RECIPES)}")
    return [{"attack": _plugin, "defense": _plugin, "arch": _arch, "recipe": _recipe}[kind](kind, name)]


def kinds_of(name: str) -> list[str]:
    found = [registry.kind for registry in (ATTACKS, DEFENSES, ARCHS) if name in registry]
    return found + ([RECIPE] if name == RECIPE or name in RECIPES else [])


def all_names() -> list[str]:
    return [*ATTACKS.names(), *DEFENSES.names(), *ARCHS.names(), RECIPE, *RECIPES]


def _plugin(kind: str, name: str) -> Description:
    registry = ATTACKS if kind == "attack" else DEFENSES
    entry = registry.entry(name)
    config = entry.obj.Config
    defaults = {f.name: _default(f) for f in dataclasses.fields(config) if f.init}
    presets = {preset: [(k, defaults.get(k), v) for k, v in overrides.items()]
               for preset, overrides in getattr(entry.obj, "presets", {}).items()}
    return Description(kind, name, entry.summary, entry.paper, _settings(config), presets,
                       f'[config.{name}] FIELD = VALUE (preset = "NAME" starts from a preset), or --set {name}.FIELD=VALUE')


def _arch(kind: str, name: str) -> Description:
    entry = ARCHS.entry(name)
    hints = typing.get_type_hints(entry.obj)
    helps = argument_help(entry.obj)
    settings = tuple(Setting(p.name, type_text(hints.get(p.name, Any)), p.default, helps.get(p.name, ""))
                     for p in inspect.signature(entry.obj).parameters.values() if p.name not in SUPPLIED)
    return Description(kind, name, entry.summary, entry.paper, settings, {},
                       f"[config.{name}] ARGUMENT = VALUE, or --set {name}.ARGUMENT=VALUE")


def _recipe(kind: str, name: str) -> Description:
    where = 'recipe = "PRESET", or a table {preset = "PRESET", FIELD = VALUE}, or --set recipe.FIELD=VALUE'
    defaults = Recipe()
    if name == RECIPE:
        presets = {preset: _changes(defaults, recipe) for preset, recipe in RECIPES.items()}
        return Description(kind, RECIPE, "how the victim model of every cell of a grid is trained", "",
                           _settings(Recipe), presets, where)
    preset = RECIPES[name]
    settings = tuple(dataclasses.replace(s, default=getattr(preset, s.name)) for s in _settings(Recipe))
    return Description(kind, name, "a recipe preset (`bench show recipe` gives the defaults)", "", settings,
                       {f"{name} against the recipe's defaults": _changes(defaults, preset)}, where, column="value")


def _changes(base: Recipe, preset: Recipe) -> list[tuple[str, Any, Any]]:
    return [(f.name, getattr(base, f.name), getattr(preset, f.name)) for f in dataclasses.fields(Recipe)
            if getattr(base, f.name) != getattr(preset, f.name)]


def _settings(config: type) -> tuple[Setting, ...]:
    hints = typing.get_type_hints(config)
    helps = field_help(config)
    return tuple(Setting(f.name, type_text(hints[f.name]), _default(f), helps[f.name])
                 for f in dataclasses.fields(config) if f.init)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def type_text(type_: Any) -> str:
    """A field's type as a user types its value: `int`, `linf|l2|l0`, `float or none`, `list of float`."""
    origin = typing.get_origin(type_)
    if origin is Literal:
        return "|".join(map(str, typing.get_args(type_)))
    if origin in (typing.Union, types.UnionType):
        options = [type_text(t) for t in typing.get_args(type_) if t is not type(None)]
        return " or ".join(options) + (" or none" if type(None) in typing.get_args(type_) else "")
    if origin in (tuple, list):
        args = [a for a in typing.get_args(type_) if a is not Ellipsis]
        return "list of " + (type_text(args[0]) if args else "values")
    if origin is dict or type_ is dict:
        return "table"
    return getattr(type_, "__name__", str(type_))


def setting_text(value: Any) -> str:
    """A setting as it is written: 8/255 and 0.8/255 for pixel steps whose decimals run long, `none`,
    lists joined, `""` for empty text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        plain = f"{value:g}"
        if len(plain.lstrip("-0.").replace(".", "").split("e")[0]) <= 4:  # 0.1, 5e-04, 0.9: as written
            return plain
        levels = on_255_grid(value)
        if levels is not None:
            return f"{levels}/255"
        tenths = round(value * 255, 1)
        return f"{tenths:g}/255" if abs(value * 255 - tenths) < 1e-6 else plain
    if isinstance(value, (list, tuple)):
        return ", ".join(setting_text(v) for v in value) or "(empty)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={setting_text(v)}" for k, v in value.items()) or "(empty)"
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


def format_description(d: Description) -> str:
    lines = [f"{d.kind} {d.name}: {d.summary}" if d.name != RECIPE else f"recipe: {d.summary}"]
    if d.paper:
        lines.append(f"  paper: {d.paper}")
    if d.settings:
        lines.append(f"  set in a grid as {d.where}")
        rows = [("field", "type", d.column, "help")] + [(s.name, s.type, setting_text(s.default), s.help)
                                                          for s in d.settings]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    else:
        lines.append("  no settings")
    if d.presets:
        lines.append("  presets:" if d.column == "default" else "")
        for preset, changes in d.presets.items():
            lines.append(f"    {preset}" + ("" if changes else ": the defaults"))
            width = max((len(f) for f, _, _ in changes), default=0)
            lines += [f"      {f + ':':<{width + 1}} {setting_text(old)} -> {setting_text(new)}" for f, old, new in changes]
    return "\n".join(line for line in lines if line)

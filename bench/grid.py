"""Grids: TOML files naming data, attacks, defenses, architectures, a recipe and seeds.

```toml
description = "one line shown by `bench list grids`"
attacks = ["clean", "ops"]
defenses = ["none", "jpeg"]
archs = ["tiny_cnn"]
seeds = [0]
recipe = "cpu_smoke"            # a preset, or a table: {preset = "em60", epochs = 40}
[data]
name = "cifar10"                # or a path to an .npz
train_size = 5000
[config.jpeg]                   # overrides for any attack, defense or arch of the grid
quality = 10
analysis = ["mi"]               # optional: extra measurements per cell (allowed: mi)
```

A defense named `a+b` composes registered defenses (`jpeg+cutout`, `iss_gray+at`); each part is
checked, and `[config.cutout]` applies to cutout wherever it appears. A composed cell records one
config table per part; a plain name records its own config, so its cell id does not change.

Everything is checked on load, before any work starts: unknown keys, unknown plugins, unknown
config fields and out-of-range values are errors that name the key and what is allowed.
`GridOverrides` applies command-line changes (`--set em.steps=10`, `--attacks em,ops`, ...) to the
raw TOML first, so they go through the same checks.
"""
from __future__ import annotations

import copy
import itertools
import logging
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.cell import CellSpec, cell_label
from bench.config import ConfigError, as_dict, build_config, coerce
from bench.data import DataSpec
from bench.registry import ARCHS, REGISTRIES, defense_parts
from bench.train import RECIPES, Recipe, make_recipe
from defenses.base import create_defense

log = logging.getLogger("bench")

GRID_KEYS = ("description", "data", "attacks", "defenses", "archs", "seeds", "recipe", "config", "analysis")
ANALYSES = ("mi",)  # per-cell measurements the runner knows: mi = bench.mi on the trained model's features
PLUGIN_LISTS = tuple(REGISTRIES)  # a grid's plugin lists: attacks, defenses, archs


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    data: DataSpec
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    archs: tuple[str, ...]
    seeds: tuple[int, ...]
    recipe: Recipe
    recipe_name: str
    config: dict = field(default_factory=dict)  # plugin name -> validated config dict
    analysis: tuple[str, ...] = ()

    def defense_config(self, defense: str) -> dict:
        """A plain defense's config, or {part: config} for a composed one."""
        parts = defense_parts(defense)
        if len(parts) == 1:
            return self.config.get(defense, {})
        return {part: self.config.get(part, {}) for part in parts}

    def cells(self) -> list[CellSpec]:
        """Every cell, grouped so that cells sharing a poison run one after another."""
        return [
            CellSpec(self.data, attack, self.config.get(attack, {}), defense, self.defense_config(defense),
                     arch, self.config.get(arch, {}), self.recipe, self.recipe_name, seed, self.analysis)
            for seed, attack, arch, defense in itertools.product(self.seeds, self.attacks, self.archs, self.defenses)
        ]


def shipped_grids() -> dict[str, Any]:
    """Name -> resource of every grid file shipped in the package."""
    folder = resources.files("bench") / "grids"
    return {p.name[: -len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def load_grid(name_or_path: str, overrides: GridOverrides | None = None) -> Grid:
    """A shipped grid by name, or a user's grid file by path, with command-line `overrides` applied."""
    shipped = shipped_grids()
    if name_or_path in shipped:
        text, name = shipped[name_or_path].read_text(), name_or_path
    elif Path(name_or_path).is_file():
        try:
            text, name = Path(name_or_path).read_text(encoding="utf-8"), Path(name_or_path).stem
        except UnicodeDecodeError as err:
            raise ConfigError(f"grid {name_or_path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                              "a grid is a TOML file") from None
        except OSError as err:
            raise ConfigError(f"grid {name_or_path}: cannot be read ({err.strerror})") from None
    else:
        raise ConfigError(f"grid {name_or_path!r} is neither a shipped grid ({', '.join(sorted(shipped))}) nor a file")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"grid {name}: not valid TOML: {err}") from None
    return parse_grid(overrides.apply(raw, name) if overrides else raw, name)


def parse_grid(raw: dict, name: str) -> Grid:
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"grid {name}: unknown key {unknown[0]!r}; allowed keys: {', '.join(GRID_KEYS)}")
    lists = {}
    for key, registry in REGISTRIES.items():
        values = raw.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"grid {name}: {key} must be a non-empty list of names; known: {', '.join(registry.names())}")
        lists[key] = tuple(values)
    named = _named_plugins(raw)
    for key, registry in REGISTRIES.items():
        for plugin in named[key]:
            registry.entry(plugin)  # raises with the known names
    seeds = _seeds_of(raw.get("seeds", [0]), name)
    data_raw = raw.get("data", {})
    if not isinstance(data_raw, dict):
        raise ConfigError(f"grid {name}: data must be a table (name, train_size, test_size, subset_seed)")
    data = build_config(DataSpec, data_raw, "data")
    recipe_raw = raw.get("recipe", "em60")
    if not isinstance(recipe_raw, (str, dict)):
        raise ConfigError(f"grid {name}: recipe must be a preset name ({', '.join(RECIPES)}) or a table")
    recipe = make_recipe(recipe_raw)
    recipe_name = recipe_raw if isinstance(recipe_raw, str) else recipe_raw.get("preset", "em60") + "*"
    if not isinstance(raw.get("config", {}), dict):
        raise ConfigError(f"grid {name}: config must be tables [config.NAME] of field = value")
    config = {}
    for plugin, overrides in raw.get("config", {}).items():
        registry = next((REGISTRIES[key] for key in PLUGIN_LISTS if plugin in named[key]), None)
        if registry is None:
            raise ConfigError(f"grid {name}: [config.{plugin}] names no attack, defense or arch of this grid")
        if not isinstance(overrides, dict):
            raise ConfigError(f"grid {name}: config.{plugin} must be a table of field = value")
        if registry is ARCHS:
            config[plugin] = _arch_arguments(plugin, overrides)
        else:
            config[plugin] = as_dict(registry.config(plugin, overrides))
    # A plugin without overrides still records its full default config, so ids change with defaults.
    for key in ("attacks", "defenses"):  # an arch records only its overrides: its arguments, not a config
        registry = REGISTRIES[key]
        for plugin in named[key]:
            if plugin not in config:
                config[plugin] = as_dict(registry.config(plugin))
    for defense in lists["defenses"]:
        if len(defense_parts(defense)) > 1:  # incompatible parts (two adversaries, ...) fail here
            create_defense(defense, {part: config[part] for part in defense_parts(defense)})
    return Grid(name, str(raw.get("description", "")), data, lists["attacks"], lists["defenses"],
                lists["archs"], tuple(seeds), recipe, recipe_name, config, _analysis(raw.get("analysis", []), name))


MAX_SEED = 2**32 - 1  # the range every seeded library takes (numpy's legacy RandomState the narrowest)


def _seeds_of(value: Any, grid: str) -> list[int]:
    """A grid's seeds: whole numbers in [0, MAX_SEED] (not booleans, which TOML and Python count as
    integers), each once; a repeated seed runs once, with a warning."""
    allowed = f"a non-empty list of whole numbers from 0 to {MAX_SEED}"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"grid {grid}: seeds must be {allowed}, got {value!r}")
    for seed in value:
        if type(seed) is not int or not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"grid {grid}: seeds must be {allowed}; {seed!r} is not")
    unique = list(dict.fromkeys(value))
    if len(unique) < len(value):
        repeated = sorted({s for s in value if value.count(s) > 1})
        log.warning("grid %s: seed(s) %s listed more than once; each runs once", grid, ", ".join(map(str, repeated)))
    return unique


def _analysis(value: Any, grid: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"grid {grid}: analysis must be a list of names; allowed: {', '.join(ANALYSES)}")
    for item in value:
        if item not in ANALYSES:
            raise ConfigError(f"grid {grid}: unknown analysis {item!r}; allowed: {', '.join(ANALYSES)}")
    return tuple(sorted(set(value)))  # order-free, so the cell id does not depend on how the list is written


def _arch_arguments(arch: str, overrides: dict) -> dict:
    """An architecture's keyword arguments, coerced to its annotations (the CLI gives strings)."""
    hints = typing.get_type_hints(ARCHS.get(arch))
    arguments = {k: coerce(v, hints.get(k, Any), f"arch {arch}.{k}") for k, v in overrides.items()}
    try:
        ARCHS.create(arch, arguments)  # checks the names against the signature, and that the model builds
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(f"arch {arch}") else f"arch {arch}.{message}") from None
    return arguments


@dataclass(frozen=True)
class GridOverrides:
    """Changes to a grid from the command line, applied to its raw TOML before `parse_grid` checks it.

    `sets` are `PLUGIN.FIELD=VALUE` (a config field of an attack, defense or arch of the grid),
    `recipe.FIELD=VALUE` or `data.FIELD=VALUE`; values are strings, coerced by the config's types.
    `attacks`, `defenses`, `archs` and `seeds` replace the grid's lists: any registered name is
    allowed (to run a new plugin under a shipped grid's settings), and a cell the grid already had
    keeps its id. Any other change makes a different experiment, with other cell ids.
    """

    sets: tuple[str, ...] = ()
    attacks: tuple[str, ...] | None = None
    defenses: tuple[str, ...] | None = None
    archs: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None

    @classmethod
    def from_cli(cls, sets=(), attacks: str | None = None, defenses: str | None = None, archs: str | None = None,
                 seeds: str | None = None) -> GridOverrides:
        """From the options as typed: comma-separated names and seeds."""
        return cls(tuple(sets), *(_names(v) for v in (attacks, defenses, archs)), _seeds(seeds))

    def apply(self, raw: dict, grid: str) -> dict:
        """A changed copy of the grid's TOML; `raw` is left as it is."""
        raw = copy.deepcopy(raw)
        replaced = [key for key in PLUGIN_LISTS if getattr(self, key) is not None]
        for key in replaced:
            raw[key] = list(getattr(self, key))
        if self.seeds is not None:
            raw["seeds"] = list(self.seeds)
        named = list(dict.fromkeys(plugin for plugins in _named_plugins(raw).values() for plugin in plugins))
        if replaced and isinstance(raw.get("config"), dict):  # a plugin's table leaves with the plugin
            raw["config"] = {plugin: table for plugin, table in raw["config"].items() if plugin in named}
        for assignment in self.sets:
            target, key, value = _assignment(assignment)
            # A table of the wrong type is left for parse_grid to name.
            if target == "recipe":
                recipe = raw.get("recipe", "em60")
                recipe = {"preset": recipe} if isinstance(recipe, str) else recipe
                raw["recipe"] = {**recipe, key: value} if isinstance(recipe, dict) else recipe
            elif target == "data":
                data = raw.get("data", {})
                raw["data"] = {**data, key: value} if isinstance(data, dict) else data
            elif target in named:
                config = raw.setdefault("config", {})
                if isinstance(config, dict) and isinstance(config.setdefault(target, {}), dict):
                    config[target][key] = value
            else:
                raise ConfigError(f"--set {assignment}: {target!r} is not an attack, defense or arch of grid {grid}; "
                                  f"allowed: recipe, data, {', '.join(named)}")
        return raw


def _named_plugins(raw: dict) -> dict[str, tuple[str, ...]]:
    """The registered plugins a raw grid names, by list: each part of a composed defense, once.
    What is not a list of names is skipped here and left for `parse_grid` to name."""
    named = {}
    for key in PLUGIN_LISTS:
        values = raw.get(key)
        values = [v for v in values if isinstance(v, str)] if isinstance(values, list) else []
        named[key] = tuple(dict.fromkeys(p for v in values for p in (defense_parts(v) if key == "defenses" else [v])))
    return named


def _assignment(text: str) -> tuple[str, str, str]:
    target, dot, rest = text.partition(".")
    key, equals, value = rest.partition("=")
    if not (dot and equals and target and key.strip()):
        raise ConfigError(f"--set {text}: expected PLUGIN.FIELD=VALUE, recipe.FIELD=VALUE or data.FIELD=VALUE")
    return target.strip(), key.strip(), value.strip()


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


def _seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds: expected whole numbers separated by commas, got {text!r}") from None

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
```

A defense named `a+b` composes registered defenses (`jpeg+cutout`, `iss_gray+at`); each part is
checked, and `[config.cutout]` applies to cutout wherever it appears. A composed cell records one
config table per part; a plain name records its own config, so its cell id does not change.

Everything is checked on load, before any work starts: unknown keys, unknown plugins, unknown
config fields and out-of-range values are errors that name the key and what is allowed.
"""
from __future__ import annotations

import itertools
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench.config import ConfigError, as_dict, build_config
from bench.data import DataSpec
from bench.registry import ARCHS, ATTACKS, DEFENSES, create_defense, defense_parts
from bench.store import canonical_hash
from bench.train import Recipe, make_recipe

GRID_KEYS = ("description", "data", "attacks", "defenses", "archs", "seeds", "recipe", "config")


@dataclass(frozen=True)
class CellSpec:
    """One training run: data x attack x defense x architecture x recipe x seed."""

    data: DataSpec
    attack: str
    attack_config: dict
    defense: str
    defense_config: dict
    arch: str
    arch_config: dict
    recipe: Recipe
    recipe_name: str
    seed: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipe"] = as_dict(self.recipe)
        return d

    @property
    def cell_id(self) -> str:
        return canonical_hash(self.to_dict())

    @property
    def poison_key(self) -> str:
        """One poison serves every defense, architecture and recipe of the same attack and seed."""
        return canonical_hash({"data": asdict(self.data), "attack": self.attack,
                               "attack_config": self.attack_config, "seed": self.seed})


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
                     arch, self.config.get(arch, {}), self.recipe, self.recipe_name, seed)
            for seed, attack, arch, defense in itertools.product(self.seeds, self.attacks, self.archs, self.defenses)
        ]


def shipped_grids() -> dict[str, Any]:
    """Name -> resource of every grid file shipped in the package."""
    folder = resources.files("bench") / "grids"
    return {p.name[: -len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def load_grid(name_or_path: str) -> Grid:
    """A shipped grid by name, or a user's grid file by path."""
    shipped = shipped_grids()
    if name_or_path in shipped:
        text, name = shipped[name_or_path].read_text(), name_or_path
    elif Path(name_or_path).is_file():
        text, name = Path(name_or_path).read_text(), Path(name_or_path).stem
    else:
        raise ConfigError(f"grid {name_or_path!r} is neither a shipped grid ({', '.join(sorted(shipped))}) nor a file")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"grid {name}: not valid TOML: {err}") from None
    return parse_grid(raw, name)


def parse_grid(raw: dict, name: str) -> Grid:
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"grid {name}: unknown key {unknown[0]!r}; allowed keys: {', '.join(GRID_KEYS)}")
    lists = {}
    for key, registry in (("attacks", ATTACKS), ("defenses", DEFENSES), ("archs", ARCHS)):
        values = raw.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"grid {name}: {key} must be a non-empty list of names; known: {', '.join(registry.names())}")
        for value in values:
            for part in defense_parts(value) if registry is DEFENSES else [value]:
                registry.entry(part)  # raises with the known names
        lists[key] = tuple(values)
    # The registered plugins the grid names: a composed defense names each of its parts.
    named = {**lists, "defenses": tuple(dict.fromkeys(p for d in lists["defenses"] for p in defense_parts(d)))}
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"grid {name}: seeds must be a non-empty list of whole numbers >= 0, got {seeds!r}")
    data_raw = raw.get("data", {})
    if not isinstance(data_raw, dict):
        raise ConfigError(f"grid {name}: data must be a table (name, train_size, test_size, subset_seed)")
    data = build_config(DataSpec, data_raw, "data")
    recipe_raw = raw.get("recipe", "em60")
    recipe = make_recipe(recipe_raw)
    recipe_name = recipe_raw if isinstance(recipe_raw, str) else recipe_raw.get("preset", "em60") + "*"
    config = {}
    for plugin, overrides in raw.get("config", {}).items():
        registry = next((r for key, r in (("attacks", ATTACKS), ("defenses", DEFENSES), ("archs", ARCHS))
                         if plugin in named[key]), None)
        if registry is None:
            raise ConfigError(f"grid {name}: [config.{plugin}] names no attack, defense or arch of this grid")
        if not isinstance(overrides, dict):
            raise ConfigError(f"grid {name}: config.{plugin} must be a table of field = value")
        if registry is ARCHS:
            registry.create(plugin, overrides)  # checks the arguments against the signature
            config[plugin] = dict(overrides)
        else:
            config[plugin] = as_dict(registry.config(plugin, overrides))
    # A plugin without overrides still records its full default config, so ids change with defaults.
    for key, registry in (("attacks", ATTACKS), ("defenses", DEFENSES)):
        for plugin in named[key]:
            if plugin not in config:
                config[plugin] = as_dict(registry.config(plugin))
    for defense in lists["defenses"]:
        if len(defense_parts(defense)) > 1:  # incompatible parts (two adversaries, ...) fail here
            create_defense(defense, {part: config[part] for part in defense_parts(defense)})
    return Grid(name, str(raw.get("description", "")), data, lists["attacks"], lists["defenses"],
                lists["archs"], tuple(seeds), recipe, recipe_name, config)

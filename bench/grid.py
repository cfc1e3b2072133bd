"""Grids: TOML files naming data, attacks, defenses, architectures, a recipe and seeds.

```toml
description = "one line shown by `bench list grids`"
attacks = ["clean", "ops"]
defenses = ["none", "jpeg"]
archs = ["tiny_cnn"]
seeds = [0]
recipe = "cpu_smoke"            # a preset, or a table: {preset = "em60", epochs = 40}
analysis = ["mi"]               # optional: extra measurements per cell (allowed: mi, robust, autoattack)
poison_ratio = [0.2, 1.0]       # optional: the poisoned fraction of the training set, one cell per value
poison_classes = [3, 5]         # optional: poison only images of these classes (indices)
plugins = ["my_attacks.py"]     # optional: plugin files to import first (bench.plugin_files), relative to this file
[data]
name = "cifar10"                # cifar100, svhn, a path to an .npz, or "folder:/path" with image_size
train_size = 5000
[config.jpeg]                   # overrides for any attack, defense or arch of the grid
quality = 10
```

`analysis = ["robust"]` records PGD robust test accuracy (`bench.robust`); a `[robust]` table sets
its `RobustConfig` fields (`eps = "4/255"`, `steps = 10`, ...) and may name the grid's defenses whose
cells run it (`defenses = ["at", "at_4"]`; default every cell). Cells that do not run it keep the ids
they have without it. `analysis = ["autoattack"]` records the standard AutoAttack's robust accuracy
(`bench.robust.autoattack_accuracy`, the optional `pyautoattack` package), with an `[autoattack]`
table of `AutoAttackConfig` fields and `defenses` in the same way.

With `poison_ratio` and `poison_classes` each cell puts its attack's poison (made for the whole
training set, one poison for every ratio) on a stratified, seeded part of the training images
(`bench.data.poisoned_subset`); the rest stays clean. The clean baseline is one cell at any ratio.

A defense named `a+b` composes registered defenses (`jpeg+cutout`, `iss_gray+at`); each part is
checked, and `[config.cutout]` applies to cutout wherever it appears. A composed cell records one
config table per part; a plain name records its own config, so its cell id does not change.

A variant puts one plugin in a second row or column with another config, under a name of the
grid's choosing (`docs/grids.md`):

```toml
defenses = ["none", "at", "at_4"]
[variants.at_4]                 # the name the lists, tables, logs and `--set at_4.eps=...` use
plugin = "at"                   # the registered attack, defense or arch it runs
eps = "4/255"                   # fields on top of [config.at], if the grid has one
```

Its cells run the plugin; the name is stored beside it (`CellSpec.variants`) and left out of the
cell id, so two names for one plugin and config are one experiment (an error within a grid).

Everything is checked on load, before any work starts: unknown keys, unknown plugins, unknown
config fields and out-of-range values are errors that name the key and what is allowed.
`GridOverrides` applies command-line changes (`--set em.steps=10`, `--attacks em,ops`, ...) to the
raw TOML first, so they go through the same checks.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import logging
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from bench.cell import CellSpec, cell_label
from bench.config import ConfigError, as_dict, build_config, coerce
from bench.data import DataSpec, require_poisons_one
from bench.readers import require_memory
from bench.plugin_files import load_plugin_files
from bench.registry import ARCHS, ATTACKS, COMPOSE, REGISTRIES, defense_parts
from bench.robust import AutoAttackConfig, RobustConfig
from bench.store import canonical_hash
from bench.train import RECIPES, Recipe, make_recipe
from defenses.base import create_defense

log = logging.getLogger("bench")

GRID_KEYS = ("description", "data", "attacks", "defenses", "archs", "seeds", "recipe", "config", "analysis",
             "variants", "robust", "autoattack", "poison_ratio", "poison_classes", "plugins")
# Per-cell measurements the runner knows: mi = bench.mi on the trained model's features, robust =
# bench.robust.robust_accuracy of the trained model on its test images (PGD), autoattack =
# bench.robust.autoattack_accuracy (the standard AutoAttack) on them.
ANALYSES = ("mi", "robust", "autoattack")
# The analyses with settings of their own: a grid table of the same name holds its config's fields.
ANALYSIS_CONFIGS = {"robust": RobustConfig, "autoattack": AutoAttackConfig}
ROBUST_SCOPE = "defenses"  # the key of those tables that chooses cells; the others are the config's fields
PLUGIN_LISTS = tuple(REGISTRIES)  # a grid's plugin lists: attacks, defenses, archs
# A variant's name is a TOML bare key without dots or `+`, so `--set NAME.FIELD=` and `jpeg+NAME` parse
# one way; `recipe`, `data`, `robust` and `autoattack` are what `--set recipe.FIELD` (and the others) mean.
VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]+")
RESERVED_NAMES = ("recipe", "data", *ANALYSIS_CONFIGS)


@dataclass(frozen=True)
class Variant:
    """`[variants.NAME]`: a registered plugin under a name of the grid's choosing, with a config of its own."""

    plugin: str  # the registered attack, defense or arch that runs
    config: dict  # checked: the grid's [config.PLUGIN] table with the variant's fields on top


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
    variants: dict = field(default_factory=dict)  # variant name -> Variant
    robust: dict = field(default_factory=dict)  # the checked RobustConfig where analysis has "robust", else empty
    robust_defenses: tuple[str, ...] | None = None  # the defenses (as the grid names them) that run it; None = all
    poison_ratios: tuple[float, ...] = (1.0,)  # fractions of the training set poisoned: a factor of the grid
    poison_classes: tuple[int, ...] = ()  # the classes whose images may be poisoned; () = every class
    autoattack: dict = field(default_factory=dict)  # the checked AutoAttackConfig where analysis has "autoattack"
    autoattack_defenses: tuple[str, ...] | None = None  # as robust_defenses, for [autoattack]
    # Absolute paths of the plugin files the grid imports (`plugins`); not part of any cell id.
    plugins: tuple[str, ...] = ()

    def resolve(self, name: str) -> tuple[str, dict]:
        """(plugin, config) of a name in the grid's lists: a variant's, else the plugin's own. A composed
        defense gives ('a+b' of its parts' plugins, {plugin: config} per part), as it always recorded."""
        parts = defense_parts(name)
        if len(parts) > 1:
            resolved = [self.resolve(part) for part in parts]
            return COMPOSE.join(plugin for plugin, _ in resolved), dict(resolved)
        variant = self.variants.get(name)
        return (variant.plugin, variant.config) if variant else (name, self.config.get(name, {}))

    def cells(self) -> list[CellSpec]:
        """Every cell, grouped so that cells sharing a poison (all ratios of one attack) run one after another."""
        cells = []
        partial = [(ratio, self.poison_classes) for ratio in self.poison_ratios]
        for seed, attack in itertools.product(self.seeds, self.attacks):
            # The clean baseline poisons nothing: at any ratio it is one cell, the one of ratio 1.0.
            poisonings = partial if ATTACKS.get(self.resolve(attack)[0]).perturbs else [(1.0, ())]
            for (ratio, classes), arch, defense in itertools.product(poisonings, self.archs, self.defenses):
                names = {"attack": attack, "defense": defense, "arch": arch}
                runs = {factor: self.resolve(name) for factor, name in names.items()}
                variants = {factor: name for factor, name in names.items() if name != runs[factor][0]}
                analysis = self.analysis_of(defense)
                cells.append(CellSpec(self.data, *runs["attack"], *runs["defense"], *runs["arch"], self.recipe,
                                      self.recipe_name, seed, analysis, variants, poison_ratio=ratio,
                                      poison_classes=classes, robust=self.robust if "robust" in analysis else {},
                                      autoattack=self.autoattack if "autoattack" in analysis else {}))
        return cells

    def analysis_of(self, defense: str) -> tuple[str, ...]:
        """The analyses of the cells under `defense` (as the grid names it): the grid's, "robust" and
        "autoattack" only under the defenses their tables ([robust], [autoattack]) name."""
        scopes = {"robust": self.robust_defenses, "autoattack": self.autoattack_defenses}
        return tuple(a for a in self.analysis if scopes.get(a) is None or defense in scopes[a])


def shipped_grids() -> dict[str, Any]:
    """Name -> resource of every grid file shipped in the package."""
    folder = resources.files("bench") / "grids"
    return {p.name[: -len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def load_grid(name_or_path: str, overrides: GridOverrides | None = None) -> Grid:
    """A shipped grid by name, or a user's grid file by path, with command-line `overrides` applied."""
    raw, name, base = read_grid(name_or_path)
    return parse_grid(overrides.apply(raw, name) if overrides else raw, name, base)


def read_grid(name_or_path: str) -> tuple[dict, str, Path | None]:
    """A grid's TOML as a dict, unchecked, with its name and the folder its `plugins` paths are
    relative to (None for a shipped grid: the working directory); `parse_grid` checks it."""
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
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(f"grid {name}: not valid TOML: arrays or tables nested too deeply") from None
    return raw, name, Path(name_or_path).resolve().parent if name_or_path not in shipped else None


def parse_grid(raw: dict, name: str, base: Path | None = None) -> Grid:
    """A checked grid from its TOML's dict; `base` is the folder `plugins` paths are relative to (the
    grid file's; default the working directory)."""
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"grid {name}: unknown key {unknown[0]!r}; allowed keys: {', '.join(GRID_KEYS)}")
    plugins = _plugins(raw.get("plugins", []), name, base)  # before the lists are checked: they may name its plugins
    lists = {}
    for key, registry in REGISTRIES.items():
        values = raw.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"grid {name}: {key} must be a non-empty list of names; known: {', '.join(registry.names())}")
        lists[key] = tuple(_once(values, key, name))
    variant_plugins = _variant_plugins(raw.get("variants", {}), name)
    _check_lists(lists, variant_plugins, name)
    named = _named_plugins(raw)
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
        if plugin in variant_plugins:  # one place for a variant's fields, so none is set twice
            raise ConfigError(f"grid {name}: [config.{plugin}]: {plugin} is a variant; put its fields in "
                              f"[variants.{plugin}]")
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
    variants = {variant: _variant(variant, plugin, raw, lists) for variant, plugin in variant_plugins.items()}
    analysis = _analysis(raw.get("analysis", []), name)
    robust, robust_defenses = _analysis_settings("robust", raw.get("robust"), analysis, lists["defenses"], name)
    autoattack, autoattack_defenses = _analysis_settings("autoattack", raw.get("autoattack"), analysis,
                                                         lists["defenses"], name)
    grid = Grid(name, str(raw.get("description", "")), data, lists["attacks"], lists["defenses"], lists["archs"],
                tuple(seeds), recipe, recipe_name, config, analysis, variants, robust, robust_defenses,
                _poison_ratios(raw.get("poison_ratio", 1.0), name), _poison_classes(raw.get("poison_classes", []), name),
                autoattack, autoattack_defenses, plugins)
    for defense in lists["defenses"]:
        if len(defense_parts(defense)) > 1:  # incompatible parts (two adversaries, ...) fail here
            plugin, parts = grid.resolve(defense)
            try:
                create_defense(plugin, parts)
            except ConfigError as err:
                if plugin == defense:
                    raise
                raise ConfigError(f"grid {name}: defenses: {defense!r} runs {plugin!r}: {err}") from None
    _check_distinct(grid, lists)
    if data.train_size is not None and not grid.poison_classes:  # else known once the data is loaded (preflight)
        for ratio in grid.poison_ratios:
            require_poisons_one(ratio, data.train_size, f"grid {name}")
    return grid


def _plugins(value: Any, grid: str, base: Path | None) -> tuple[str, ...]:
    """`plugins`: plugin files, imported now (`bench.plugin_files`); their absolute paths."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"grid {grid}: plugins must be a list of paths to Python files (relative to the grid "
                          f"file), got {value!r}")
    return load_plugin_files(value, base, where=f"grid {grid}: plugins:")


def _variant_plugins(value: Any, grid: str) -> dict[str, str]:
    """Variant name -> its plugin, for each `[variants.NAME]`: the name its own, the plugin one registered name."""
    if not isinstance(value, dict) or not all(isinstance(table, dict) for table in value.values()):
        raise ConfigError(f"grid {grid}: variants must be tables [variants.NAME] of plugin = \"a registered name\" "
                          "and its config fields")
    registered = {plugin: registry.kind for registry in REGISTRIES.values() for plugin in registry.names()}
    plugins = {}
    for variant, table in value.items():
        where = f"grid {grid}: variants.{variant}"
        if not VARIANT_NAME.fullmatch(variant) or variant in RESERVED_NAMES:
            raise ConfigError(f"{where}: a variant's name is letters, digits, _ and - (not "
                              f"{', '.join(RESERVED_NAMES[:-1])} or {RESERVED_NAMES[-1]})")
        if variant in registered:  # one name, one meaning: in the lists, --set and the records
            raise ConfigError(f"{where}: {variant!r} is a registered {registered[variant]}; give the variant a name "
                              "of its own")
        plugin = table.get("plugin")
        if not isinstance(plugin, str):
            raise ConfigError(f"{where}.plugin: missing; name the registered attack, defense or arch it runs")
        if len(defense_parts(plugin)) > 1:
            raise ConfigError(f"{where}.plugin: {plugin!r} is a composition; a variant is of one plugin, and "
                              f"compositions of variants are written in defenses (\"jpeg+{variant}\")")
        if plugin in value:
            raise ConfigError(f"{where}.plugin: {plugin!r} is a variant itself; name a registered plugin")
        if plugin not in registered:
            close = difflib.get_close_matches(plugin, registered, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.plugin: unknown plugin {plugin!r}{hint}; known: {', '.join(sorted(registered))}")
        plugins[variant] = plugin
    return plugins


def _check_lists(lists: dict[str, tuple[str, ...]], variants: dict[str, str], grid: str) -> None:
    """Each name of each list (each part of a composed defense) is a registered plugin of that list's kind
    or a variant of one, and each variant is in a list."""
    for key, registry in REGISTRIES.items():
        own = sorted(v for v, plugin in variants.items() if plugin in registry)
        for part in _parts(key, lists[key]):
            if part not in variants:
                try:
                    registry.entry(part)
                except ConfigError as err:
                    raise ConfigError(f"{err}{'; variants: ' + ', '.join(own) if own else ''}") from None
            elif variants[part] not in registry:
                home = next(k for k, r in REGISTRIES.items() if variants[part] in r)
                raise ConfigError(f"grid {grid}: {key}: {part!r} is a variant of the {REGISTRIES[home].kind} "
                                  f"{variants[part]!r}; list it in {home}")
    listed = {part for key in PLUGIN_LISTS for part in _parts(key, lists[key])}
    unused = [v for v in variants if v not in listed]
    if unused:
        raise ConfigError(f"grid {grid}: [variants.{unused[0]}] is in none of {', '.join(PLUGIN_LISTS)}")


def _variant(variant: str, plugin: str, raw: dict, lists: dict[str, tuple[str, ...]]) -> Variant:
    """A checked variant: the grid's [config.PLUGIN] (a CPU preset, fewer steps) carries over, so a variant
    differs from its plugin's column by its own fields only."""
    fields = {k: v for k, v in raw["variants"][variant].items() if k != "plugin"}
    overrides = {**raw.get("config", {}).get(plugin, {}), **fields}
    key = next(key for key in PLUGIN_LISTS if variant in _parts(key, lists[key]))
    owner = f"variants.{variant}"
    if REGISTRIES[key] is ARCHS:
        return Variant(plugin, _arch_arguments(plugin, overrides, owner))
    return Variant(plugin, as_dict(REGISTRIES[key].config(plugin, overrides, owner=owner)))


def _check_distinct(grid: Grid, lists: dict[str, tuple[str, ...]]) -> None:
    """Two names of one list that run the same plugin and config would be the same cells twice."""
    for key in PLUGIN_LISTS:
        seen: dict[str, str] = {}
        for written in lists[key]:  # already each once
            experiment = canonical_hash(list(grid.resolve(written)))
            if experiment in seen:
                raise ConfigError(f"grid {grid.name}: {key}: {seen[experiment]!r} and {written!r} run the same plugin "
                                  "with the same config (one experiment, the same cells); drop one or change its config")
            seen[experiment] = written


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
    return _once(value, "seed(s)", grid)


def _once(values: list, key: str, grid: str) -> list:
    """`values` in order, each once; a repeat is warned of (it would plan, count and report the same
    cells twice)."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        log.warning("grid %s: %s %s listed more than once; each runs once", grid, key, ", ".join(map(str, repeated)))
    return list(dict.fromkeys(values))


def _analysis(value: Any, grid: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"grid {grid}: analysis must be a list of names; allowed: {', '.join(ANALYSES)}")
    for item in value:
        if item not in ANALYSES:
            raise ConfigError(f"grid {grid}: unknown analysis {item!r}; allowed: {', '.join(ANALYSES)}")
    return tuple(sorted(set(value)))  # order-free, so the cell id does not depend on how the list is written


def _analysis_settings(key: str, table: Any, analysis: tuple[str, ...], defenses: tuple[str, ...], grid: str
                       ) -> tuple[dict, tuple[str, ...] | None]:
    """The checked config (ANALYSIS_CONFIGS[key]) of the table `[key]` (its defaults without one) and the
    defenses whose cells run the analysis (None: all); empty where the grid does not ask for it."""
    config_class = ANALYSIS_CONFIGS[key]
    if table is None:
        return (as_dict(config_class()) if key in analysis else {}), None
    allowed = [f.name for f in fields(config_class)] + [ROBUST_SCOPE]
    if not isinstance(table, dict):
        raise ConfigError(f"grid {grid}: {key} must be a table [{key}] of {', '.join(allowed)}")
    if key not in analysis:
        raise ConfigError(f"grid {grid}: [{key}] is set but analysis does not list \"{key}\"; add it to analysis")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"grid {grid}: {key}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    config = as_dict(build_config(config_class, {k: v for k, v in table.items() if k != ROBUST_SCOPE}, key))
    scope = table.get(ROBUST_SCOPE)
    if scope is None:
        return config, None
    if isinstance(scope, str):  # from --set robust.defenses=at,at_4
        scope = [name.strip() for name in scope.split(",") if name.strip()]
    if not isinstance(scope, list) or not all(isinstance(name, str) for name in scope):
        raise ConfigError(f"grid {grid}: {key}.{ROBUST_SCOPE} must be a list of the grid's defenses "
                          f"({', '.join(defenses)})")
    unlisted = [d for d in scope if d not in defenses]
    if unlisted:
        raise ConfigError(f"grid {grid}: {key}.{ROBUST_SCOPE}: {unlisted[0]!r} is not one of the grid's defenses; "
                          f"allowed: {', '.join(defenses)}")
    return config, tuple(_once(scope, f"{key}.{ROBUST_SCOPE}", grid))


def _poison_ratios(value: Any, grid: str) -> tuple[float, ...]:
    """`poison_ratio`: one fraction of the training set, or a list of them (a factor: cells for each)."""
    allowed = "a number in (0, 1] (the poisoned fraction of the training set) or a non-empty list of them"
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"grid {grid}: poison_ratio must be {allowed}, got []")
    for ratio in values:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ConfigError(f"grid {grid}: poison_ratio must be {allowed}; {ratio!r} is not")
    return tuple(_once([float(ratio) for ratio in values], "poison_ratio(s)", grid))


def _poison_classes(value: Any, grid: str) -> tuple[int, ...]:
    """`poison_classes`: the class indices whose images may be poisoned (their range is checked against
    the data before any cell runs, `bench.runner.preflight`)."""
    allowed = "a list of distinct class indices (whole numbers from 0), or [] for every class"
    if not isinstance(value, list) or any(type(c) is not int or c < 0 for c in value):
        raise ConfigError(f"grid {grid}: poison_classes must be {allowed}, got {value!r}")
    if len(set(value)) < len(value):
        raise ConfigError(f"grid {grid}: poison_classes must be {allowed}; {value!r} repeats a class")
    return tuple(sorted(value))  # order-free, so the cell id does not depend on how the list is written


def _arch_arguments(arch: str, overrides: dict, owner: str | None = None) -> dict:
    """An architecture's keyword arguments, coerced to its annotations (the CLI gives strings); errors
    name the argument after `owner` (default `arch <name>`)."""
    plain = f"arch {arch}"
    owner = owner or plain
    hints = typing.get_type_hints(ARCHS.get(arch))
    arguments = {k: coerce(v, hints.get(k, Any), f"{owner}.{k}") for k, v in overrides.items()}
    size = _model_bytes(arch, arguments)
    if size is not None:  # before the model is built for real: a width of 10**6 asks for terabytes
        settings = ", ".join(f"{k} = {v}" for k, v in arguments.items()) or "its defaults"
        require_memory(size, f"{owner}: the model of {settings}")
    try:
        ARCHS.create(arch, arguments)  # checks the names against the signature, and that the model builds
    except ConfigError as err:
        message = str(err)
        raise ConfigError(owner + message[len(plain):] if message.startswith(plain) else f"{owner}.{message}") from None
    return arguments


def _model_bytes(arch: str, arguments: dict) -> int | None:
    """The bytes of an architecture's parameters and buffers, counted on the meta device (nothing
    allocated); None where it cannot be built there (the real build then says why)."""
    try:
        with torch.device("meta"):
            model = ARCHS.create(arch, arguments)
    except RuntimeError as err:
        if "overflow" in str(err):  # torch's "Storage size calculation overflowed": past 2**63 bytes
            return 2**63
        return None
    except Exception:  # bad arguments, or an architecture that computes while it builds
        return None
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


@dataclass(frozen=True)
class GridOverrides:
    """Changes to a grid from the command line, applied to its raw TOML before `parse_grid` checks it.

    `sets` are `NAME.FIELD=VALUE` (a config field of an attack, defense or arch of the grid, or of
    one of its variants), `recipe.FIELD=VALUE`, `data.FIELD=VALUE` or, in a grid with the robust
    (autoattack) analysis, `robust.FIELD=VALUE` (`autoattack.FIELD=VALUE`); values are strings, coerced
    by the config's types. `attacks`,
    `defenses`, `archs` and `seeds` replace the grid's lists: any
    registered name or variant of the grid is allowed (to run a new plugin under a shipped grid's
    settings), and a cell the grid already had keeps its id. Any other change makes a different
    experiment, with other cell ids.
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
        listed = {part for key in PLUGIN_LISTS for part in _parts(key, _names_in(raw, key))}
        if replaced and isinstance(raw.get("variants"), dict):  # and a variant with its last list
            raw["variants"] = {variant: table for variant, table in raw["variants"].items() if variant in listed}
        variants = [v for v in raw.get("variants", {}) if v in listed] if isinstance(raw.get("variants"), dict) else []
        for key in ANALYSIS_CONFIGS:
            table = raw.get(key)
            if self.defenses is not None and isinstance(table, dict) and isinstance(table.get(ROBUST_SCOPE), list):
                # [robust]'s (and [autoattack]'s) defenses leave with them, as a plugin's config table does
                table[ROBUST_SCOPE] = [d for d in table[ROBUST_SCOPE] if d in raw["defenses"]]
        asked = [key for key in ANALYSIS_CONFIGS if isinstance(raw.get("analysis"), list) and key in raw["analysis"]]
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
            elif target in asked:
                table = raw.get(target, {})
                raw[target] = {**table, key: value} if isinstance(table, dict) else table
            elif target in variants:
                if isinstance(raw["variants"][target], dict):
                    raw["variants"][target][key] = value
            elif target in named:
                config = raw.setdefault("config", {})
                if isinstance(config, dict) and isinstance(config.setdefault(target, {}), dict):
                    config[target][key] = value
            else:
                tables = ["recipe", "data"] + asked
                raise ConfigError(f"--set {assignment}: {target!r} is not an attack, defense or arch of grid {grid}; "
                                  f"allowed: {', '.join(tables + named + variants)}")
        return raw


def _names_in(raw: dict, key: str) -> list[str]:
    """The names of a raw grid's list `key`; what is not a list of names is left for `parse_grid` to name."""
    values = raw.get(key)
    return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []


def _parts(key: str, names) -> tuple[str, ...]:
    """The names a list is made of, each once: the parts of a composed defense apart."""
    return tuple(dict.fromkeys(part for name in names for part in (defense_parts(name) if key == "defenses" else [name])))


def _named_plugins(raw: dict) -> dict[str, tuple[str, ...]]:
    """The registered plugins a raw grid names, by list, each once: a variant's plugin for the variant."""
    variants = raw.get("variants") if isinstance(raw.get("variants"), dict) else {}
    plugin_of = {name: table["plugin"] for name, table in variants.items()
                 if isinstance(table, dict) and isinstance(table.get("plugin"), str)}
    return {key: tuple(dict.fromkeys(plugin_of.get(part, part) for part in _parts(key, _names_in(raw, key))))
            for key in PLUGIN_LISTS}


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

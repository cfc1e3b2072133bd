"""`bench run --grid NAME --rehearse`: each distinct combination of a grid, at toy scale, in a scratch folder.

A rehearsal asks one thing of a grid before its hours of work: does every combination it holds
run to its record? It runs the grid's own cells (`Grid.cells`, `run_grid`, a `Store`), shrunk on
the grid's TOML before the usual checks (`shrink`), in a temporary results folder that is deleted
afterwards; the grid's real results folder is never read or written.

Shrunk (`Rehearsal` holds the sizes):

- data: `train_size` training and `test_size` test images of the grid's dataset (class-balanced, as
  any subset), fewer where the grid already has fewer;
- recipe: the grid's, for one epoch;
- seeds: the first (a seed changes the numbers, not the code that runs);
- poison_ratio: 1.0 and the largest partial ratio, where the grid lists them (every partial ratio
  runs the same code);
- each attack and defense, variants included: the grid's settings with the plugin's smallest preset
  on top (the first it declares of `SMALLEST`), and for an attack `one_step` on top of that (one
  round, one step per batch: `bench.perf`'s preset for peak memory);
- robust: one PGD step; autoattack: at most the cell's test images.

Two names whose configs are one once shrunk are one combination: the first is kept.

Which cells (`combinations`): every attack under every defense on the grid's first architecture,
and every defense on each other architecture with one attack, the attacks taken in turn so that
they meet the other architectures too. An attack reaches training only through its images, so
the code a cell runs is set by its attack (its poison, made once), by its defense with its
architecture, and by the analyses under that defense; the full product would add image values,
not code, at the cost of hours for the larger grids.
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bench.cell import CellSpec
from bench.config import as_dict
from bench.executors import run_grid
from bench.grid import Grid, GridOverrides, parse_grid, read_grid
from bench.plan import error_line
from bench.records import CellResult, classes_text, poisoned_label
from bench.registry import ATTACKS, DEFENSES, defense_parts
from bench.store import Store, canonical_hash

# A plugin's small presets, smallest first: `tiny` where `cpu` (a CPU grid's few thousand images)
# is too big for a few dozen, `cpu_smoke` (adversarial training's two PGD steps).
SMALLEST = ("tiny", "cpu", "cpu_smoke")
ONE_STEP = "one_step"  # an attack's one round with one step per batch, on top of its small preset


@dataclass(frozen=True)
class Rehearsal:
    """The toy scale of a rehearsal."""

    train_size: int = 30  # training images: 3 per CIFAR-10 class
    test_size: int = 10  # test images, which the robust analyses attack
    epochs: int = 1  # of the grid's recipe
    robust_steps: int = 1  # PGD steps of the robust analysis


@dataclass(frozen=True)
class Outcome:
    """One combination's result: its name, whether it ran to a finished record, its error line, its seconds."""

    combination: str
    passed: bool
    error: str
    seconds: float

    def line(self) -> str:
        if self.passed:
            return f"passed  {self.combination} ({self.seconds:.1f} s)"
        return f"FAILED  {self.combination}: {self.error}"


def shrink(raw: dict, rehearsal: Rehearsal = Rehearsal()) -> dict:
    """A grid's TOML at toy scale (the module docstring says how); `raw` is left as it is."""
    raw = copy.deepcopy(raw)
    data = dict(raw.get("data", {}))
    for key, size in (("train_size", rehearsal.train_size), ("test_size", rehearsal.test_size)):
        data[key] = min(data.get(key) or size, size)
    raw["data"] = data
    recipe = raw.get("recipe", "em60")
    raw["recipe"] = {**({"preset": recipe} if isinstance(recipe, str) else recipe), "epochs": rehearsal.epochs}
    raw["seeds"] = raw.get("seeds", [0])[:1]
    if isinstance(raw.get("poison_ratio"), list):
        ratios = raw["poison_ratio"]
        raw["poison_ratio"] = [r for r in (1.0 if 1.0 in ratios else None, max((r for r in ratios if r < 1), default=None))
                               if r is not None]
    _shrink_plugins(raw)
    if "robust" in raw.get("analysis", []):
        raw["robust"] = {**raw.get("robust", {}), "steps": rehearsal.robust_steps}
    if "autoattack" in raw.get("analysis", []):
        table = raw.get("autoattack", {})
        raw["autoattack"] = {**table, "test_size": min(table.get("test_size") or rehearsal.test_size,
                                                       rehearsal.test_size)}
    return _one_name_per_experiment(raw)


def small_settings(plugin: str, registry, fields: dict, attack: bool) -> dict:
    """`fields` (a grid's table for `plugin`, its `preset` spelled out) with the plugin's smallest
    preset on top, and an attack's `one_step` on top of that."""
    presets = getattr(registry.get(plugin), "presets", {})
    fields = dict(fields)
    own = presets.get(fields.pop("preset", None), {})
    smallest = next((presets[name] for name in SMALLEST if name in presets), {})
    return {**own, **fields, **smallest, **(presets.get(ONE_STEP, {}) if attack else {})}


def _shrink_plugins(raw: dict) -> None:
    """Every attack's and defense's [config.NAME] table and every such variant at their small settings."""
    config = raw.setdefault("config", {})
    variants = raw.get("variants", {})
    for key, registry in (("attacks", ATTACKS), ("defenses", DEFENSES)):
        for part in _parts(raw, key):
            variant = variants.get(part)
            if variant is not None:
                fields = {k: v for k, v in variant.items() if k != "plugin"}
                variants[part] = {"plugin": variant["plugin"],
                                  **small_settings(variant["plugin"], registry, fields, key == "attacks")}
            else:
                config[part] = small_settings(part, registry, config.get(part, {}), key == "attacks")


def _parts(raw: dict, key: str) -> list[str]:
    """The names a raw grid's list is made of, each once: a composed defense's parts apart."""
    return list(dict.fromkeys(p for name in raw[key] for p in (defense_parts(name) if key == "defenses" else [name])))


def _one_name_per_experiment(raw: dict) -> dict:
    """The shrunk grid without the names that now run the same plugin and config as an earlier name of
    their list (a variant that differed by a size its preset sets); `GridOverrides` drops their tables."""
    kept = {}
    for key, registry in (("attacks", ATTACKS), ("defenses", DEFENSES)):
        seen, kept[key] = set(), []
        for name in raw[key]:
            experiment = canonical_hash([_experiment(raw, part, registry) for part in defense_parts(name)])
            if experiment not in seen:
                seen.add(experiment)
                kept[key].append(name)
    return GridOverrides(attacks=tuple(kept["attacks"]), defenses=tuple(kept["defenses"])).apply(raw, "rehearsal")


def _experiment(raw: dict, name: str, registry) -> list:
    variant = raw.get("variants", {}).get(name)
    if variant is None:
        return [name, as_dict(registry.config(name, raw.get("config", {}).get(name, {})))]
    fields = {**raw.get("config", {}).get(variant["plugin"], {}), **{k: v for k, v in variant.items() if k != "plugin"}}
    return [variant["plugin"], as_dict(registry.config(variant["plugin"], fields))]


def rehearsal_grid(name_or_path: str, overrides: GridOverrides | None = None,
                   rehearsal: Rehearsal = Rehearsal()) -> tuple[Grid, Grid]:
    """The grid as written (checked first, so that its errors name its own fields) and at toy scale."""
    raw, name, base = read_grid(name_or_path)
    raw = overrides.apply(raw, name) if overrides else raw
    grid = parse_grid(raw, name, base)  # also imports the grid's plugin files, whose presets `shrink` reads
    return grid, parse_grid(shrink(raw, rehearsal), name, base)


def combinations(grid: Grid, cells: list[CellSpec]) -> list[CellSpec]:
    """The cells that run each distinct combination once (the module docstring says which)."""
    first, others = grid.archs[0], grid.archs[1:]
    turn = {(defense, arch): grid.attacks[(i + j + 1) % len(grid.attacks)]
            for i, arch in enumerate(others) for j, defense in enumerate(grid.defenses)}
    return [c for c in cells if c.name("arch") == first
            or turn.get((c.name("defense"), c.name("arch"))) == c.name("attack")]


def combination_name(cell: CellSpec) -> str:
    """`em / at / resnet18 + robust`: the cell's names without its seed, its poisoned part where partial,
    its analyses."""
    name = " / ".join(cell.name(factor) for factor in ("attack", "defense", "arch"))
    if cell.partial:
        name += f" / poisoned {poisoned_label(cell.poison_ratio, classes_text(cell.poison_classes))}"
    return name + (f" + {', '.join(cell.analysis)}" if cell.analysis else "")


def rehearse(name_or_path: str, device: torch.device, overrides: GridOverrides | None = None, *,
             rehearsal: Rehearsal = Rehearsal(), executor=None, echo: Callable[[str], None] = print) -> list[Outcome]:
    """Run each combination of the grid at toy scale in a scratch folder; echo a line per combination as
    it finishes and return the outcomes, in the order they finished."""
    written, grid = rehearsal_grid(name_or_path, overrides, rehearsal)
    chosen = combinations(grid, grid.cells())
    names = {cell.cell_id: combination_name(cell) for cell in chosen}
    echo(f"rehearsing grid {grid.name}: {len(chosen)} combinations of its {len(written.cells())} cells, "
         f"{rehearsal.train_size} training images, {rehearsal.epochs} epoch each, on {device}")
    outcomes: list[Outcome] = []
    clock = [time.perf_counter()]

    def finished(record: CellResult) -> None:
        now = time.perf_counter()
        outcome = Outcome(names[record.cell_id], record.done, "" if record.done else error_line(record.error),
                          now - clock[0])
        clock[0] = now
        outcomes.append(outcome)
        echo(outcome.line())

    with tempfile.TemporaryDirectory(prefix="bench-rehearsal-") as scratch:
        run_grid(grid, Store(scratch), device, progress=False, executor=executor, retries=0, cells=chosen,
                 on_record=finished)
    return outcomes

"""What a grid would do and where it stands, read from the grid and the store alone.

`bench run --dry-run` and `bench status` are thin printers over these pure functions: which cells
are done, failed or pending (from the records), which poisons a run would generate (from the
poison cache's files, never loading the arrays), and what the rest would cost, from the timings
that earlier records carry.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from bench.cell import CellSpec, cell_label
from bench.grid import Grid
from bench.records import STATUSES as RECORD_STATUSES, CellResult
from bench.store import Store, canonical_hash

STATUSES = (*RECORD_STATUSES, "pending")  # a cell without a (readable) record is pending


@dataclass(frozen=True)
class CellState:
    cell: CellSpec
    status: str  # one of STATUSES
    error: dict | None = None  # a failed record's error: type, message (and traceback)


def error_line(error: dict | None) -> str:
    """A recorded error as one line: `Type: first line of the message`."""
    if not error:
        return ""
    message = (str(error.get("message", "")).strip().splitlines() or [""])[0]
    return f"{error.get('type', 'Error')}: {message[:300]}"


def records_by_cell(store: Store) -> dict[str, CellResult]:
    return {record.cell_id: record for record in store.records()}


def cell_states(cells: Iterable[CellSpec], records: Mapping[str, CellResult]) -> list[CellState]:
    states = []
    for cell in cells:
        record = records.get(cell.cell_id)
        status = record.status if record is not None else "pending"  # CellResult holds done or failed only
        states.append(CellState(cell, status, record.error if status == "failed" else None))
    return states


def count(states: Iterable[CellState]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for state in states:
        counts[state.status] += 1
    return counts


def poisons_to_generate(states: Iterable[CellState], store: Store) -> list[CellSpec]:
    """One cell per poison that the cells still to run need and the cache lacks, in grid order.

    A failed cell runs again, so it counts; an attack that is not cacheable is made at every run.
    """
    needed: dict[str, CellSpec] = {}
    for state in states:
        cell = state.cell
        if state.status == "done" or cell.poison_key in needed:
            continue
        # Existence only (Store.has_poison): the hash is checked when the run loads it, and a poison can be 150 MB.
        if cell.cacheable and store.has_poison(cell.poison_key):
            continue
        needed[cell.poison_key] = cell
    return list(needed.values())


def _train_key(spec: dict) -> str:
    """What training time depends on, besides the number of epochs."""
    return canonical_hash({k: spec.get(k) for k in ("data", "arch", "arch_config", "defense", "defense_config")})


def _poison_key(spec: dict) -> str:
    """What generation time depends on: the poison without its seed."""
    return canonical_hash({k: spec.get(k) for k in ("data", "attack", "attack_config")})


@dataclass(frozen=True)
class Timings:
    """Median recorded costs: training seconds per epoch by (data, arch, defense, their configs) and
    poison generation seconds by (data, attack, its config), with the devices they were measured on."""

    epoch_seconds: dict[str, float]
    generate_seconds: dict[str, float]
    devices: tuple[str, ...]
    records: int

    @classmethod
    def from_records(cls, records: Iterable[CellResult]) -> Timings:
        per_epoch, generate, devices, used = defaultdict(list), defaultdict(list), set(), 0
        for record in records:
            spec, timings = record.spec, record.timings or {}
            epochs = (spec.get("recipe") or {}).get("epochs")
            if not record.done or not timings.get("train_s") or not epochs:
                continue
            used += 1
            per_epoch[_train_key(spec)].append(timings["train_s"] / epochs)
            # generate_s is 0 where the cell found its poison cached; the poison's own cost is kept beside it.
            made = timings.get("poison_generate_s") or (record.poison or {}).get("generate_seconds")
            if made:
                generate[_poison_key(spec)].append(made)
            devices.add(record.provenance.get("device") or "unknown device")
        return cls({k: statistics.median(v) for k, v in per_epoch.items()},
                   {k: statistics.median(v) for k, v in generate.items()}, tuple(sorted(devices)), used)

    def train_seconds(self, cell: CellSpec) -> float | None:
        per_epoch = self.epoch_seconds.get(_train_key(cell.to_dict()))
        return None if per_epoch is None else per_epoch * cell.recipe.epochs

    def poison_seconds(self, cell: CellSpec) -> float | None:
        return self.generate_seconds.get(_poison_key(cell.to_dict()))


@dataclass(frozen=True)
class Estimate:
    seconds: float  # device time for the cells and poisons that have a matching timing
    cells: int  # pending or failed cells with a timing
    poisons: int  # poisons to generate with a timing
    cells_unknown: int
    poisons_unknown: int


def estimate(states: Iterable[CellState], poisons: Iterable[CellSpec], timings: Timings) -> Estimate:
    todo = [s.cell for s in states if s.status != "done"]
    poisons = list(poisons)  # counted twice below: an iterator would be empty the second time
    train = [t for t in map(timings.train_seconds, todo) if t is not None]
    generate = [t for t in map(timings.poison_seconds, poisons) if t is not None]
    return Estimate(sum(train) + sum(generate), len(train), len(generate), len(todo) - len(train),
                    len(poisons) - len(generate))


@dataclass(frozen=True)
class Plan:
    grid: Grid
    states: list[CellState]
    poisons: list[CellSpec]
    timings: Timings

    @property
    def estimate(self) -> Estimate:
        return estimate(self.states, self.poisons, self.timings)


def plan_grid(grid: Grid, store: Store) -> Plan:
    """What `bench run` would do for `grid` with this store; reads records and file names only."""
    records = records_by_cell(store)
    states = cell_states(grid.cells(), records)
    return Plan(grid, states, poisons_to_generate(states, store), Timings.from_records(records.values()))


def format_duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_plan(plan: Plan) -> str:
    """The dry-run listing: every cell with its state, the poisons to make, the cost."""
    counts = count(plan.states)
    lines = [f"grid {plan.grid.name}: {_n(len(plan.states), 'cell')}: "
             + ", ".join(f"{counts[s]} {s}" for s in STATUSES)]
    for state in plan.states:
        error = f"  ({error_line(state.error)})" if state.error else ""
        lines.append(f"  {state.status:<8} {state.cell.cell_id}  {state.cell.label}{error}")
    lines.append(f"poisons to generate: {len(plan.poisons)}")
    lines += [f"  {cell.poison_key}  {cell.name('attack')} (seed {cell.seed})" for cell in plan.poisons]
    lines.append(format_estimate(plan.estimate, plan.timings))
    return "\n".join(lines)


def format_estimate(est: Estimate, timings: Timings) -> str:
    if not timings.records:
        return "cost: no timings recorded yet"
    if not (est.cells or est.poisons):
        todo = est.cells_unknown + est.poisons_unknown
        return ("cost: nothing left to run" if not todo else
                f"cost: unknown: none of the {timings.records} timed records matches what is left to run")
    text = (f"cost: about {format_duration(est.seconds)} of device time, one cell at a time "
            f"({_n(est.cells, 'cell')} and {_n(est.poisons, 'poison')}, from medians of {_n(timings.records, 'record')} "
            f"on {', '.join(timings.devices)})")
    if est.cells_unknown or est.poisons_unknown:
        text += (f"; not counted: {_n(est.cells_unknown, 'cell')} and {_n(est.poisons_unknown, 'poison')} "
                 "with no matching timing")
    return text


def _n(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


@dataclass(frozen=True)
class GridStatus:
    grid: str
    counts: dict[str, int | None]  # pending is None where the grid file is unknown (records only)
    failures: list[tuple[str, str]]  # (cell label, one-line error)
    others: int = 0  # records naming this grid that it does not have as loaded (other overrides or versions)


def grid_status(grid: Grid, records: Mapping[str, CellResult]) -> GridStatus:
    states = cell_states(grid.cells(), records)
    ids = {s.cell.cell_id for s in states}
    others = sum(1 for cell_id, r in records.items() if r.grid == grid.name and cell_id not in ids)
    failures = [(s.cell.label, error_line(s.error)) for s in states if s.status == "failed"]
    return GridStatus(grid.name, count(states), failures, others)


def records_status(name: str, records: Mapping[str, CellResult]) -> GridStatus:
    """Done and failed counts of a grid known only from its records' `grid` field."""
    mine = [r for r in records.values() if r.grid == name]
    failed = [r for r in mine if r.status == "failed"]
    failures = [(cell_label(r.name("attack"), r.name("defense"), r.name("arch"), r.seed), error_line(r.error))
                for r in failed]
    return GridStatus(name, {"done": sum(r.done for r in mine), "failed": len(failed), "pending": None}, failures)


def store_status(records: Mapping[str, CellResult], shipped: Mapping[str, Grid]) -> list[GridStatus]:
    """`bench status` without --grid: each shipped grid with a record, then each other grid records name."""
    statuses = [grid_status(grid, records) for grid in shipped.values()]
    statuses = [s for s in statuses if s.counts["done"] or s.counts["failed"] or s.others]
    named = sorted({r.grid for r in records.values() if r.grid} - set(shipped))
    return statuses + [records_status(name, records) for name in named]


def format_status(status: GridStatus) -> str:
    counts = status.counts
    pending = "pending unknown (name its grid file with --grid)" if counts["pending"] is None else f"{counts['pending']} pending"
    lines = [f"grid {status.grid}: {counts['done']} done, {counts['failed']} failed, {pending}"]
    if status.others:
        lines.append(f"  ({status.others} more records name this grid with other settings: run overrides or an older file)")
    lines += [f"  failed  {label}: {error}" for label, error in status.failures]
    return "\n".join(lines)

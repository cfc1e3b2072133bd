"""What a grid would do and where it stands, read from the grid and the store (and the fingerprints
a run would judge records by, where the caller hands them in: `bench.executors.content_of`).

`bench run --dry-run` and `bench status` are thin printers over these pure functions: which cells
are done, failed or pending (from the records; a done record on other data or input files is
pending), which poisons a run would generate (from the poison cache's files, never loading the
arrays), and what the rest would cost, from the timings that earlier records carry: those of the
same data, arch and defense where there are some, else those of the same arch scaled by training
images and epochs (`Timings.train_estimate`).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from bench.cell import CellSpec, cell_label
from bench.describe import setting_text
from bench.grid import Grid
from bench.records import STATUSES as RECORD_STATUSES, CellResult
from bench.store import Store, canonical_hash

STATUSES = (*RECORD_STATUSES, "pending")  # a cell without a (readable) record is pending


@dataclass(frozen=True)
class CellState:
    cell: CellSpec
    status: str  # one of STATUSES
    error: dict | None = None  # a failed record's error: type, message (and traceback)
    why: str = ""  # a pending cell with a done record: what changed since it was made


def error_line(error: dict | None) -> str:
    """A recorded error as one line: `Type: first line of the message`."""
    if not error:
        return ""
    message = (str(error.get("message", "")).strip().splitlines() or [""])[0]
    return f"{error.get('type', 'Error')}: {message[:300]}"


def records_by_cell(store: Store) -> dict[str, CellResult]:
    return {record.cell_id: record for record in store.records()}


def cell_states(cells: Iterable[CellSpec], records: Mapping[str, CellResult],
                content: Callable[[CellSpec], tuple[str | None, str | None]] | None = None) -> list[CellState]:
    """Each cell's state from its record. With `content` (`bench.executors.content_of`: a cell's data
    and input fingerprints), a done record made on other data or input files is pending, as the run
    judges it (`CellResult.done_on`), and says why."""
    states = []
    for cell in cells:
        record = records.get(cell.cell_id)
        status = record.status if record is not None else "pending"  # CellResult holds done or failed only
        why = ""
        if status == "done" and content is not None:
            data, inputs = content(cell)
            if not record.done_on(data):
                status, why = "pending", "would rerun: data changed"
            elif not record.done_on(data, inputs):
                status, why = "pending", "would rerun: input files changed"
        states.append(CellState(cell, status, record.error if status == "failed" else None, why))
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


# Training images of the named datasets' full training splits, for a cell or record without train_size.
FULL_TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257}


def train_images(spec: dict) -> int | None:
    """The training images of a cell (its spec as a dict); None for the whole split of a dataset given by path."""
    data = spec.get("data") or {}
    return data.get("train_size") or FULL_TRAIN_SIZES.get(data.get("name"))


# Where no record has a cell's data, arch and defense, its training time is scaled by images x epochs from
# the records that share the most with it, in this order: (label, what they share).
SCALED_FROM: tuple[tuple[str, Callable[[dict], Any]], ...] = (
    ("{arch} / {defense}", lambda s: (s.get("arch"), s.get("arch_config"), s.get("defense"), s.get("defense_config"))),
    ("{arch}", lambda s: (s.get("arch"), s.get("arch_config"))),
    ("{arch} (other arch settings)", lambda s: s.get("arch")),
)


class Basis(NamedTuple):
    """What an estimate was made from, as `format_estimate` says it."""

    kind: str  # "exact": records of the same data, arch and defense; "scaled": of the same arch
    label: str  # for "scaled": the arch (and defense) the records share with the cell
    records: int  # the records it is the median of
    images: tuple[int, ...]  # their training images (lowest, highest)
    epochs: tuple[int, ...]  # their epochs (lowest, highest)


@dataclass(frozen=True)
class Timings:
    """Median recorded costs: training seconds per epoch by (data, arch, defense, their configs), seconds
    per training image and epoch by what `SCALED_FROM` groups, and poison generation seconds by (data,
    attack, its config) and per image by (attack, its config), with the devices they were measured on."""

    epoch_seconds: dict[str, float]
    generate_seconds: dict[str, float]
    devices: tuple[str, ...]
    records: int
    # (level of SCALED_FROM, its key) -> (median seconds per image-epoch, Basis)
    image_epoch_seconds: dict = field(default_factory=dict)
    image_generate_seconds: dict = field(default_factory=dict)  # hash of (attack, its config) -> (seconds per image, records)
    exact_records: dict = field(default_factory=dict)  # _train_key -> number of records

    @classmethod
    def from_records(cls, records: Iterable[CellResult]) -> Timings:
        per_epoch, generate, devices, used = defaultdict(list), defaultdict(list), set(), 0
        scaled, generate_per_image = defaultdict(list), defaultdict(list)
        for record in records:
            spec, timings = record.spec, record.timings or {}
            epochs = (spec.get("recipe") or {}).get("epochs")
            if not record.done or not timings.get("train_s") or not epochs:
                continue
            used += 1
            per_epoch[_train_key(spec)].append(timings["train_s"] / epochs)
            images = train_images(spec)
            if images:
                for level, (_, key) in enumerate(SCALED_FROM):
                    scaled[level, canonical_hash(key(spec))].append((timings["train_s"] / (images * epochs), images,
                                                                     epochs, spec))
            # generate_s is 0 where the cell found its poison cached; the poison's own cost is kept beside it.
            made = timings.get("poison_generate_s") or (record.poison or {}).get("generate_seconds")
            if made:
                generate[_poison_key(spec)].append(made)
                if images:
                    generate_per_image[_attack_key(spec)].append(made / images)
            devices.add(record.provenance.get("device") or "unknown device")
        bases = {}
        for (level, key), rows in scaled.items():
            spec = rows[0][3]
            label = SCALED_FROM[level][0].format(arch=spec.get("arch"), defense=spec.get("defense"))
            bases[level, key] = (statistics.median(r[0] for r in rows),
                                 Basis("scaled", label, len(rows), _span(r[1] for r in rows), _span(r[2] for r in rows)))
        return cls({k: statistics.median(v) for k, v in per_epoch.items()},
                   {k: statistics.median(v) for k, v in generate.items()}, tuple(sorted(devices)), used, bases,
                   {k: (statistics.median(v), len(v)) for k, v in generate_per_image.items()},
                   {k: len(v) for k, v in per_epoch.items()})

    def train_seconds(self, cell: CellSpec) -> float | None:
        """From records of the same data, arch and defense only (None where there is none)."""
        per_epoch = self.epoch_seconds.get(_train_key(cell.to_dict()))
        return None if per_epoch is None else per_epoch * cell.recipe.epochs

    def train_estimate(self, cell: CellSpec) -> tuple[float, Basis] | None:
        """`train_seconds` where records of the same data, arch and defense exist; else the median
        seconds per image and epoch of the first `SCALED_FROM` group with records, times the cell's
        images and epochs; None where no record of its arch has a known image count."""
        spec = cell.to_dict()
        exact = self.train_seconds(cell)
        if exact is not None:
            return exact, Basis("exact", "", self.exact_records.get(_train_key(spec), 0), (), ())
        images = train_images(spec)
        if not images:
            return None
        for level, (_, key) in enumerate(SCALED_FROM):
            found = self.image_epoch_seconds.get((level, canonical_hash(key(spec))))
            if found is not None:
                return found[0] * images * cell.recipe.epochs, found[1]
        return None

    def poison_seconds(self, cell: CellSpec) -> float | None:
        return self.generate_seconds.get(_poison_key(cell.to_dict()))

    def poison_estimate(self, cell: CellSpec) -> tuple[float, str] | None:
        """`poison_seconds`, else the median seconds per image of the same attack and config on other
        data times the cell's images; with "exact" or "scaled"."""
        exact = self.poison_seconds(cell)
        if exact is not None:
            return exact, "exact"
        spec = cell.to_dict()
        found = self.image_generate_seconds.get(_attack_key(spec))
        images = train_images(spec)
        return (found[0] * images, "scaled") if found is not None and images else None


def _attack_key(spec: dict) -> str:
    return canonical_hash({k: spec.get(k) for k in ("attack", "attack_config")})


def _span(values: Iterable[int]) -> tuple[int, ...]:
    values = sorted(set(values))
    return (values[0],) if len(values) == 1 else (values[0], values[-1])


@dataclass(frozen=True)
class Estimate:
    seconds: float  # device time for the cells and poisons that have a matching timing
    cells: int  # pending or failed cells with a timing
    poisons: int  # poisons to generate with a timing
    cells_unknown: int
    poisons_unknown: int
    bases: dict = field(default_factory=dict)  # Basis -> cells estimated from it
    poisons_scaled: int = 0  # of `poisons`, those scaled from the same attack on other data
    unknown_archs: tuple[str, ...] = ()  # the archs of the cells with no estimate


def estimate(states: Iterable[CellState], poisons: Iterable[CellSpec], timings: Timings) -> Estimate:
    todo = [s.cell for s in states if s.status != "done"]
    poisons = list(poisons)  # counted twice below: an iterator would be empty the second time
    train = {cell.cell_id: timings.train_estimate(cell) for cell in todo}
    known = [t for t in train.values() if t is not None]
    bases: dict = defaultdict(int)
    for _, basis in known:
        bases[basis] += 1
    generate = [t for t in map(timings.poison_estimate, poisons) if t is not None]
    unknown_archs = tuple(dict.fromkeys(cell.name("arch") for cell in todo if train[cell.cell_id] is None))
    return Estimate(sum(t for t, _ in known) + sum(t for t, _ in generate), len(known), len(generate),
                    len(todo) - len(known), len(poisons) - len(generate), dict(bases),
                    sum(how == "scaled" for _, how in generate), unknown_archs)


@dataclass(frozen=True)
class Plan:
    grid: Grid
    states: list[CellState]
    poisons: list[CellSpec]
    timings: Timings

    @property
    def estimate(self) -> Estimate:
        return estimate(self.states, self.poisons, self.timings)


def plan_grid(grid: Grid, store: Store, content: Callable[[CellSpec], tuple[str | None, str | None]] | None = None) -> Plan:
    """What `bench run` would do for `grid` with this store; reads records and file names only, and
    judges done records against `content` where given (`cell_states`)."""
    records = records_by_cell(store)
    states = cell_states(grid.cells(), records, content)
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
        error = f"  ({error_line(state.error)})" if state.error else f"  ({state.why})" if state.why else ""
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
                f"cost: unknown: none of the {timings.records} timed records matches what is left to run"
                + (f" (no timing of {', '.join(est.unknown_archs)} to scale from)" if est.unknown_archs else ""))
    bases = est.bases
    exact = sum(n for basis, n in bases.items() if basis.kind == "exact")
    how = ([f"{_n(exact, 'cell')} from records of the same data, arch and defense"] if exact else [])
    how += [f"{_n(n, 'cell')} scaled from {_n(b.records, 'record')} of {b.label} at "
            f"{_range(b.images, '{:,}')} images x {_range(b.epochs, '{}')} epochs"
            for b, n in sorted(bases.items(), key=lambda item: -item[1]) if b.kind == "scaled"]
    if est.poisons:
        scaled = f", {est.poisons_scaled} scaled by images from other data" if est.poisons_scaled else ""
        how.append(f"{_n(est.poisons, 'poison')} from records of the same attack and config{scaled}")
    text = (f"cost: about {format_duration(est.seconds)} of device time, one cell at a time, on "
            f"{', '.join(timings.devices)} ({'; '.join(how) or 'nothing timed'})")
    unknown = [f"{_n(est.cells_unknown, 'cell')} (no timing of {', '.join(est.unknown_archs)} to scale from)"
               ] if est.cells_unknown else []
    unknown += [f"{_n(est.poisons_unknown, 'poison')} (no record of their attack and config)"] if est.poisons_unknown else []
    return text + (f"; unknown: {' and '.join(unknown)}" if unknown else "")


def _range(values: tuple[int, ...], fmt: str) -> str:
    return "-".join(fmt.format(v) for v in values)


def _n(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


class Failure(NamedTuple):
    label: str  # how people name the cell: em / none / tiny_cnn / seed 0
    error: str  # one line: Type: first line of the message
    cell_id: str = ""
    spec: dict = {}  # the cell's spec (CellSpec.to_dict()): what tells apart two failures of one label


@dataclass(frozen=True)
class GridStatus:
    grid: str
    counts: dict[str, int | None]  # pending is None where the grid file is unknown (records only)
    failures: list[Failure]
    others: int = 0  # records naming this grid that it does not have as loaded (other overrides or versions)
    rerun: int = 0  # pending cells whose done record was made on other data or input files


def grid_status(grid: Grid, records: Mapping[str, CellResult],
                content: Callable[[CellSpec], tuple[str | None, str | None]] | None = None) -> GridStatus:
    states = cell_states(grid.cells(), records, content)
    ids = {s.cell.cell_id for s in states}
    others = sum(1 for cell_id, r in records.items() if r.grid == grid.name and cell_id not in ids)
    failures = [Failure(s.cell.label, error_line(s.error), s.cell.cell_id, s.cell.to_dict())
                for s in states if s.status == "failed"]
    return GridStatus(grid.name, count(states), failures, others, sum(1 for s in states if s.why))


def records_status(name: str, records: Mapping[str, CellResult]) -> GridStatus:
    """Done and failed counts of a grid known only from its records' `grid` field."""
    mine = [r for r in records.values() if r.grid == name]
    failed = [r for r in mine if r.status == "failed"]
    failures = [Failure(cell_label(r.name("attack"), r.name("defense"), r.name("arch"), r.seed), error_line(r.error),
                        r.cell_id, r.spec) for r in failed]
    return GridStatus(name, {"done": sum(r.done for r in mine), "failed": len(failed), "pending": None}, failures)


def differences(specs: list[dict]) -> list[dict[str, Any]]:
    """For each spec, its values of the fields (dotted: `attack_config.steps`) in which the specs differ."""
    flat = [_flatten(spec) for spec in specs]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({repr(f.get(k, _UNSET)) for f in flat}) > 1]
    return [{k: f.get(k, _UNSET) for k in differing} for f in flat]


_UNSET = "(unset)"


def _flatten(spec: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in spec.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    if status.rerun:
        lines.append(f"  {_n(status.rerun, 'pending cell')} with a done record made on other data or input files "
                     "(would rerun: data changed)")
    if status.others:
        lines.append(f"  ({status.others} more records name this grid with other settings: run overrides or an older file)")
    by_label: dict[str, list[Failure]] = defaultdict(list)
    for failure in status.failures:
        by_label[failure.label].append(failure)
    for failure in status.failures:
        lines.append(f"  failed  {failure.cell_id}  {failure.label}: {failure.error}")
        twins = by_label[failure.label]
        if len(twins) > 1:  # one name, several experiments (other --set values, another version of the grid)
            differ = differences([twin.spec for twin in twins])[twins.index(failure)]
            lines.append("          differs in " + (", ".join(f"{k} = {setting_text(v)}" for k, v in differ.items())
                                                   or "nothing but its id"))
    return "\n".join(lines)

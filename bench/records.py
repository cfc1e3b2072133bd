"""The record of one cell: `CellResult`, the one type every layer builds, stores and reads.

A record is written once, when a cell finishes or fails, as the JSON of `CellResult.to_json()`;
`CellResult.from_json` reads it back. The JSON has not changed since records were plain dicts: a
field the cell did not produce (no MI analysis, no out-of-memory retry) is left out rather than
written as null, and keys this version does not know (from a newer version, or added by hand) are
kept in `extra` and written back as they were, so reading and writing back a record this project
wrote never changes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from bench.cell import CellSpec

STATUSES = ("done", "failed")
METRIC_KEYS = ("test_acc_last", "test_acc_best", "best_epoch", "train_acc")


def is_partial(ratio: float, classes) -> bool:
    """Whether a poisoning leaves part of the training set clean (a ratio below 1, or some classes only)."""
    return ratio < 1 or bool(classes)


def poisoned_label(ratio: float, classes: str = "") -> str:
    """What a poisoning perturbs, in words: '20%', '100% of classes 3, 5'; `classes` as text ('' = every class)."""
    which = f" of class{'es' if ',' in classes else ''} {classes}" if classes else ""
    return f"{100 * ratio:g}%{which}"


def classes_text(classes) -> str:
    """Class indices as the report and labels write them: '3, 5' ('' for every class)."""
    return ", ".join(map(str, classes))


class RecordError(ValueError):
    """JSON that is not a cell record (no cell id, no status)."""


@dataclass(frozen=True)
class CellResult:
    """A finished or failed cell: what ran (`spec`), how it ended, and what it measured.

    Build one with `finished` or `failed`; fields that a kind of record does not have stay None.
    """

    cell_id: str
    grid: str
    spec: dict  # CellSpec.to_dict(): data, attack (+ config), defense (+ config), arch, recipe, seed, analysis, variants
    status: str  # "done" or "failed"
    attempts: int  # 0 where no worker got to run the cell (its poison failed, its worker died)
    provenance: dict  # bench.environment.provenance: versions, device, host
    # A done cell:
    # METRIC_KEYS: accuracies in [0, 1], best_epoch; with a validation split (early_stop) also
    # test_acc_early_stop, early_stop_epoch and val_acc_best
    metrics: dict | None = None
    history: list | None = None  # per epoch: epoch, loss, train_acc, test_acc (val_acc with a validation split), seconds
    precision: str | None = None  # what training ran in: "bf16" or "fp32"
    poison: dict | None = None  # key, attack, config, seed, norm, budget, measured size, timings, cached
    timings: dict | None = None  # seconds: generate_s, poison_generate_s, defense_prepare_s, train_s, ...
    analysis: dict | None = None  # bench.mi.analyze's figures where the grid asked for "mi"
    pretraining: dict | None = None  # a self-supervised victim's (bench.contrastive): its loss per epoch, seconds
    out_of_memory: dict | None = None  # the batch sizes tried where CUDA ran out of memory
    # A partial poisoning's images (spec poison_ratio, poison_classes): ratio, classes, count, of, seed and
    # the SHA-256 of their positions in the full split; None where the whole training set is poisoned.
    poisoned: dict | None = None
    # A failed cell (and a done one that needed more than one attempt):
    error: dict | None = None  # type, message, traceback of the last attempt
    earlier_errors: list | None = None  # the attempts before the last
    wall_seconds: float | None = None
    data_fingerprint: str | None = None  # bench.data.fingerprint of the data it ran on; None before it existed
    # Attack.input_fingerprint: the files the attack reads besides the data (external's poison file);
    # None where it reads none, or for records from before it existed.
    input_fingerprint: str | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they were
    # Not stored: set on the record an executor hands back for a cell it found done.
    skipped: bool = field(default=False, compare=False)

    @classmethod
    def finished(cls, cell: CellSpec, grid: str, outcome: Mapping[str, Any], *, provenance: dict, attempts: int,
                 earlier_errors: list, wall_seconds: float, data_fingerprint: str | None = None,
                 input_fingerprint: str | None = None) -> CellResult:
        """A done cell; `outcome` is `bench.runner.run_cell`'s (metrics, history, precision, poison, timings, ...)."""
        return cls(cell.cell_id, grid, cell.to_dict(), "done", attempts, provenance, earlier_errors=earlier_errors,
                   wall_seconds=wall_seconds, data_fingerprint=data_fingerprint, input_fingerprint=input_fingerprint,
                   **outcome)

    @classmethod
    def failed(cls, cell: CellSpec, grid: str, error: dict, *, provenance: dict, attempts: int,
               earlier_errors: list | None = None, wall_seconds: float | None = None,
               data_fingerprint: str | None = None, input_fingerprint: str | None = None) -> CellResult:
        """A cell that could not finish: `error` is the last attempt's (type, message, traceback)."""
        return cls(cell.cell_id, grid, cell.to_dict(), "failed", attempts, provenance, error=error,
                   earlier_errors=earlier_errors, wall_seconds=wall_seconds, data_fingerprint=data_fingerprint,
                   input_fingerprint=input_fingerprint)

    @property
    def done(self) -> bool:
        return self.status == "done"

    def done_on(self, fingerprint: str | None, inputs: str | None = None) -> bool:
        """Done, on the data of `fingerprint` and with the attack's input files of `inputs`. A record
        from before fingerprints existed, or a question without one, trusts the names as the store
        always did."""
        return self.done and _same(self.data_fingerprint, fingerprint) and _same(self.input_fingerprint, inputs)

    def content_label(self) -> str:
        """What the record was made on, for a file name: `<data fingerprint>[.<input fingerprint>]`."""
        return ".".join(f for f in (self.data_fingerprint, self.input_fingerprint) if f)

    @property
    def attack(self) -> str:
        """The attack's registered plugin (`name("attack")` is what the grid calls it)."""
        return self.spec.get("attack", "")

    @property
    def defense(self) -> str:
        return self.spec.get("defense", "")

    @property
    def arch(self) -> str:
        return self.spec.get("arch", "")

    @property
    def seed(self) -> int | None:
        return self.spec.get("seed")

    def name(self, factor: str) -> str:
        """What the record calls its `factor` (attack, defense or arch): the variant name of the grid that
        ran it, else the plugin's (`CellSpec.name`)."""
        return self.spec.get("variants", {}).get(factor, self.spec.get(factor, ""))

    def named(self, variants: dict) -> CellResult:
        """This record under a grid's own names for its cell (`CellSpec.variants`). The names are not part
        of the cell id, so a grid reporting a cell another grid ran (or ran under an older name) shows its
        own names."""
        spec = {k: v for k, v in self.spec.items() if k != "variants"}
        return replace(self, spec={**spec, "variants": dict(variants)} if variants else spec)

    def to_json(self) -> dict:
        """The record as stored: every field that is set, and the unknown keys it was read with."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_STORED}
        return {**self.extra, **{k: v for k, v in out.items() if v is not None}}

    @classmethod
    def from_json(cls, data: Any) -> CellResult:
        """A stored record; RecordError, naming what is wrong, where `data` is not one: no cell id,
        a status other than done or failed, no spec, a done record without its metrics, or a field
        of the wrong kind. The store then treats the cell as not done."""
        if not isinstance(data, dict):
            raise RecordError(f"a record is a JSON object, got {type(data).__name__}")
        if not isinstance(data.get("cell_id"), str) or not data["cell_id"]:
            raise RecordError("no cell_id")
        if data.get("status") not in STATUSES:
            raise RecordError(f"status {data.get('status')!r} is not one of {', '.join(STATUSES)}")
        if not isinstance(data.get("spec"), dict):
            raise RecordError("no spec (the cell it ran)")
        for key, kind in _KINDS.items():
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise RecordError(f"{key} is a {type(data[key]).__name__}, not a {_kind_name(kind)}")
        if data["status"] == "done":
            metrics = data.get("metrics") or {}
            missing = [k for k in METRIC_KEYS if not _is_number(metrics.get(k))]
            if missing:
                raise RecordError(f"a done record without its metrics ({', '.join(missing)})")
        known = {f.name for f in fields(cls)} - _NOT_STORED
        values = {k: v for k, v in data.items() if k in known}
        return cls(**{"grid": "", "attempts": 0, "provenance": {}, **values},
                   extra={k: v for k, v in data.items() if k not in known})


_NOT_STORED = {"extra", "skipped"}
_KINDS = {"grid": str, "attempts": int, "provenance": dict, "metrics": dict, "history": list, "precision": str,
          "poison": dict, "timings": dict, "analysis": dict, "pretraining": dict, "out_of_memory": dict, "poisoned": dict, "error": dict,
          "earlier_errors": list, "wall_seconds": (int, float), "data_fingerprint": str,
          "input_fingerprint": str}


def _kind_name(kind) -> str:
    return "number" if kind == (int, float) else {str: "string", int: "whole number", dict: "JSON object",
                                                   list: "list"}[kind]


def _same(recorded: str | None, asked: str | None) -> bool:
    return recorded is None or asked is None or recorded == asked


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

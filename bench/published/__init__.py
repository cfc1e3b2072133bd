"""The published numbers we hold ourselves to, as data: one TOML file per source in this folder.

In the spirit of RobustBench (results as data): a table from a paper is a file, never typed into
code. Each file states where its numbers come from (paper, table, arXiv id or URL, what was read:
the paper's table or an official repository file at a commit), the recipe the source trained with, and its table: a row per attack (the
source's label, our attack names that make the same poison, the budget as the source states it,
the numbers in %) and a column per defense (the source's label, our defense names, the config they
must have). What no config of ours can match is written as `differs`, and a cell with one is
never comparable. `bench.report.tables.compare_published` puts our cells beside these numbers.

A file's keys (docs/reports.md, "Beside the published numbers", shows one in full):

    title, paper, table, read_from    what and where from (required); read_from names the paper's table or
                                      the official file (repository, commit) the numbers and recipe were read from
    arxiv, url, cite                  where to find it; a BibTeX key of bench.citations
    metric                            which of our metrics the numbers are (test_acc_last / _best), if stated
    unverified                        true for a third party's numbers, not checked against the method's own paper
    notes                             differences worth knowing that do not decide comparability
    [recipe]                          RECIPE_KEYS, only those the source states
    [defenses.<label>]                ours = [...], config = {...}, differs = "..."
    [attacks.<label>]                 ours, budget ("Linf 8/255", "L2 1.0", "L0 1 px", "none", "unbounded"), config,
                                      differs, unverified, acc = {<defense label> = %}
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable

from bench.config import ConfigError, comma_choices, parse_number

ALL = "published"  # the --compare value that means every shipped source
# What a source's [recipe] may state, in our names: the data, the victim and bench.train.Recipe's fields.
RECIPE_KEYS = ("dataset", "train_size", "test_size", "arch", "optimizer", "epochs", "batch_size", "lr", "momentum",
               "nesterov", "weight_decay", "schedule", "milestones", "gamma", "grad_clip", "crop_padding", "flip")
# Without these a number cannot be put beside ours at all: each moves poisoned accuracy by points.
CORE_RECIPE_KEYS = ("dataset", "train_size", "arch", "optimizer", "epochs", "batch_size", "lr", "weight_decay")
# Points of accuracy beyond which a comparable cell is flagged. Published cells are one run (or a
# mean without its spread) on the original CIFAR-10; poisoned accuracy moves by points from seed to
# seed where a clean ResNet-18 moves by tenths, so a smaller tolerance would flag seed noise. A flag
# asks for a look, not a verdict: set --tolerance to the spread of your own seeds.
DEFAULT_TOLERANCE = 3.0
_NORMS = {"Linf": "linf", "L2": "l2", "L0": "l0"}
_BUDGET = re.compile(r"(Linf|L2|L0) (\d+(?:\.\d+)?(?:/\d+)?)(?: px)?")


def number(value: Any) -> Any:
    """'8/255' -> 8/255 as a float, as papers write budgets; 'none' -> None (TOML has no null); else as is."""
    if isinstance(value, str):
        if value == "none":
            return None
        if re.fullmatch(r"\d+/\d+", value):
            return float(parse_number(value))
    return value


@dataclass(frozen=True)
class Budget:
    """An attack's budget as the source states it: `text`, and its norm and size where it is one.

    `norm` is linf, l2 or l0 (eps in [0, 1] pixel units, pixels for l0), "none" for an attack that
    perturbs nothing (eps 0), linf 1.0 for "unbounded" (a change bounded by no norm: CUDA's blur), or
    None for a budget that is no norm the source states.
    """

    text: str
    norm: str | None
    eps: float | None

    @classmethod
    def parse(cls, text: str) -> Budget:
        if text == "none":
            return cls(text, "none", 0.0)
        if text == "unbounded":  # bounded by no norm (CUDA): the claim such a poison of ours makes, L-inf 1
            return cls(text, "linf", 1.0)
        found = _BUDGET.fullmatch(text)
        if not found:
            return cls(text, None, None)
        return cls(text, _NORMS[found.group(1)], float(parse_number(found.group(2))))


@dataclass(frozen=True)
class PublishedDefense:
    """A column of a source's table: its label and our defenses that do the same."""

    label: str
    ours: tuple[str, ...] = ()
    config: dict = field(default_factory=dict)  # fields our defense's config must have (values in our units)
    differs: str = ""  # what no config of ours matches: a cell with it is never comparable


@dataclass(frozen=True)
class PublishedAttack:
    """A row of a source's table: its label, our attacks that make the same poison, and its numbers."""

    label: str
    budget: Budget | None  # None: the source does not state it
    acc: dict  # defense label -> clean test accuracy in %
    ours: tuple[str, ...] = ()
    config: dict = field(default_factory=dict)  # fields our attack's config must have
    differs: str = ""
    unverified: bool = False


@dataclass(frozen=True)
class PublishedSource:
    """One published table and the recipe it was made with (a file of this folder)."""

    id: str  # the file's name without .toml: what --compare takes
    title: str
    paper: str
    table: str
    read_from: str
    recipe: dict  # RECIPE_KEYS the source states -> value ("all" for a whole split, None for no clipping)
    defenses: tuple[PublishedDefense, ...]
    attacks: tuple[PublishedAttack, ...]
    arxiv: str = ""
    url: str = ""
    cite: str = ""
    metric: str | None = None  # test_acc_last or test_acc_best where the source says which
    unverified: bool = False
    notes: tuple[str, ...] = ()

    @property
    def link(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv and not self.url else self.url


_SOURCE_KEYS = {"title", "paper", "table", "read_from", "arxiv", "url", "cite", "metric", "unverified", "notes",
                "recipe", "defenses", "attacks"}
_DEFENSE_KEYS = {"ours", "config", "differs"}
_ATTACK_KEYS = {"ours", "budget", "config", "differs", "unverified", "acc"}


def _check_keys(found: Iterable[str], allowed: set[str], where: str) -> None:
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def parse_source(source_id: str, raw: dict) -> PublishedSource:
    """A source from its TOML table, every key and number checked; errors name the file and the key."""
    where = f"published source {source_id}"
    _check_keys(raw, _SOURCE_KEYS, where)
    missing = [k for k in ("title", "paper", "table", "read_from", "recipe", "defenses", "attacks") if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    _check_keys(raw["recipe"], set(RECIPE_KEYS), f"{where}, recipe")
    if raw.get("metric") not in (None, "test_acc_last", "test_acc_best"):
        raise ConfigError(f"{where}, metric: must be test_acc_last or test_acc_best, got {raw['metric']!r}")
    defenses = []
    for label, column in raw["defenses"].items():
        _check_keys(column, _DEFENSE_KEYS, f"{where}, defenses.{label}")
        defenses.append(PublishedDefense(label, tuple(column.get("ours", ())),
                                         {k: number(v) for k, v in column.get("config", {}).items()},
                                         column.get("differs", "")))
    labels = [d.label for d in defenses]
    attacks = []
    for label, row in raw["attacks"].items():
        _check_keys(row, _ATTACK_KEYS, f"{where}, attacks.{label}")
        acc = row.get("acc", {})
        unknown = [c for c in acc if c not in labels]
        if unknown:
            raise ConfigError(f"{where}, attacks.{label}.acc: {unknown[0]!r} is no column; columns: {', '.join(labels)}")
        bad = [c for c, v in acc.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100]
        if bad:
            raise ConfigError(f"{where}, attacks.{label}.acc.{bad[0]}: must be an accuracy in % (0-100), got {acc[bad[0]]!r}")
        budget = Budget.parse(row["budget"]) if "budget" in row else None
        attacks.append(PublishedAttack(label, budget, {c: float(v) for c, v in acc.items()}, tuple(row.get("ours", ())),
                                       {k: number(v) for k, v in row.get("config", {}).items()}, row.get("differs", ""),
                                       bool(row.get("unverified", False))))
    recipe = {k: number(v) for k, v in raw["recipe"].items()}
    return PublishedSource(source_id, raw["title"], raw["paper"], raw["table"], raw["read_from"], recipe,
                           tuple(defenses), tuple(attacks), raw.get("arxiv", ""), raw.get("url", ""), raw.get("cite", ""),
                           raw.get("metric"), bool(raw.get("unverified", False)), tuple(raw.get("notes", ())))


def shipped_sources() -> dict[str, PublishedSource]:
    """Id -> source of every file shipped in this folder (package data), in name order."""
    folder = resources.files("bench.published")
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".toml")), key=lambda p: p.name)
    return {p.name[: -len(".toml")]: parse_source(p.name[: -len(".toml")], tomllib.loads(p.read_text(encoding="utf-8")))
            for p in files}


def select_sources(text: str | Iterable[str]) -> tuple[PublishedSource, ...]:
    """--compare's value: 'published' (every shipped source) or comma-separated source ids.

    Anything else is a ValueError that names the option and the allowed values, on one line.
    """
    sources = shipped_sources()
    names = comma_choices(text, (ALL, *sources), "--compare", "published source")
    if ALL in names:
        return tuple(sources.values())
    return tuple(sources[name] for name in names)


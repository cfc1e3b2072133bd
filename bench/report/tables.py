"""The report's numbers: records -> a tidy frame -> summary tables and the MI analysis, as DataFrames.

Functions of the records and of frames only: no file, no plugin registry, and no text beyond the
values tidy's columns hold (`cifar10 (400)`, `cpu_smoke*, 2 ep`, `Linf 8/255`, which the CSV carries
as they are), the training curves' legend and title, which join them, and what differs from a
published source (`compare_published`'s `differs`: `epochs 8 vs 60`, a column of its CSV). The
sources come in parsed (`bench.published`), so matching reads each file's mapping, not code.

The attack is keyed by two columns, its name and its budget: a table with attacks as rows (or
columns) has the two-level index (attack, budget), and a table of one attack keys its group by the
pair. `bench.report.render` joins them into labels such as `em (Linf 8/255)`. The attack, defense and arch columns hold what the
grid calls them (a variant's name, `[variants.NAME]`); `<factor>_plugin` holds the plugin that ran.

Partial poisoning is the factor `poison_ratio`, keyed like the attack by two columns: the poisoned
fraction and the classes it was drawn from (`poison_classes`, '' for every class). A fully poisoned
cell has the key FULL_POISON; `ratio_tables` puts each attack against the ratio, the clean baseline
(one cell, which poisons nothing) under every ratio as the reference it is.

A table's marks and ranks compare its rows within each column by Welch's one-sided t-test at
SIGNIFICANCE, from each cell's mean, sample std and seed count (Welch's t from summary statistics is
exact, so the seeds' values need not be kept). A mark is a key, "best" or "tied", which `render`
turns into bold or a dagger.
"""
from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind_from_stats

from bench.config import budget_label, on_255_grid
from bench.published import (CORE_RECIPE_KEYS, DEFAULT_TOLERANCE, PublishedAttack, PublishedDefense,
                             PublishedSource)
from bench.records import CellResult, classes_text, is_partial, poisoned_label

METRICS = ("test_acc_last", "test_acc_best", "train_acc", "test_acc_early_stop")
# Accuracies only some cells record: test_acc_early_stop where the defense holds out a validation split (early_stop).
OPTIONAL_METRICS = ("test_acc_early_stop",)
ANALYSIS_METRICS = {  # key in CellResult.analysis -> unit; "%" is a fraction in the record, as the accuracies
    "mi_cca": "nats", "mi_gaussian": "nats", "mi_ksg": "nats", "cond_cov_ratio": "", "cond_cov_trace": "",
    "intra_class_cosine": "", "robust_acc": "%", "autoattack_acc": "%",
}
MI_METRICS = tuple(m for m in ANALYSIS_METRICS if m.startswith("mi_"))  # bench.mi's estimates, the default first
# bench.robust's: PGD's and AutoAttack's robust accuracy; the rest of ANALYSIS_METRICS is the MI analysis
ROBUST_METRICS = ("robust_acc", "autoattack_acc")
# What a record's robust accuracy was measured under (bench.robust.robust_accuracy's and
# autoattack_accuracy's keys): records that differ in any of these are not averaged together.
ROBUST_SETUP_KEYS = ("robust_eps", "robust_step_size", "robust_steps", "robust_random_start", "robust_images",
                     "robust_precision", "autoattack_eps", "autoattack_version", "autoattack_images",
                     "autoattack_precision")
FACTORS = ("dataset", "arch", "recipe", "attack", "defense", "poison_ratio")
POISON_COLUMNS = ("poison_ratio", "poison_classes")  # tidy's key of the poison_ratio factor
FULL_POISON = (1.0, "")  # the whole training set poisoned: what every record without partial poisoning has
# The reference row, shown and never marked or ranked: the plugin under its registered name and as reports
# show it (its display name, `bench.report.write.displayed`).
BASELINE_ATTACKS = ("clean", "Clean")
PLUGIN_FACTORS = ("attack", "defense", "arch")  # the factors a grid may name by a variant of their plugin


def recipe_label(spec: dict) -> str:
    return f"{spec['recipe_name']}, {spec['recipe']['epochs']} ep"


def cell_labels(record: CellResult) -> dict[str, str]:
    """A record's factors as tidy's columns hold them: dataset (with its subset size), arch, recipe, attack,
    budget, defense, each under the record's name for it (a variant's, else the plugin's)."""
    spec, poison = record.spec, record.poison or {}
    train_size = spec["data"].get("train_size")
    return {"dataset": spec["data"]["name"] + (f" ({train_size})" if train_size else ""), "arch": record.name("arch"),
            "recipe": recipe_label(spec), "attack": record.name("attack"),
            "budget": budget_label(poison.get("norm", "linf"), poison.get("budget", 0.0)), "defense": record.name("defense"),
            "poison_ratio": float(spec.get("poison_ratio", 1.0)), "poison_classes": classes_text(spec.get("poison_classes", []))}


# The part of a record's spec that says what each factor's label stands for.
SETTINGS_OF = {"dataset": "data", "arch": "arch_config", "recipe": "recipe", "attack": "attack_config",
               "defense": "defense_config"}


def told_apart(records: list[CellResult]) -> dict[str, dict[str, str]]:
    """`cell_labels` of each record (by cell id), where two records under one label ran with other
    settings (resnet18 at width 8 and at 16, em with 10 or 20 steps, from different grids or `--set`)
    the label names what differs: `resnet18 (width 8)`. Otherwise they would be averaged as seeds of
    one cell. Labels no other record shares with other settings stay as they are."""
    labels = {r.cell_id: cell_labels(r) for r in records}
    for factor, key in SETTINGS_OF.items():
        groups: dict[tuple, dict[str, dict]] = {}
        for r in records:
            label = labels[r.cell_id]
            settings = {k: v for k, v in r.spec.get(key, {}).items() if not (factor == "dataset" and k == "name")}
            group = factor_key(label, factor)
            groups.setdefault(group, {})[r.cell_id] = settings
        for members in groups.values():
            distinct = {json.dumps(v, sort_keys=True) for v in members.values()}
            if len(distinct) < 2:
                continue
            keys = sorted({k for v in members.values() for k in v})
            differing = [k for k in keys if len({json.dumps(v.get(k), sort_keys=True) for v in members.values()}) > 1]
            for cell_id, settings in members.items():
                what = ", ".join(f"{k} {value_text(settings.get(k))}" for k in differing)
                labels[cell_id][factor] = f"{labels[cell_id][factor]} ({what})"
    return labels


def tidy(records: Iterable[CellResult]) -> pd.DataFrame:
    """One row per finished cell and metric: accuracies (robust too) in %, the MI analysis in its own units; each
    factor under the record's name for it, and the plugin behind it (citations, depth) at the end."""
    rows = []
    done = [r for r in records if r.done]
    labels = told_apart(done)
    for r in done:
        base = {"cell_id": r.cell_id, "grid": r.grid, **labels[r.cell_id], "seed": r.spec["seed"]}
        plugins = {f"{factor}_plugin": r.spec[factor] for factor in PLUGIN_FACTORS}
        for metric in METRICS:
            if metric in OPTIONAL_METRICS and metric not in r.metrics:
                continue
            rows.append({**base, "metric": metric, "value": 100 * r.metrics[metric], "unit": "%", **plugins})
        for metric, value in (r.analysis or {}).items():
            if metric in ANALYSIS_METRICS:
                unit = ANALYSIS_METRICS[metric]
                rows.append({**base, "metric": metric, "value": 100 * value if unit == "%" else value, "unit": unit,
                             **plugins})
    columns = ["cell_id", "grid", "dataset", "arch", "recipe", "attack", "budget", "defense", *POISON_COLUMNS, "seed",
               "metric", "value", "unit", *(f"{factor}_plugin" for factor in PLUGIN_FACTORS)]
    return pd.DataFrame(rows, columns=columns)


def with_poison_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with POISON_COLUMNS, at FULL_POISON where it lacks them (a CSV of a report without partial
    poisoning, a frame built by hand)."""
    missing = {column: value for column, value in zip(POISON_COLUMNS, FULL_POISON) if column not in df}
    return df.assign(**missing) if missing else df


def partial_poisoning(df: pd.DataFrame) -> bool:
    """Whether any cell of the tidy frame poisoned only part of its training set."""
    df = with_poison_columns(df)
    return bool(((df.poison_ratio < 1) | (df.poison_classes != "")).any())


def without_full_poison_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The tidy frame as the CSV holds it: without POISON_COLUMNS where every cell poisoned its whole
    training set, so reports of grids without partial poisoning keep the columns they always had."""
    return df if partial_poisoning(df) else df.drop(columns=list(POISON_COLUMNS))


@dataclass(frozen=True)
class TableLayout:
    """Which factor runs down the rows and which across the columns; one table per value of the rest."""

    rows: str = "attack"
    columns: str = "defense"

    def __post_init__(self):
        for name in ("rows", "columns"):
            if getattr(self, name) not in FACTORS:
                raise ValueError(f"--{name}: {getattr(self, name)!r} is not a factor; allowed: {', '.join(FACTORS)}")
        if self.rows == self.columns:
            raise ValueError(f"--rows and --columns must differ, both are {self.rows!r}")

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(f for f in FACTORS if f not in (self.rows, self.columns))


def key_columns(factor: str) -> list[str]:
    """The tidy columns that key a factor's values: the attack by its name and budget, the poison ratio
    by the ratio and its classes, any other by itself."""
    return {"attack": ["attack", "budget"], "poison_ratio": list(POISON_COLUMNS)}.get(factor, [factor])


def factor_key(values: Mapping, factor: str):
    """The key of `factor` in `values` (tidy column -> value): its value, the attack's (attack, budget)."""
    columns = key_columns(factor)
    return tuple(values[c] for c in columns) if len(columns) > 1 else values[factor]


def _rank(order, value: str) -> int:
    order = list(order or [])
    return order.index(value) if value in order else len(order)


def ordered(values: Iterable, order: Iterable[str] | None, name: Callable = lambda value: value) -> list:
    """The distinct `values` in `order` (grid order) of their plugin `name`, then sorted."""
    return sorted(dict.fromkeys(values), key=lambda value: (_rank(order, name(value)), value))


def positions(column: pd.Series, order: Iterable[str] | None) -> pd.Series:
    """Each value's position in `ordered(column, order)`: a `sort_values` key for grid order."""
    return column.map({value: i for i, value in enumerate(ordered(column, order))})


def factor_index(frame: pd.DataFrame, factor: str, order: Iterable[str] | None) -> pd.Index:
    """The distinct keys of `factor` in `frame`, in grid `order` of their name, then sorted; the attack's as
    the two-level index (attack, budget)."""
    columns = key_columns(factor)
    keys = ordered(zip(*(frame[c] for c in columns)), order, itemgetter(0))
    if len(columns) > 1:
        return pd.MultiIndex.from_tuples(keys, names=columns)
    return pd.Index([key for key, in keys], name=factor)


@dataclass(frozen=True)
class SummaryTable:
    """One table: mean, std and number of seeds per (row, column), for one value of the group factors, and
    what the significance test makes of them (`marks`, `ranks`).

    A factor's key is its value, the attack's the pair (attack, budget): `mean`'s index or columns are
    the two-level index (attack, budget) where the attack is the rows or columns.
    """

    layout: TableLayout
    group: dict  # group factor -> its key in this table ((attack, budget) for the attack)
    mean: pd.DataFrame  # layout.rows x layout.columns, NaN where no record has the cell
    std: pd.DataFrame  # sample std over seeds, NaN for one seed
    seeds: pd.DataFrame  # 0 where no record has the cell
    budgets: dict = field(default_factory=dict)  # attack (grid order) -> its budgets in this table, record order

    def keys(self, factor: str) -> list:
        """The keys of `factor` in this table: its rows, its columns, or its one group value."""
        if factor == self.layout.rows:
            return list(self.mean.index)
        if factor == self.layout.columns:
            return list(self.mean.columns)
        return [self.group[factor]]

    def contenders(self) -> pd.Index:
        """The rows that marks and ranks compare: every row, the baseline rows aside where the rows are attacks."""
        rows = self.mean.index
        if self.layout.rows == "attack":
            rows = rows[~rows.get_level_values("attack").isin(BASELINE_ATTACKS)]
        return rows

    def column_stats(self, position: int) -> pd.DataFrame:
        """mean, std and n of the contenders with a value in the column at `position` (a cell without
        a record is no contender)."""
        stats = pd.DataFrame({"mean": self.mean.iloc[:, position], "std": self.std.iloc[:, position],
                              "n": self.seeds.iloc[:, position]})
        return stats[stats.index.isin(self.contenders()) & stats["mean"].notna()]

    def one_seed_columns(self) -> list:
        """The columns with a contender that cannot be tested: one of their contenders has a single seed."""
        return [column for i, column in enumerate(self.mean.columns)
                if len(stats := self.column_stats(i)) and not testable(stats)]

    def tested(self) -> bool:
        """Whether any column could be tested (`testable`)."""
        return any(testable(self.column_stats(i)) for i in range(self.mean.shape[1]))

    def marks(self) -> pd.DataFrame:
        """Per cell "best", "tied" or "" (`column_marks`); "" in every column that cannot be tested."""
        marks = pd.DataFrame("", index=self.mean.index, columns=self.mean.columns, dtype=object)
        for i in range(self.mean.shape[1]):
            stats = self.column_stats(i)
            if testable(stats):
                marks.iloc[:, i] = column_marks(stats).reindex(marks.index, fill_value="")
        return marks

    def ranks(self) -> pd.DataFrame:
        """The contenders' rank in each column (`column_ranks`; by mean alone where a column cannot be
        tested), NaN where a contender has no value."""
        contenders = self.contenders()
        ranks = pd.DataFrame(float("nan"), index=contenders, columns=self.mean.columns)
        for i in range(self.mean.shape[1]):
            stats = self.column_stats(i)
            ranks.iloc[:, i] = column_ranks(stats, testable(stats)).reindex(contenders)
        return ranks

    def mean_ranks(self) -> pd.Series:
        """Each contender's mean rank over the columns where it has one."""
        return self.ranks().mean(axis="columns")

    def seed_count(self) -> int:
        """The most common number of seeds of a cell that has a value (the larger where two are as common); 0
        for an empty table."""
        counts = pd.Series(self.seeds.to_numpy().ravel())
        counts = counts[counts > 0]
        return int(counts.mode().max()) if len(counts) else 0


# --- significance: marks and ranks ---------------------------------------------------------------
SIGNIFICANCE = 0.05  # one-sided level of every mark and rank, uncorrected for the many pairs a table compares


def testable(stats: pd.DataFrame) -> bool:
    """Whether a column's contenders (`SummaryTable.column_stats`) can be tested: there is one, and each has
    two seeds or more (a single seed has no spread). A contender alone in its column passes vacuously: there
    is no other row for it to be below."""
    return len(stats) > 0 and bool((stats["n"] >= 2).all())


def below_matrix(stats: pd.DataFrame, test: bool = True, alpha: float = SIGNIFICANCE) -> pd.DataFrame:
    """True at (i, j) where row i's mean is below row j's: significantly, by Welch's one-sided t-test at
    `alpha` from the means, sample stds and seed counts, where `test`; by the means alone where not.

    Two rows without spread (std 0 both) have an infinite or undefined t, so their means decide: different
    means are separated, identical values are not.
    """
    m, s, n = (stats[c].to_numpy(dtype=float) for c in ("mean", "std", "n"))
    lower = m[:, None] < m[None, :]
    if test:
        flat = (s[:, None] == 0) & (s[None, :] == 0)
        s_i, s_j = (np.where(flat, 1.0, side) for side in np.broadcast_arrays(s[:, None], s[None, :]))
        p = ttest_ind_from_stats(m[:, None], s_i, n[:, None], m[None, :], s_j, n[None, :], equal_var=False,
                                 alternative="less").pvalue
        lower = np.where(flat, lower, p < alpha)
    return pd.DataFrame(lower, index=stats.index, columns=stats.index)


def column_marks(stats: pd.DataFrame, alpha: float = SIGNIFICANCE) -> pd.Series:
    """"best" on the lowest mean where it is significantly below every other row (so on a row alone);
    otherwise "tied" on it and on every row not significantly above it; "" elsewhere. Rows: a testable
    column's contenders."""
    below = below_matrix(stats, True, alpha)
    lowest = stats["mean"].idxmin()
    others = [row for row in stats.index if row != lowest]
    if all(below.at[lowest, row] for row in others):
        return pd.Series(["best" if row == lowest else "" for row in stats.index], index=stats.index, dtype=object)
    tied = {lowest, *(row for row in others if not below.at[lowest, row])}
    return pd.Series(["tied" if row in tied else "" for row in stats.index], index=stats.index, dtype=object)


def column_ranks(stats: pd.DataFrame, test: bool = True, alpha: float = SIGNIFICANCE) -> pd.Series:
    """Each row's rank: 1 + the number of rows (significantly, where `test`) below it."""
    return 1 + below_matrix(stats, test, alpha).sum(axis="index").astype(float)


def summary_tables(df: pd.DataFrame, metric: str = "test_acc_last", layout: TableLayout = TableLayout(),
                   orders: dict | None = None) -> list[SummaryTable]:
    """The tables of `metric` under `layout`; `orders` maps a factor to its preferred order (grid order)."""
    orders = orders or {}
    sub = with_poison_columns(df[df.metric == metric])
    if sub.empty:
        return []
    rows, columns = key_columns(layout.rows), key_columns(layout.columns)
    group_columns = [c for g in layout.groups for c in key_columns(g)]
    tables = []
    for values, part in sub.groupby(group_columns, sort=False):
        group = {g: factor_key(dict(zip(group_columns, values)), g) for g in layout.groups}
        stats = part.groupby(rows + columns)["value"].agg(["mean", "std", "count"])
        index, header = (factor_index(part, f, orders.get(f)) for f in (layout.rows, layout.columns))
        mean, std, count = (stats[s].unstack(columns).reindex(index=index, columns=header)
                            for s in ("mean", "std", "count"))
        budgets = {a: tuple(dict.fromkeys(part.budget[part.attack == a]))
                   for a in ordered(part.attack, orders.get("attack"))}
        tables.append(SummaryTable(layout, group, mean, std, count.fillna(0).astype(int), budgets))
    group_keys = {g: list(factor_index(sub, g, orders.get(g))) for g in layout.groups}
    return sorted(tables, key=lambda t: tuple(group_keys[g].index(t.group[g]) for g in layout.groups))


def over_seeds(sub: pd.DataFrame, keys: list[str], wanted: list[str], orders: dict | None) -> pd.DataFrame:
    """Mean and `<metric>_std` over seeds (std NaN for one) of the `wanted` metrics of tidy rows `sub`, one
    row per value of `keys`; attacks, archs and defenses in `orders`' (grid) order."""
    stats = sub.groupby(keys + ["metric"])["value"].agg(["mean", "std"]).unstack("metric")
    cells = stats["mean"].reindex(columns=wanted).join(stats["std"].reindex(columns=wanted).add_suffix("_std"))
    cells = cells.rename_axis(columns=None).reset_index()
    orders = orders or {}
    return cells.sort_values(keys, ignore_index=True, key=lambda column: positions(column, orders.get(column.name))
                             if column.name in ("attack", "arch", "defense") else column)


def ratio_tables(df: pd.DataFrame, metric: str = "test_acc_last", orders: dict | None = None) -> list[SummaryTable]:
    """`metric` of each attack against the poisoned fraction (attacks x poison_ratio), a table per value
    of the other factors; none where no cell poisoned part of its set. The clean baseline poisons
    nothing, so its one cell (at FULL_POISON) stands under every ratio of the records."""
    if df.empty or not partial_poisoning(df):
        return []
    df = with_poison_columns(df)
    keys = df[list(POISON_COLUMNS)].drop_duplicates().itertuples(index=False)
    baseline = df[df.attack.isin(BASELINE_ATTACKS) & (df.poison_ratio == 1) & (df.poison_classes == "")]
    copies = [baseline.assign(poison_ratio=ratio, poison_classes=classes) for ratio, classes in keys
              if (ratio, classes) != FULL_POISON]
    return summary_tables(pd.concat([df, *copies], ignore_index=True), metric, TableLayout("attack", "poison_ratio"),
                          orders)


def ratio_curves(table: SummaryTable) -> pd.DataFrame:
    """A `ratio_tables` table as one row per (attack, ratio): attack, budget, poison_ratio, poison_classes,
    mean, std; for the figure of accuracy against ratio."""
    long = pd.DataFrame({"mean": table.mean.stack(list(POISON_COLUMNS)), "std": table.std.stack(list(POISON_COLUMNS))})
    return long.dropna(subset=["mean"]).reset_index()


# --- the MI analysis -----------------------------------------------------------------------------
def mi_setup(record: CellResult) -> str:
    """What a record's MI was measured on and how (bench.mi.SETUP_KEYS), as one comparable string;
    a key the record lacks (written before it existed) reads `None`."""
    from bench.mi import SETUP_KEYS  # here, not at the top: bench.mi loads torch and scipy

    analysis = record.analysis or {}
    return json.dumps({key: analysis.get(key) for key in SETUP_KEYS}, sort_keys=True)


def analysis_cells(df: pd.DataFrame, orders: dict | None = None, setups: dict[str, str] | None = None) -> pd.DataFrame:
    """Per (dataset, recipe, defense, attack, budget, arch and its plugin, MI setup) with MI: mean and `<metric>_std` over
    seeds of accuracy and the MI metrics (std NaN for one seed); attacks and archs in `orders`' (grid)
    order. `setups` maps a cell id to its `mi_setup` (records measured differently stay apart)."""
    wanted = ["test_acc_last", *(m for m in ANALYSIS_METRICS if m not in ROBUST_METRICS)]
    sub = with_poison_columns(df[df.metric.isin(wanted)]).copy()
    sub = sub[sub.cell_id.isin(sub[sub.metric.isin(MI_METRICS)].cell_id)]
    if sub.empty:
        return pd.DataFrame()
    setups = setups or {}
    sub["mi_setup"] = [setups.get(cell_id, "") for cell_id in sub.cell_id]
    keys = ["dataset", "recipe", "defense", "attack", "budget", *POISON_COLUMNS, "arch", "arch_plugin", "mi_setup"]
    return over_seeds(sub, keys, wanted, orders)


# --- robust accuracy ------------------------------------------------------------------------------
def robust_setup(record: CellResult) -> str:
    """What a record's robust accuracy was measured under (ROBUST_SETUP_KEYS), as one comparable string."""
    analysis = record.analysis or {}
    return json.dumps({key: analysis.get(key) for key in ROBUST_SETUP_KEYS}, sort_keys=True)


def robust_cells(df: pd.DataFrame, orders: dict | None = None, setups: dict[str, str] | None = None) -> pd.DataFrame:
    """Per (dataset, recipe, arch, attack, budget, defense, robust setup) with robust accuracy: mean and
    `<metric>_std` over seeds of clean (last epoch) and robust test accuracy, in %; in `orders`' (grid)
    order. `setups` maps a cell id to its `robust_setup`, so records measured differently stay apart."""
    wanted = ["test_acc_last", *ROBUST_METRICS]
    sub = with_poison_columns(df[df.metric.isin(wanted) & df.cell_id.isin(df[df.metric.isin(ROBUST_METRICS)].cell_id)]).copy()
    if sub.empty:
        return pd.DataFrame()
    setups = setups or {}
    sub["robust_setup"] = [setups.get(cell_id, "") for cell_id in sub.cell_id]
    keys = ["dataset", "recipe", "arch", "attack", "budget", "defense", *POISON_COLUMNS, "robust_setup"]
    return over_seeds(sub, keys, wanted, orders)


# --- efficacy against effort ----------------------------------------------------------------------
EFFORT_GROUPS = ["dataset", "arch", "recipe", "defense"]


def effort_cells(records: Iterable[CellResult], metric: str = "test_acc_last", orders: dict | None = None) -> pd.DataFrame:
    """Accuracy against generation effort, for every attack plugin that the records hold under two names
    or more (a grid's variants of it) with the effort its poison recorded (`record.poison.effort`).

    One row per (dataset, arch, recipe, defense, attack): its plugin, budget, passes per image and share
    of the official settings' (`per` says whether a round's or the poison's), the poison's generation
    seconds (mean over seeds, wherever it was made) and `metric` in % (mean, std, seeds); the clean
    baseline of each group as a row with `baseline` True. Empty where no plugin has two levels.
    """
    done = [r for r in records if r.done and metric in r.metrics]
    labels = told_apart(done)
    rows = []
    for r in done:
        effort = (r.poison or {}).get("effort")
        baseline = r.spec["attack"] in BASELINE_ATTACKS
        if effort is None and not baseline:
            continue
        effort = effort or {}
        rows.append({**{k: labels[r.cell_id][k] for k in [*EFFORT_GROUPS, "attack", "budget"]},
                     "attack_plugin": r.spec["attack"], "baseline": baseline, "seed": r.spec["seed"],
                     "passes": effort.get("gradient_evaluations"), "share": effort.get("official_share"),
                     "per": effort.get("per", ""), "generate_s": (r.timings or {}).get("poison_generate_s"),
                     "value": 100 * r.metrics[metric]})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    levels = frame[~frame.baseline].groupby("attack_plugin").attack.nunique()
    varied = set(levels[levels >= 2].index)
    frame = frame[frame.baseline | frame.attack_plugin.isin(varied)]
    if not varied:
        return pd.DataFrame()
    keys = [*EFFORT_GROUPS, "attack", "budget", "attack_plugin", "baseline", "per"]
    cells = frame.groupby(keys, dropna=False).agg(
        passes=("passes", "first"), share=("share", "first"), generate_s=("generate_s", "mean"),
        mean=("value", "mean"), std=("value", "std"), seeds=("value", "count")).reset_index()
    orders = orders or {}
    return cells.sort_values([*EFFORT_GROUPS, "attack"], ignore_index=True, key=lambda column: positions(
        column, orders.get(column.name)) if column.name in ("attack", "arch", "defense") else column)


# --- training curves -----------------------------------------------------------------------------
def histories_frame(records: list[CellResult], df: pd.DataFrame, query: str | None, orders: dict) -> tuple[pd.DataFrame, str]:
    """Test accuracy per epoch (%) of the cells `query` selects (`select_cells`: comparisons over tidy's
    columns joined by `and`), and a title.

    Default: every attack under the first defense, on the first architecture, dataset, recipe and seed.
    """
    cells = df.drop_duplicates("cell_id").drop(columns=["metric", "value", "unit"])
    if cells.empty:
        return pd.DataFrame(), ""
    if query:
        chosen = select_cells(cells, query)
    else:
        chosen = cells
        for factor in ("defense", "arch", "dataset", "recipe"):
            first = ordered(chosen[factor], orders.get(factor))[0]
            chosen = chosen[chosen[factor] == first]
        chosen = chosen[chosen.seed == chosen.seed.min()]
    if chosen.empty:
        return pd.DataFrame(), ""
    ratio = ("poison_ratio",) if partial_poisoning(chosen) else ()  # a title says nothing of a full poisoning
    factors = ("attack", "defense", "arch", "dataset", "recipe", *ratio, "seed")
    varying = [f for f in factors if chosen[f].nunique() > 1] or ["attack"]
    title = ", ".join(f"{f} {chosen[f].iloc[0]}" for f in factors if f not in varying)
    by_id = {r.cell_id: r for r in records}
    rows = []
    in_grid_order = chosen.sort_values("attack", kind="stable", key=lambda c: positions(c, orders.get("attack")))
    for cell in in_grid_order.itertuples():
        label = " / ".join(str(getattr(cell, f)) for f in varying)
        for h in by_id[cell.cell_id].history or []:
            if "test_acc" in h:
                rows.append({"label": label, "attack": cell.attack, "epoch": h["epoch"], "test_acc": 100 * h["test_acc"]})
    return pd.DataFrame(rows, columns=["label", "attack", "epoch", "test_acc"]), title


# --- choosing cells: `--curves "defense == 'none' and seed == 0"`, parsed, never evaluated ---------
QUERY_TOKEN = re.compile(r"""\s*(?:(?P<text>'[^']*'|"[^"]*")|(?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"""
                         r"|(?P<op>==|!=|<=|>=|<|>|=|\[|\]|,)|(?P<word>[A-Za-z_][A-Za-z0-9_]*))")
QUERY_OPS = {"==": operator.eq, "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
             ">": operator.gt, ">=": operator.ge}
QUERY_FORM = ("clauses `column op value` joined by `and` or commas, op one of ==, !=, <, <=, >, >=, "
              "or `column in [value, ...]`; a value is a number or text ('none', or a bare word)")


def select_cells(cells: pd.DataFrame, query: str) -> pd.DataFrame:
    """The rows of `cells` every clause of `query` holds for. The text is parsed into comparisons of
    a column with literal values: no name in it reaches Python (pandas' own query could)."""
    try:
        clauses = _parse_query(query)
    except ValueError as err:
        raise ValueError(f"--curves: cannot evaluate {query!r}: {err}; write {QUERY_FORM}") from None
    mask = pd.Series(True, index=cells.index)
    for column, op, values in clauses:
        if column not in cells.columns:
            raise ValueError(f"--curves: {column!r} is not a column; allowed: {', '.join(cells.columns)}")
        try:
            held = cells[column].isin(values) if op == "in" else QUERY_OPS[op](cells[column], values[0])
        except TypeError as err:  # `attack < 3`: an order between text and a number
            raise ValueError(f"--curves: cannot compare {column} {op} {values[0]!r} ({err})") from None
        mask &= held.fillna(False).astype(bool)
    return cells[mask]


def _parse_query(query: str) -> list[tuple[str, str, list]]:
    tokens = _query_tokens(query)
    clauses, i = [], 0
    while i < len(tokens):
        if clauses:
            if tokens[i] not in (("word", "and"), ("op", ",")):
                raise ValueError(f"expected `and` between clauses, got {tokens[i][1]!r}")
            i += 1
        if i + 1 >= len(tokens) or tokens[i][0] != "word":
            raise ValueError("a clause is a column, an operator and a value")
        column, (kind, op) = tokens[i][1], tokens[i + 1]
        if (kind, op) == ("word", "in"):
            values, i = _query_list(tokens, i + 2)
        elif kind == "op" and op in QUERY_OPS:
            if i + 2 >= len(tokens):
                raise ValueError(f"no value after {column} {op}")
            values, i = [_query_value(tokens[i + 2])], i + 3
        else:
            raise ValueError(f"{op!r} after {column} is not an operator")
        clauses.append((column, op, values))
    if not clauses:
        raise ValueError("no clause")
    return clauses


def _query_tokens(query: str) -> list[tuple[str, str]]:
    tokens, position, end = [], 0, len(query.rstrip())
    while position < end:
        match = QUERY_TOKEN.match(query, position)
        if not match:
            raise ValueError(f"unexpected {query[position:].strip()[:20]!r}")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    return tokens


def _query_list(tokens: list, i: int) -> tuple[list, int]:
    if i >= len(tokens) or tokens[i] != ("op", "["):
        raise ValueError("`in` takes a list: [value, ...]")
    values, i = [], i + 1
    while i < len(tokens) and tokens[i] != ("op", "]"):
        if tokens[i] != ("op", ","):
            values.append(_query_value(tokens[i]))
        i += 1
    if i >= len(tokens):
        raise ValueError("a list without its closing ]")
    return values, i + 1


def _query_value(token: tuple[str, str]):
    kind, text = token
    if kind == "text":
        return text[1:-1]
    if kind == "number":
        return float(text) if any(c in text for c in ".eE") else int(text)
    if kind == "word":
        return {"True": True, "False": False}.get(text, text)
    raise ValueError(f"expected a value, got {text!r}")


# --- beside the published numbers (bench.published) ----------------------------------------------
COMPARISON_COLUMNS = ["source", "dataset", "arch", "recipe", "attack", "budget", "defense", "seeds", "ours",
                      "ours_std", "source_attack", "source_defense", "published", "unverified", "comparable",
                      "delta", "beyond_tolerance", "differs"]


def value_text(value) -> str:
    """A setting as people write it: 8/255 for a float on the 1/255 grid, 'none' for None, lists joined."""
    if value is None:
        return "none"
    if isinstance(value, dict):  # a composed defense's config: one table per part
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(v) for v in value)
    if isinstance(value, float):
        levels = on_255_grid(value)
        return f"{levels}/255" if levels is not None else f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and value >= 1000:
        return f"{value:,}"
    return str(value)


def same(ours, theirs) -> bool:
    """Whether a setting of ours is the source's: numbers to 1 part in 1,000 (sources print 3-5 digits, as
    LSP's L2 1.3041), lists element-wise, anything else exactly."""
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return len(ours) == len(theirs) and all(same(a, b) for a, b in zip(ours, theirs))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (ours, theirs)):
        return math.isclose(ours, theirs, rel_tol=1e-3)
    return ours == theirs


def _arch_text(spec: dict) -> str:
    """'resnet18', or 'resnet18 (width 8)' for a victim built with other than its defaults."""
    extra = ", ".join(f"{k} {value_text(v)}" for k, v in sorted(spec.get("arch_config", {}).items()))
    return spec["arch"] + (f" ({extra})" if extra else "")


MULTISTEP_KEYS = ("milestones", "gamma")  # read by the multistep schedule only
# How a record's spec states each of bench.published.RECIPE_KEYS that is not a bench.train.Recipe field.
_SPEC_VALUES: dict[str, Callable[[dict], object]] = {
    "dataset": lambda spec: spec["data"]["name"],
    "train_size": lambda spec: spec["data"].get("train_size") or "all",
    "test_size": lambda spec: spec["data"].get("test_size") or "all",
    "arch": _arch_text,
    "optimizer": lambda spec: spec["recipe"].get("optimizer", "sgd"),  # bench.train trains with SGD only
}


def recipe_differences(spec: dict, source: PublishedSource, metric: str) -> list[str]:
    """How a cell's data, victim and training differ from what `source` states, one phrase each."""
    unstated = [k.replace("_", " ") for k in CORE_RECIPE_KEYS if k not in source.recipe]
    reasons = [f"the source states no {', '.join(unstated)}"] if unstated else []
    for key, theirs in source.recipe.items():
        if key in MULTISTEP_KEYS and not spec["recipe"].get("schedule") == source.recipe.get("schedule") == "multistep":
            continue  # unread by any other schedule; a schedule that differs is said once, as itself
        ours = _SPEC_VALUES[key](spec) if key in _SPEC_VALUES else spec["recipe"].get(key)
        if not same(ours, theirs):
            reasons.append(f"{key.replace('_', ' ')} {value_text(ours)} vs {value_text(theirs)}")
    if source.metric and source.metric != metric:
        reasons.append(f"metric {metric} vs {source.metric}")
    return reasons


def _config_differences(name: str, config: dict, wanted: dict) -> list[str]:
    # A key the config lacks is an added_field at its default (bench.config), which the table layer
    # cannot look up: it says so rather than guess the value.
    return [f"{name} {key} {value_text(config[key]) if key in config else 'default'} vs {value_text(value)}"
            for key, value in wanted.items() if not same(config.get(key), value)]


def attack_differences(spec: dict, poison: dict, row: PublishedAttack) -> list[str]:
    """How a cell's poison differs from the source row's: its budget, the config the row names, `differs`."""
    reasons = []
    norm, eps = poison.get("norm", "linf"), poison.get("budget", 0.0)
    ours = budget_label(norm, eps) or "none"
    if row.budget is None:
        reasons.append(f"the source states no budget for {row.label}")
    elif row.budget.norm == "none":
        if eps:
            reasons.append(f"budget {ours} vs none")
    elif row.budget.norm != norm or row.budget.eps is None or not same(eps, row.budget.eps):
        reasons.append(f"budget {ours} vs {row.budget.text}")
    ratio, classes = spec.get("poison_ratio", 1.0), spec.get("poison_classes", [])
    if is_partial(ratio, classes):  # sources poison the whole set
        share = poisoned_label(ratio, classes_text(classes))
        reasons.append(f"poisoned {share} vs 100%")
    reasons += _config_differences(spec["attack"], spec.get("attack_config", {}), row.config)
    return reasons + ([row.differs] if row.differs else [])


def defense_differences(spec: dict, column: PublishedDefense) -> list[str]:
    """How a cell's defense differs from the source column's: the config the column names, `differs`."""
    reasons = _config_differences(spec["defense"], spec.get("defense_config", {}), column.config)
    return reasons + ([column.differs] if column.differs else [])


def _seed_groups(records: Iterable[CellResult]) -> list[list[CellResult]]:
    """Finished records grouped by their whole spec but the seed (and the analysis, which changes no
    accuracy), in record order: each group is one cell of the tables, its seeds."""
    groups: dict[str, list[CellResult]] = {}
    for r in records:
        if r.done:
            spec = {k: v for k, v in r.spec.items() if k not in ("seed", "analysis", "robust", "autoattack")}
            groups.setdefault(json.dumps(spec, sort_keys=True, default=str), []).append(r)
    return list(groups.values())


def compare_published(records: Iterable[CellResult], sources: Iterable[PublishedSource], metric: str = "test_acc_last",
                      tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """Our cells (mean over seeds of `metric`, in %) beside each source's number for the same attack and
    defense (the mapping is the source file's), one row per pair.

    A pair is comparable when nothing differs: every recipe setting the source states (and it states
    bench.published.CORE_RECIPE_KEYS), the budget, the configs its row and column name, and neither has a
    `differs`. Only then is `delta` (ours - published, points) given, and `beyond_tolerance` set when
    |delta| > `tolerance`; otherwise `differs` says what differs, joined by '; '.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"--tolerance: must be a number of points >= 0, got {tolerance!r}")
    groups = _seed_groups(records)
    labels = told_apart([r for group in groups for r in group])
    rows = []
    for source in sources:
        for row in source.attacks:
            for column in source.defenses:
                if column.label not in row.acc:
                    continue
                for group in groups:
                    first = group[0]
                    spec = first.spec
                    if spec["attack"] not in row.ours or spec["defense"] not in column.ours:
                        continue
                    if any(metric not in r.metrics for r in group):
                        continue  # an optional metric (test_acc_early_stop) this cell did not record
                    values = pd.Series([100 * r.metrics[metric] for r in group])
                    reasons = (recipe_differences(spec, source, metric) + attack_differences(spec, first.poison or {}, row)
                               + defense_differences(spec, column))
                    published = row.acc[column.label]
                    delta = values.mean() - published if not reasons else math.nan
                    rows.append({"source": source.id, **labels[first.cell_id], "seeds": len(group), "ours": values.mean(),
                                 "ours_std": values.std(), "source_attack": row.label, "source_defense": column.label,
                                 "published": published, "unverified": source.unverified or row.unverified,
                                 "comparable": not reasons, "delta": delta,
                                 "beyond_tolerance": bool(not reasons and abs(delta) > tolerance),
                                 "differs": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def unpublished(records: Iterable[CellResult], sources: Iterable[PublishedSource]) -> dict[str, list[str]]:
    """Our attacks and defenses (in record order) that no source's table maps to a row or a column."""
    sources = list(sources)
    done = [r for r in records if r.done]
    mapped = {"attack": {n for s in sources for row in s.attacks for n in row.ours},
              "defense": {n for s in sources for column in s.defenses for n in column.ours}}
    return {kind: [n for n in dict.fromkeys(r.spec[kind] for r in done) if n not in mapped[kind]]
            for kind in ("attack", "defense")}

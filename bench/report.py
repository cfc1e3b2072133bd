"""What goes into a paper, from stored records alone: tables, the MI analysis and figures.

- A tidy CSV: one row per finished cell and metric (accuracies in %, MI in nats).
- Tables (Markdown and booktabs LaTeX through pandas' Styler): attacks as rows and defenses as
  columns by default (`TableLayout` names any other pivot), one table per value of the remaining
  factors (dataset x architecture x recipe). A cell is the mean over seeds, +- std where there are
  several; the lowest accuracy of each column (the strongest attack) is bold, the clean baseline
  aside. The caption states the recipe, the budgets and the number of seeds; row and column labels
  `\\cite{}` each plugin's paper and `<name>.bib` holds the entries.
- Where records carry the MI analysis (`bench.mi`), a table of the MI-UE chain per attack and
  architecture, and the estimators' error on correlated Gaussians at the same settings.
- Figures (`bench.figures`): accuracy heatmap, training curves, a gallery of poisons (from the
  store's poison cache and the dataset), and MI against depth.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import pandas as pd

from bench.citations import bibliography, citation
from bench.config import comma_choices
from bench.records import CellResult

log = logging.getLogger("bench")

FORMATS = ("latex", "csv", "md", "fig")
METRICS = ("test_acc_last", "test_acc_best", "train_acc")
METRIC_WORDS = {"test_acc_last": "clean test accuracy (%, last epoch)", "test_acc_best": "clean test accuracy (%, best epoch)",
                "train_acc": "training accuracy (%, last epoch)"}
ANALYSIS_METRICS = {  # key in CellResult.analysis -> unit
    "mi_cca": "nats", "mi_gaussian": "nats", "mi_ksg": "nats", "cond_cov_ratio": "", "cond_cov_trace": "",
    "intra_class_cosine": "",
}
MI_METRICS = tuple(m for m in ANALYSIS_METRICS if m.startswith("mi_"))  # bench.mi's estimates, the default first
FACTORS = ("dataset", "arch", "recipe", "attack", "defense")
BASELINE_ATTACKS = ("clean",)  # the reference row: shown, never bold
MISSING = "–"
GALLERY_IMAGES = 4  # images per attack in the gallery: the first image of each of the first classes


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    """'latex,csv' -> ('latex', 'csv'); an unknown name is an error that lists the allowed ones."""
    return comma_choices(text, FORMATS, "--format", "format")


def budget_label(norm: str, budget: float) -> str:
    """'Linf 8/255' for L-inf budgets on the 1/255 grid, 'L2 1.30' for L2, 'L0 1 px' for L0."""
    if budget == 0:
        return ""
    if norm == "l0":
        return f"L0 {budget:g} px"
    if norm == "linf":
        frac = Fraction(budget).limit_denominator(255)
        if frac.denominator == 255 and math.isclose(float(frac), budget, rel_tol=1e-6):
            return f"Linf {frac.numerator}/255"
    return f"{'Linf' if norm == 'linf' else 'L2'} {budget:.2f}"


def recipe_label(spec: dict) -> str:
    return f"{spec['recipe_name']}, {spec['recipe']['epochs']} ep"


def recipe_description(spec: dict) -> str:
    """The recipe in words, for captions: 'cpu_smoke*: 8 epochs of SGD (lr 0.05, ...)'."""
    r = spec["recipe"]
    schedule = r["schedule"] + (f" x{r['gamma']:g} at {', '.join(f'{m:g}' for m in r['milestones'])} of training"
                                if r["schedule"] == "multistep" else "")
    clip = f", gradient clipping {r['grad_clip']:g}" if r.get("grad_clip") else ""
    return (f"{spec['recipe_name']}: {r['epochs']} epochs of SGD (lr {r['lr']:g}, momentum {r['momentum']:g}, "
            f"weight decay {r['weight_decay']:g}, batch {r['batch_size']}, {schedule} schedule{clip})")


def tidy(records: Iterable[CellResult]) -> pd.DataFrame:
    """One row per finished cell and metric: accuracies in %, the MI analysis in its own units."""
    rows = []
    for r in records:
        if not r.done:
            continue
        spec, poison = r.spec, r.poison or {}
        train_size = spec["data"].get("train_size")
        base = {
            "cell_id": r.cell_id, "grid": r.grid,
            "dataset": spec["data"]["name"] + (f" ({train_size})" if train_size else ""),
            "arch": spec["arch"], "recipe": recipe_label(spec),
            "attack": spec["attack"], "budget": budget_label(poison.get("norm", "linf"), poison.get("budget", 0.0)),
            "defense": spec["defense"], "seed": spec["seed"],
        }
        for metric in METRICS:
            rows.append({**base, "metric": metric, "value": 100 * r.metrics[metric], "unit": "%"})
        for metric, value in (r.analysis or {}).items():
            if metric in ANALYSIS_METRICS:
                rows.append({**base, "metric": metric, "value": value, "unit": ANALYSIS_METRICS[metric]})
    columns = ["cell_id", "grid", "dataset", "arch", "recipe", "attack", "budget", "defense", "seed", "metric", "value", "unit"]
    return pd.DataFrame(rows, columns=columns)


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


def mean_std(mean, std, digits: int = 2):
    """Per element of two Series or DataFrames: 'mean ± std' where std is known (several seeds), 'mean'
    where it is NaN (one seed), MISSING where there is no mean."""
    number = f"{{:.{digits}f}}".format
    text = mean.map(number).where(std.isna(), mean.map(number) + " ± " + std.map(number))
    return text.where(mean.notna(), MISSING)


def attack_label(attack: str, budget: str) -> str:
    return f"{attack} ({budget})" if budget else attack


@dataclass(frozen=True)
class SummaryTable:
    """One table: mean, std and number of seeds per (row, column), for one value of the group factors."""

    layout: TableLayout
    group: dict  # group factor -> value (an attack's value is its label, with the budget)
    mean: pd.DataFrame  # layout.rows x layout.columns, NaN where no record has the cell
    std: pd.DataFrame  # sample std over seeds, NaN for one seed
    seeds: pd.DataFrame  # 0 where no record has the cell
    budgets: dict = field(default_factory=dict)  # attack plugin name -> its budget labels in this table, grid order

    @property
    def attack_names(self) -> dict[str, str]:
        """Attack label ('em (Linf 8/255)') -> plugin name ('em')."""
        return {attack_label(a, b): a for a, budgets in self.budgets.items() for b in budgets}

    def plugin(self, factor: str, label: str) -> str:
        """The plugin (or recipe, dataset) name behind a row, column or group label of `factor`."""
        return self.attack_names.get(label, label) if factor == "attack" else label

    def labels(self, factor: str) -> list[str]:
        """The labels of `factor` in this table: its rows, its columns, or its one group value."""
        if factor == self.layout.rows:
            return list(self.mean.index)
        if factor == self.layout.columns:
            return list(self.mean.columns)
        return [self.group[factor]]

    def text(self, bold: str = "{}") -> pd.DataFrame:
        """'mean' or 'mean ± std' per cell, the best of each column wrapped in `bold`."""
        text = mean_std(self.mean, self.std)
        return text.where(~self.best(), text.map(bold.format))

    def best(self) -> pd.DataFrame:
        """True where a cell has the lowest mean of its column (at the two decimals shown), baseline rows aside."""
        contenders = self.mean
        if self.layout.rows == "attack":
            contenders = self.mean[[self.plugin("attack", r) not in BASELINE_ATTACKS for r in self.mean.index]]
        bold = self.mean.round(2).eq(contenders.min().round(2), axis="columns")
        bold.loc[~bold.index.isin(contenders.index)] = False
        return bold

    def seed_counts(self) -> tuple[int, int]:
        """Fewest and most seeds of a cell that has a value."""
        counts = self.seeds.to_numpy()
        counts = counts[counts > 0]
        return int(counts.min()), int(counts.max())


def _rank(order, value: str) -> int:
    order = list(order or [])
    return order.index(value) if value in order else len(order)


def _ordered(labels: Iterable[str], order: Iterable[str] | None, name=lambda label: label) -> list[str]:
    """The distinct `labels` in `order` (grid order) of their plugin `name`, then alphabetically."""
    return sorted(dict.fromkeys(labels), key=lambda label: (_rank(order, name(label)), label))


def _positions(column: pd.Series, order: Iterable[str] | None) -> pd.Series:
    """Each value's position in `_ordered(column, order)`: a `sort_values` key for grid order."""
    return column.map({value: i for i, value in enumerate(_ordered(column, order))})


def summary_tables(df: pd.DataFrame, metric: str = "test_acc_last", layout: TableLayout = TableLayout(),
                   orders: dict | None = None) -> list[SummaryTable]:
    """The tables of `metric` under `layout`; `orders` maps a factor to its preferred order (grid order)."""
    orders = orders or {}
    sub = df[df.metric == metric].copy()
    if sub.empty:
        return []
    sub["attack_name"] = sub["attack"]
    sub["attack"] = [attack_label(a, b) for a, b in zip(sub.attack, sub.budget)]
    attack_names = dict(zip(sub.attack, sub.attack_name))

    def ordered(factor: str, labels: Iterable[str]) -> list[str]:
        return _ordered(labels, orders.get(factor), attack_names.get if factor == "attack" else lambda label: label)

    tables = []
    groups = list(layout.groups)
    for key, part in sub.groupby(groups, sort=False):
        stats = part.groupby([layout.rows, layout.columns])["value"].agg(["mean", "std", "count"])
        rows, columns = ordered(layout.rows, part[layout.rows]), ordered(layout.columns, part[layout.columns])
        mean, std, count = (stats[s].unstack().reindex(index=rows, columns=columns)
                            .rename_axis(index=layout.rows, columns=layout.columns) for s in ("mean", "std", "count"))
        budgets = {a: tuple(dict.fromkeys(part.budget[part.attack_name == a]))
                   for a in _ordered(part.attack_name, orders.get("attack"))}
        tables.append(SummaryTable(layout, dict(zip(groups, key)), mean, std, count.fillna(0).astype(int), budgets))
    group_order = {g: ordered(g, sub[g]) for g in groups}
    return sorted(tables, key=lambda t: tuple(group_order[g].index(t.group[g]) for g in groups))


# --- captions and rendering ---------------------------------------------------------------------
def caption(table: SummaryTable, metric: str, recipes: dict[str, str]) -> str:
    """Plain-text caption: what, on what, the recipe, the budgets, the seeds, what bold means.

    `recipes` maps a recipe label (tidy's `recipe` column) to its description in words.
    """
    group = ", ".join(f"{k} {v}" for k, v in table.group.items() if k != "recipe")
    lo, hi = table.seed_counts()
    seeds = "one seed" if hi == 1 else f"mean ± std over {lo} seeds" if lo == hi else f"mean ± std over {lo}-{hi} seeds"
    recipe_text = "; ".join(recipes[r] for r in table.labels("recipe") if r in recipes)
    budget_text = ", ".join(f"{a} {' and '.join(b for b in budgets if b)}" for a, budgets in table.budgets.items()
                            if any(budgets))
    has_baseline_row = table.layout.rows == "attack" and bool(set(table.budgets) & set(BASELINE_ATTACKS))
    aside = " (clean baseline aside)" if has_baseline_row else ""
    parts = [METRIC_WORDS[metric].capitalize() + (f", {group}" if group else ""),
             f"recipe {recipe_text}" if recipe_text else "", f"budgets: {budget_text}" if budget_text else "",
             seeds, f"lowest per column in bold{aside}"]
    return "; ".join(p for p in parts if p) + "."


def to_markdown(frame: pd.DataFrame, corner: str = "") -> str:
    header = [corner] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(frame.columns)) + "|"]
    lines += ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in zip(frame.index, frame.astype(object).to_numpy())]
    return "\n".join(lines)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_NORMS = {"Linf": r"$\ell_\infty$", "L2": r"$\ell_2$", "L0": r"$\ell_0$"}


def latex_text(text: str) -> str:
    """Plain text as LaTeX: specials escaped, ± and budgets as math, the en dash as --."""
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], str(text))
    out = re.sub(r"\b(Linf|L2|L0) ", lambda m: _NORMS[m.group(1)] + " ", out)
    return out.replace("±", r"$\pm$").replace(MISSING, "--")


def _cite(keys: tuple[str, ...]) -> str:
    return f"~\\cite{{{','.join(keys)}}}" if keys else ""


def to_latex(table: SummaryTable, caption_text: str, label: str, citations: dict) -> str:
    """booktabs LaTeX; `citations` maps (factor, plugin name) -> Citation, cited after each row and column label."""
    def cited(factor: str, text: str) -> str:
        found = citations.get((factor, table.plugin(factor, text)))
        return latex_text(text) + _cite(found.keys if found else ())

    body = table.text().map(latex_text)
    body = body.where(~table.best(), r"\textbf{" + body + "}")
    body.index = [cited(table.layout.rows, r) for r in body.index]
    body.columns = [cited(table.layout.columns, c) for c in body.columns]
    return _booktabs(body, caption_text, label)


def frame_to_latex(frame: pd.DataFrame, caption_text: str, label: str) -> str:
    """A plain table (no bold, no citations) in the same booktabs style."""
    body = frame.astype(str).map(latex_text)
    body.index = [latex_text(i) for i in body.index]
    body.columns = [latex_text(c) for c in body.columns]
    return _booktabs(body, caption_text, label)


def _booktabs(body: pd.DataFrame, caption_text: str, label: str) -> str:
    """Every table's LaTeX (`body` already LaTeX): booktabs rules, caption and label, floated at the top,
    labels left, numbers right."""
    return body.style.to_latex(hrules=True, caption=latex_text(caption_text), label=label, position="t",
                               position_float="centering", column_format="l" + "r" * len(body.columns))


# --- the MI analysis -----------------------------------------------------------------------------
def mi_setup(record: CellResult) -> str:
    """What a record's MI was measured on and how (bench.mi.SETUP_KEYS), as one comparable string;
    a key the record lacks (written before it existed) reads `None`."""
    from bench.mi import SETUP_KEYS

    analysis = record.analysis or {}
    return json.dumps({key: analysis.get(key) for key in SETUP_KEYS}, sort_keys=True)


def setup_differences(setups: Iterable[str]) -> str:
    """'n_images 200.0 / 400.0, layer None / features': the fields where MI setups disagree."""
    parsed = [json.loads(s) for s in dict.fromkeys(setups)]
    differing = [k for k in parsed[0] if len({json.dumps(p.get(k)) for p in parsed}) > 1]
    return ", ".join(f"{k} {' / '.join(str(p.get(k)) for p in parsed)}" for k in differing)


def analysis_cells(df: pd.DataFrame, orders: dict | None = None, setups: dict[str, str] | None = None) -> pd.DataFrame:
    """Per (dataset, recipe, defense, attack, budget, arch, MI setup) with MI: mean and `<metric>_std` over
    seeds of accuracy and the MI metrics (std NaN for one seed); attacks and archs in `orders`' (grid)
    order. `setups` maps a cell id to its `mi_setup` (records measured differently stay apart)."""
    wanted = ["test_acc_last", *ANALYSIS_METRICS]
    sub = df[df.metric.isin(wanted)].copy()
    sub = sub[sub.cell_id.isin(sub[sub.metric.isin(MI_METRICS)].cell_id)]
    if sub.empty:
        return pd.DataFrame()
    setups = setups or {}
    sub["mi_setup"] = [setups.get(cell_id, "") for cell_id in sub.cell_id]
    keys = ["dataset", "recipe", "defense", "attack", "budget", "arch", "mi_setup"]
    stats = sub.groupby(keys + ["metric"])["value"].agg(["mean", "std"]).unstack("metric")
    cells = stats["mean"].reindex(columns=wanted).join(stats["std"].reindex(columns=wanted).add_suffix("_std"))
    cells = cells.rename_axis(columns=None).reset_index()
    orders = orders or {}
    return cells.sort_values(keys, ignore_index=True, key=lambda column: _positions(column, orders.get(column.name))
                             if column.name in ("attack", "arch", "defense") else column)


def analysis_table(cells: pd.DataFrame) -> pd.DataFrame:
    """The MI-UE chain per (attack, arch): accuracy, the MI estimates, covariance and cosine, as text."""
    columns = {"test_acc_last": ("test acc. (%)", 2), "mi_cca": ("MI CCA (nats)", 3),
               "mi_gaussian": ("MI Gaussian (nats)", 3), "mi_ksg": ("MI KSG (nats)", 3),
               "cond_cov_ratio": ("cond. cov. ratio", 3), "intra_class_cosine": ("intra-class cosine", 3)}
    columns = {metric: spec for metric, spec in columns.items() if cells[metric].notna().any()}
    # Rows name the attack and arch, and each other factor that varies (the smoke grid's defenses).
    varying = [f for f in ("defense", "dataset", "recipe") if cells[f].nunique() > 1]
    labels = [" / ".join([attack_label(row.attack, row.budget), row.arch, *(str(getattr(row, f)) for f in varying)])
              for row in cells.itertuples()]
    if "mi_setup" in cells and cells.mi_setup.nunique() > 1:  # records measured differently: say which is which
        numbers = {setup: i + 1 for i, setup in enumerate(dict.fromkeys(cells.mi_setup))}
        labels = [f"{label} / setup {numbers[setup]}" for label, setup in zip(labels, cells.mi_setup)]
    index = pd.Index(labels, name=" / ".join(["attack", "arch", *varying]))
    return pd.DataFrame({title: mean_std(cells[metric], cells[f"{metric}_std"], digits).to_numpy()
                         for metric, (title, digits) in columns.items()}, index=index)


def estimator_calibration(records: list[CellResult]) -> pd.DataFrame:
    """bench.mi's estimators on correlated Gaussians at the settings (of the first record with MI) and the
    smallest sample size the records used."""
    from bench.mi import MISettings, calibration

    analyses = [r.analysis for r in records if r.done and r.analysis]
    if not analyses:
        return pd.DataFrame()
    settings = MISettings(**{f.name: int(analyses[0][f.name]) for f in fields(MISettings) if f.name in analyses[0]})
    n = int(min(a["n_images"] for a in analyses))
    return calibration(settings.estimators(), n=n, dims=sorted({1, settings.ksg_dims, settings.gaussian_dims}))


def calibration_summary(table: pd.DataFrame) -> str:
    def worst(part: pd.DataFrame) -> str:
        return (f"largest |error| {abs(part.error).max():.3f} nats "
                f"({100 * (abs(part.error) / part['true']).max():.0f}% of the true MI)")

    isotropic = table[table.case == "isotropic"]
    errors = ", ".join(f"{name}: {worst(part)}" for name, part in isotropic.groupby("estimator", sort=False))
    text = f"Estimator error on correlated Gaussians with known MI ({errors})."
    hidden = table[table.case != "isotropic"]
    if not hidden.empty:
        truth = hidden["true"].iloc[0]
        found = ", ".join(f"{row.estimator} {row.estimate:.2f}" for row in hidden.itertuples())
        text += f" With {hidden.case.iloc[0]} (true MI {truth:.2f} nats): {found}."
    return text


# --- figures -------------------------------------------------------------------------------------
def group_title(group: dict) -> str:
    return ", ".join(str(v) for v in group.values())


def histories_frame(records: list[CellResult], df: pd.DataFrame, query: str | None, orders: dict) -> tuple[pd.DataFrame, str]:
    """Test accuracy per epoch (%) of the cells `query` selects (a pandas query over tidy's columns), and a title.

    Default: every attack under the first defense, on the first architecture, dataset, recipe and seed.
    """
    cells = df.drop_duplicates("cell_id").drop(columns=["metric", "value", "unit"])
    if cells.empty:
        return pd.DataFrame(), ""
    if query:
        try:
            chosen = cells.query(query)
        except Exception as err:  # pandas raises many kinds for a bad expression
            raise ValueError(f"--curves: cannot evaluate {query!r} over the columns "
                             f"{', '.join(cells.columns)} ({type(err).__name__}: {err})") from None
    else:
        chosen = cells
        for factor in ("defense", "arch", "dataset", "recipe"):
            first = _ordered(chosen[factor], orders.get(factor))[0]
            chosen = chosen[chosen[factor] == first]
        chosen = chosen[chosen.seed == chosen.seed.min()]
    if chosen.empty:
        return pd.DataFrame(), ""
    factors = ("attack", "defense", "arch", "dataset", "recipe", "seed")
    varying = [f for f in factors if chosen[f].nunique() > 1] or ["attack"]
    title = ", ".join(f"{f} {chosen[f].iloc[0]}" for f in factors if f not in varying)
    by_id = {r.cell_id: r for r in records}
    rows = []
    in_grid_order = chosen.sort_values("attack", kind="stable", key=lambda c: _positions(c, orders.get("attack")))
    for cell in in_grid_order.itertuples():
        label = " / ".join(str(getattr(cell, f)) for f in varying)
        for h in by_id[cell.cell_id].history or []:
            if "test_acc" in h:
                rows.append({"label": label, "attack": cell.attack, "epoch": h["epoch"], "test_acc": 100 * h["test_acc"]})
    return pd.DataFrame(rows, columns=["label", "attack", "epoch", "test_acc"]), title


def gallery_images(records: list[CellResult], store, attack_order) -> tuple[object, dict, list[str]]:
    """(clean images, attack -> poisoned images, notes) for the gallery, or notes saying why not.

    Poisons come from the store's cache (`record.poison["key"]`), clean images from the dataset
    named in the record's spec (offline where BENCH_CIFAR10 or an .npz path is given).
    """
    import numpy as np

    from bench.config import ConfigError
    from bench.data import DataSpec, DataUnavailable, load_dataset

    if store is None:
        return None, {}, ["gallery: skipped, no results store given"]
    first_of: dict[str, CellResult] = {}  # attack -> its first finished record with a cached, non-zero poison
    for r in records:
        poison = r.poison or {}
        if r.done and poison.get("budget", 0) > 0 and poison.get("key"):
            first_of.setdefault(r.attack, r)
    if not first_of:
        return None, {}, ["gallery: skipped, no record of a perturbing attack with a cached poison key"]
    data_spec = next(iter(first_of.values())).spec["data"]
    try:
        train = load_dataset(DataSpec(**data_spec)).train
    except (DataUnavailable, ConfigError, OSError) as err:
        return None, {}, [f"gallery: skipped, the clean images of {data_spec['name']} are not available ({err})"]
    labels = train.labels.numpy()
    index = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)[:GALLERY_IMAGES]]

    def to_hwc(images) -> np.ndarray:  # the gallery's images of an (N, C, H, W) set, as matplotlib wants them
        return np.ascontiguousarray(np.asarray(images)[index].transpose(0, 2, 3, 1))

    clean, poisoned, notes = to_hwc(train.images.numpy()), {}, []
    for attack in _ordered(first_of, attack_order):
        record = first_of[attack]
        if record.spec["data"] != data_spec:
            notes.append(f"gallery: {attack} left out, its records use other data than {data_spec['name']}")
            continue
        cached = store.load_poison(record.poison["key"])
        if cached is None:
            notes.append(f"gallery: {attack} left out, its poison {record.poison['key']} is not in the cache "
                         f"({store.poisons_dir})")
            continue
        if cached[0].shape != tuple(train.images.shape):
            notes.append(f"gallery: {attack} left out, its poison has shape {cached[0].shape}, the data {tuple(train.images.shape)}")
            continue
        poisoned[attack] = to_hwc(cached[0])
    return clean, poisoned, notes


MI_CAPTION = ("Mutual information I(Z_clean; Z_poisoned) between the trained model's penultimate features of the "
              "clean and the poisoned version of the same training images (bench.mi; nats), the mean per-class "
              "conditional covariance of poisoned features over their total covariance, and their mean intra-class "
              "cosine similarity; mean ± std over seeds.")


def table_sections(df: pd.DataFrame, metric: str, layout: TableLayout, orders: dict, recipes: dict[str, str],
                   citations: dict, name: str) -> tuple[list[str], list[str]]:
    """Markdown lines and LaTeX tables of `metric`, one table per value of the group factors."""
    md, tex = [], []
    for i, table in enumerate(summary_tables(df, metric, layout, orders)):
        text = caption(table, metric, recipes)
        md += [f"### {group_title(table.group)}", "", text, "", to_markdown(table.text("**{}**"), layout.rows), ""]
        tex.append(to_latex(table, text, f"tab:{name}-{i + 1}", citations))
    return md or ["No finished cells yet.\n"], tex


def mi_section(cells: pd.DataFrame, done: list[dict], name: str) -> tuple[list[str], list[str], pd.DataFrame]:
    """Markdown lines and the LaTeX table of the MI analysis (`analysis_cells`), and the estimators' calibration."""
    if cells.empty:
        return [], [], pd.DataFrame()
    calibration = estimator_calibration(done)
    table = analysis_table(cells)
    md = ["### Mutual information (MI-UE analysis)", "", MI_CAPTION, "", to_markdown(table, table.index.name), "",
          calibration_summary(calibration), "",
          to_markdown(calibration.round(3).set_index("estimator"), "estimator"), ""]
    return md, [frame_to_latex(table, MI_CAPTION, f"tab:{name}-mi")], calibration


@dataclass(frozen=True)
class Report:
    paths: dict  # kind -> Path of every file written
    markdown: str
    notes: tuple[str, ...]  # what was skipped and why


def write_report(records: Iterable[CellResult], out_dir: Path, name: str, attack_order=None, defense_order=None,
                 metric: str = "test_acc_last", *, formats: Iterable[str] = FORMATS, layout: TableLayout = TableLayout(),
                 arch_order=None, store=None, curves: str | None = None) -> Report:
    """Write the report of `records` into `out_dir` as <name>.csv/.md/.tex/.bib and <name>_figures/.

    `formats` is any subset of FORMATS; `store` (a bench.store.Store) lets the gallery read poisons;
    `curves` is a pandas query choosing the cells whose training curves are drawn.
    """
    formats = parse_formats(formats)
    if metric not in METRICS:
        raise ValueError(f"--metric: {metric!r} is not a metric; allowed: {', '.join(METRICS)}")
    records = list(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = tidy(records)
    orders = {"attack": list(attack_order or []), "defense": list(defense_order or []), "arch": list(arch_order or [])}
    done = [r for r in records if r.done]
    recipes = {recipe_label(r.spec): recipe_description(r.spec) for r in done}
    citations = {("attack", a): citation("attack", a) for a in df.attack.unique()}
    citations.update({("defense", d): citation("defense", d) for d in df.defense.unique()})

    md, tex = table_sections(df, metric, layout, orders, recipes, citations, name)
    cells = analysis_cells(df, orders, {r.cell_id: mi_setup(r) for r in done if r.analysis})
    mi_md, mi_tex, calibration = mi_section(cells, done, name)
    md += mi_md
    tex = [f"% needs \\usepackage{{booktabs}}; cite keys resolve with {name}.bib", *tex, *mi_tex]

    paths: dict[str, Path] = {}
    notes: list[str] = []
    if "fig" in formats:
        fig_paths, fig_notes = write_figures(records, df, out_dir / f"{name}_figures", orders, store, curves, cells)
        paths.update(fig_paths)
        notes += fig_notes
        md += [f"![{path.stem}]({path.relative_to(out_dir).as_posix()})" for path in fig_paths.values()
               if path.suffix == ".png"]
    md += [f"- {note}" for note in notes]
    markdown = "\n".join(md).rstrip() + "\n"

    if "csv" in formats:
        paths["csv"] = out_dir / f"{name}.csv"
        df.to_csv(paths["csv"], index=False)
        if not calibration.empty:
            paths["mi_calibration"] = out_dir / f"{name}_mi_calibration.csv"
            calibration.to_csv(paths["mi_calibration"], index=False)
    if "md" in formats:
        paths["md"] = out_dir / f"{name}.md"
        paths["md"].write_text(markdown)
    if "latex" in formats:
        paths["tex"], paths["bib"] = out_dir / f"{name}.tex", out_dir / f"{name}.bib"
        paths["tex"].write_text("\n".join(tex))
        paths["bib"].write_text(bibliography(citations.values()))
    for note in notes:
        log.warning(note)
    return Report(paths, markdown, tuple(notes))


def write_figures(records: list[CellResult], df: pd.DataFrame, folder: Path, orders: dict, store, curves: str | None,
                  cells: pd.DataFrame) -> tuple[dict[str, Path], list[str]]:
    """Every figure the records allow, as PDF and PNG under `folder`; notes for those left out."""
    from bench import figures

    paths: dict[str, Path] = {}
    notes: list[str] = []
    style = figures.AttackStyle(tuple(_ordered(df.attack, orders.get("attack"))))

    def emit(kind: str, fig) -> None:
        for path in figures.save(fig, folder / kind):
            paths[f"{kind}{path.suffix}"] = path

    heat = {group_title(t.group): t.mean for t in summary_tables(df, "test_acc_last", TableLayout(), orders)}
    if heat:
        emit("heatmap", figures.accuracy_heatmap(heat))
    histories, title = histories_frame(records, df, curves, orders)
    if not histories.empty:
        emit("curves", figures.training_curves(histories, style, title))
    elif curves:
        notes.append(f"curves: no cell with a training history matches {curves!r}")
    clean, poisoned, gallery_notes = gallery_images(records, store, orders.get("attack"))
    notes += gallery_notes
    if poisoned:
        emit("gallery", figures.gallery(clean, poisoned))
    if not cells.empty:
        parts = list(cells.groupby(["dataset", "recipe", "defense"], sort=False))
        for key, part in parts:
            suffix = "" if len(parts) == 1 else "_" + re.sub(r"[^A-Za-z0-9]+", "-", "-".join(key)).strip("-")
            if part.mi_setup.nunique() > 1:
                notes.append(f"MI figures for {', '.join(key)}: not drawn, the records measured MI differently "
                             f"({setup_differences(part.mi_setup)}); run them again with one setting")
                continue
            title = ", ".join([*key[:2], f"defense {key[2]}"])
            if part.arch.nunique() > 1:
                emit(f"mi_depth{suffix}", figures.mi_against_depth(part, style, title))
            emit(f"mi_attacks{suffix}", figures.mi_by_attack(part, style, title))
            emit(f"mi_chain{suffix}", figures.mi_chain(part, style))
    return paths, notes

"""Tables from stored records alone: tidy CSV, Markdown and booktabs LaTeX.

Attacks are rows and defenses columns, one table per dataset x architecture x recipe; a cell
shows clean test accuracy (%) as the mean over seeds, with +- std where there are several.
"""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import pandas as pd

METRICS = ("test_acc_last", "test_acc_best", "train_acc")
GROUP = ("dataset", "arch", "recipe")


def budget_label(norm: str, budget: float) -> str:
    """'8/255' for L-inf budgets on the 1/255 grid, '1.30' for L2, '1 px' for L0."""
    if budget == 0:
        return ""
    if norm == "l0":
        return f"L0 {budget:g} px"
    if norm == "linf":
        frac = Fraction(budget).limit_denominator(255)
        if frac.denominator == 255 and math.isclose(float(frac), budget, rel_tol=1e-6):
            return f"Linf {frac.numerator}/255"
    return f"{'Linf' if norm == 'linf' else 'L2'} {budget:.2f}"


def tidy(records: Iterable[dict]) -> pd.DataFrame:
    """One row per finished cell and metric."""
    rows = []
    for r in records:
        if r.get("status") != "done":
            continue
        spec, poison = r["spec"], r.get("poison", {})
        train_size = spec["data"].get("train_size")
        base = {
            "cell_id": r["cell_id"], "grid": r.get("grid", ""),
            "dataset": spec["data"]["name"] + (f" ({train_size})" if train_size else ""),
            "arch": spec["arch"], "recipe": f"{spec['recipe_name']}, {spec['recipe']['epochs']} ep",
            "attack": spec["attack"], "budget": budget_label(poison.get("norm", "linf"), poison.get("budget", 0.0)),
            "defense": spec["defense"], "seed": spec["seed"],
        }
        for metric in METRICS:
            rows.append({**base, "metric": metric, "value": 100 * r["metrics"][metric]})
    columns = ["cell_id", "grid", "dataset", "arch", "recipe", "attack", "budget", "defense", "seed", "metric", "value"]
    return pd.DataFrame(rows, columns=columns)


def accuracy_tables(df: pd.DataFrame, metric: str = "test_acc_last", attack_order=None, defense_order=None) -> dict:
    """(dataset, arch, recipe) -> DataFrame of 'mean' or 'mean +- std' strings, attacks x defenses."""
    tables = {}
    sub = df[df.metric == metric].copy()
    if sub.empty:
        return tables
    sub["row"] = sub.attack + sub.budget.map(lambda b: f" ({b})" if b else "")
    for key, part in sub.groupby(list(GROUP), sort=False):
        stats = part.groupby(["row", "attack", "defense"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
        stats["text"] = [f"{m:.2f}" if c < 2 else f"{m:.2f} ± {s:.2f}" for m, s, c in zip(stats["mean"], stats["std"], stats["count"])]
        table = stats.pivot(index="row", columns="defense", values="text")
        attack_of = dict(zip(stats["row"], stats["attack"]))
        rank = {a: i for i, a in enumerate(attack_order or [])}
        rows = sorted(table.index, key=lambda row: (rank.get(attack_of[row], len(rank)), row))
        cols = [d for d in (defense_order or []) if d in table.columns] + sorted(c for c in table.columns if c not in (defense_order or []))
        table = table.loc[rows, cols].fillna("–")
        table.index.name, table.columns.name = "attack", "defense"
        tables[key] = table
    return tables


def to_markdown(table: pd.DataFrame) -> str:
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    lines += ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in zip(table.index, table.values)]
    return "\n".join(lines)


def to_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    body = table.copy()
    body.index.name, body.columns.name = None, None
    styler = body.style.format(lambda v: str(v).replace("±", r"$\pm$")).format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, caption=caption, label=label, column_format="l" + "r" * len(body.columns), position="t")


def write_report(records: Iterable[dict], out_dir: Path, name: str, attack_order=None, defense_order=None,
                 metric: str = "test_acc_last") -> dict[str, Path]:
    """Write <name>.csv (tidy), <name>.md and <name>.tex into `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = tidy(records)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md", "tex": out_dir / f"{name}.tex"}
    df.to_csv(paths["csv"], index=False)
    md, tex = [], []
    what = {"test_acc_last": "last-epoch", "test_acc_best": "best"}.get(metric, metric)
    for (dataset, arch, recipe), table in accuracy_tables(df, metric, attack_order, defense_order).items():
        caption = f"Clean test accuracy (%, {what}) of {arch} trained on poisoned {dataset}; recipe {recipe}."
        md += [f"### {dataset}, {arch}, {recipe}", "", caption, "", to_markdown(table), ""]
        tex.append(to_latex(table, caption, f"tab:{name}-{arch}"))
    paths["md"].write_text("\n".join(md) if md else "No finished cells yet.\n")
    paths["tex"].write_text("% needs \\usepackage{booktabs}\n" + "\n".join(tex))
    return paths

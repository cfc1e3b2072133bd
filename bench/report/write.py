"""Write a report: the tables (`tables`), their text (`render`) and the figures (`bench.figures`) as files.

The one module of the report that reads or looks anything up: the records it is given, the store's
poison cache and the dataset (for the gallery), and each plugin's citation, once per report.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from bench.citations import Citation, bibliography, citation
from bench.config import ConfigError, comma_choices
from bench.published import PublishedSource
from bench.records import CellResult
from bench.registry import ARCHS, ATTACKS, DEFENSES
from bench.store import atomic_write_bytes, remove_partial_files
from bench.report import render
from bench.report.tables import (BASELINE_ATTACKS, DEFAULT_TOLERANCE, EFFORT_GROUPS, METRICS, MI_METRICS, TableLayout, analysis_cells,
                                 compare_published, effort_cells, histories_frame, mi_setup, ordered, ratio_curves, ratio_tables,
                                 recipe_label, robust_cells, robust_setup, summary_tables, tidy, unpublished,
                                 without_full_poison_columns)

log = logging.getLogger("bench")

FORMATS = ("latex", "csv", "md", "fig")
GALLERY_IMAGES = 4  # images per attack in the gallery: the first image of each of the first classes


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    """'latex,csv' -> ('latex', 'csv'); an unknown name is an error that lists the allowed ones."""
    return comma_choices(text, FORMATS, "--format", "format")


@dataclass(frozen=True)
class Report:
    paths: dict  # kind -> Path of every file written
    markdown: str
    notes: tuple[str, ...]  # what was skipped and why
    summary: str = ""  # what the terminal shows: the metric's tables and their rankings, in Markdown

    def files_text(self) -> str:
        """Where each kind of file went, a line each; the figures as their folder and their names."""
        lines = [f"{label}: {self.paths[kind]}" for kind, label in
                 (("md", "report"), ("tex", "LaTeX"), ("bib", "BibTeX"), ("csv", "CSV"),
                  ("mi_calibration", "MI calibration"), ("published", "published comparison")) if kind in self.paths]
        figures = [p for p in self.paths.values() if p.suffix == ".png"]
        if figures:
            lines.append(f"figures (PDF and PNG): {figures[0].parent}/ {', '.join(p.stem for p in figures)}")
        return "\n".join(lines)


def plugin_citations(df: pd.DataFrame) -> dict[tuple[str, str], Citation]:
    """(kind, name) -> Citation of every attack and defense in the tidy frame: the paper of the plugin
    behind the name (a variant cites its plugin's), each plugin looked up once in the installed ones;
    a plugin that is no longer installed is not cited."""
    found: dict[tuple[str, str], Citation] = {}
    out = {}
    for kind in ("attack", "defense"):
        for name, plugin in df[[kind, f"{kind}_plugin"]].drop_duplicates().itertuples(index=False):
            if (kind, plugin) not in found:
                found[kind, plugin] = citation(kind, plugin)
            out[kind, name] = found[kind, plugin]
    return out


STALE_SECONDS = 60  # a partial file older than this is no report being written now: one a killed run left


SHOWN_FACTORS = {"attack": ATTACKS, "defense": DEFENSES, "arch": ARCHS}


def shown_name(factor: str, name: str) -> str:
    """What a report shows for a name in a grid's list: the plugin's display name (`miue` -> `MI-UE`,
    `jpeg+cutout` -> `JPEG + Cutout`); a variant's name (not registered) as the grid wrote it."""
    return SHOWN_FACTORS[factor].display(name)


def displayed(record: CellResult) -> CellResult:
    """`record` under the names a reader sees: each plugin's display name where the grid did not name a
    variant of it. Every table, figure and the CSV's name columns read these; `<factor>_plugin` keeps the
    registered name."""
    variants = record.spec.get("variants", {})
    shown = {f: variants.get(f) or shown_name(f, record.spec[f]) for f in SHOWN_FACTORS if f in record.spec}
    return record.named(shown)


def estimator_calibration(records: list[CellResult]) -> pd.DataFrame:
    """bench.mi's estimators on correlated Gaussians at the settings (of the first record with MI) and the
    smallest sample size the records used.

    A simulation at the records' settings, not a function of their values, so it is run here rather than
    among the tables.
    """
    from bench.mi import MISettings, calibration  # here, not at the top: bench.mi loads torch and scipy

    analyses = [r.analysis for r in records if r.done and set(r.analysis or {}) & set(MI_METRICS)]
    if not analyses:
        return pd.DataFrame()
    settings = MISettings(**{f.name: int(analyses[0][f.name]) for f in fields(MISettings) if f.name in analyses[0]})
    n = int(min(a["n_images"] for a in analyses))
    return calibration(settings.estimators(), n=n, dims=sorted({1, settings.ksg_dims, settings.gaussian_dims}))


def write_report(records: Iterable[CellResult], out_dir: Path, name: str, attack_order=None, defense_order=None,
                 metric: str = "test_acc_last", *, formats: Iterable[str] = FORMATS, layout: TableLayout = TableLayout(),
                 arch_order=None, store=None, curves: str | None = None, compare: Iterable[PublishedSource] = (),
                 tolerance: float = DEFAULT_TOLERANCE) -> Report:
    """Write the report of `records` into `out_dir` as <name>.csv/.md/.tex/.bib and <name>_figures/.

    `formats` is any subset of FORMATS; `store` (a bench.store.Store) lets the gallery read poisons;
    `curves` is a pandas query choosing the cells whose training curves are drawn; `compare` the
    published sources (bench.published) our cells are put beside, with differences beyond
    `tolerance` points flagged (also as <name>_published.csv).
    """
    formats = parse_formats(formats)
    if metric not in METRICS:
        raise ValueError(f"--metric: {metric!r} is not a metric; allowed: {', '.join(METRICS)}")
    records = [displayed(r) for r in records]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every report file is written beside its name and renamed: a partial one is what a killed report left.
    remove_partial_files([out_dir], STALE_SECONDS)
    df = tidy(records)
    orders = {factor: [shown_name(factor, n) for n in order or []]
              for factor, order in (("attack", attack_order), ("defense", defense_order), ("arch", arch_order))}
    done = [r for r in records if r.done]
    recipes = {recipe_label(r.spec): render.recipe_description(r.spec) for r in done}
    citations = plugin_citations(df)

    tables = summary_tables(df, metric, layout, orders)
    md, tex = render.table_sections(tables, metric, recipes, citations, name)
    rank_md, rank_tex = render.ranking_section(tables, metric, name)
    ratios = ratio_tables(df, metric, orders)
    ratio_md, ratio_tex = render.ratio_section(ratios, metric, recipes, citations, name)
    cells = analysis_cells(df, orders, {r.cell_id: mi_setup(r) for r in done if r.analysis})
    calibration = estimator_calibration(done) if not cells.empty else pd.DataFrame()
    mi_md, mi_tex = render.mi_section(cells, calibration, name)
    robust = robust_cells(df, orders, {r.cell_id: robust_setup(r) for r in done if r.analysis})
    robust_md, robust_tex = render.robust_section(robust, name)
    effort = effort_cells(done, metric, orders)
    effort_md, effort_tex = render.effort_section(effort, name, metric)
    compare = tuple(compare)
    comparison, cmp_md, cmp_tex = pd.DataFrame(), [], []
    if compare:
        comparison = compare_published(done, compare, metric, tolerance)
        cmp_md, cmp_tex = render.comparison_section(comparison, compare, tolerance, unpublished(done, compare), name)
    summary = "\n".join(render.terminal_summary(tables, metric)).rstrip() + "\n"
    md += rank_md + ratio_md + mi_md + robust_md + effort_md + cmp_md
    tex = [f"% needs \\usepackage{{booktabs,graphicx}}; cite keys resolve with {name}.bib", *tex, *rank_tex, *ratio_tex, *mi_tex,
           *robust_tex, *effort_tex, *cmp_tex]

    paths: dict[str, Path] = {}
    notes: list[str] = []
    if "fig" in formats:
        fig_paths, fig_notes = write_figures(records, df, out_dir / f"{name}_figures", orders, store, curves, cells,
                                             ratios, effort)
        paths.update(fig_paths)
        notes += fig_notes
        md += [f"![{path.stem}]({path.relative_to(out_dir).as_posix()})" for path in fig_paths.values()
               if path.suffix == ".png"]
    md += [f"- {note}" for note in notes]
    markdown = "\n".join(md).rstrip() + "\n"

    if "csv" in formats:
        paths["csv"] = out_dir / f"{name}.csv"
        atomic_write_bytes(paths["csv"], without_full_poison_columns(df).to_csv(index=False).encode())
        if not calibration.empty:
            paths["mi_calibration"] = out_dir / f"{name}_mi_calibration.csv"
            atomic_write_bytes(paths["mi_calibration"], calibration.to_csv(index=False).encode())
        if compare:
            paths["published"] = out_dir / f"{name}_published.csv"
            atomic_write_bytes(paths["published"], comparison.to_csv(index=False).encode())
    if "md" in formats:
        paths["md"] = out_dir / f"{name}.md"
        atomic_write_bytes(paths["md"], markdown.encode())
    if "latex" in formats:
        paths["tex"], paths["bib"] = out_dir / f"{name}.tex", out_dir / f"{name}.bib"
        atomic_write_bytes(paths["tex"], "\n".join(tex).encode())
        atomic_write_bytes(paths["bib"], bibliography(citations.values()).encode())
    for note in notes:
        log.warning(note)
    return Report(paths, markdown, tuple(notes), summary)


def write_figures(records: list[CellResult], df: pd.DataFrame, folder: Path, orders: dict, store, curves: str | None,
                  cells: pd.DataFrame, ratios=(), effort: pd.DataFrame | None = None) -> tuple[dict[str, Path], list[str]]:
    """Every figure the records allow, as PDF and PNG under `folder`; notes for those left out."""
    import bench.figures as figures  # here, not at the top: matplotlib loads only for reports that draw

    paths: dict[str, Path] = {}
    notes: list[str] = []
    style = figures.AttackStyle(tuple(ordered(df.attack, orders.get("attack"))))

    def emit(kind: str, fig) -> None:
        for path in figures.save(fig, folder / kind):
            paths[f"{kind}{path.suffix}"] = path

    heat = {render.group_title(t): render.labelled(t.mean)
            for t in summary_tables(df, "test_acc_last", TableLayout(), orders)}
    if heat:
        emit("accuracy_heatmap", figures.accuracy_heatmap(heat))
    if ratios:
        emit("accuracy_by_poison_ratio",
             figures.accuracy_against_ratio({render.group_title(t): ratio_lines(t) for t in ratios}, style))
    if effort is not None and not effort.empty:
        for key, part, suffix in named_parts(effort, EFFORT_GROUPS):
            emit(f"accuracy_by_effort{suffix}", figures.accuracy_against_effort(part, style, ", ".join(key)))
    histories, title = histories_frame(records, df, curves, orders)
    if not histories.empty:
        emit("training_curves", figures.training_curves(histories, style, title))
    elif curves:
        notes.append(f"curves: no cell with a training history matches {curves!r}")
    clean, poisoned, gallery_notes = gallery_images(records, store, orders.get("attack"))
    notes += gallery_notes
    if poisoned:
        emit("poison_gallery", figures.gallery(clean, poisoned))
    if not cells.empty:
        for key, part, suffix in named_parts(cells, render.MI_GROUPS):
            if part.mi_setup.nunique() > 1:
                notes.append(f"MI figures for {', '.join(key)}: not drawn, the records measured MI differently "
                             f"({render.setup_differences(part.mi_setup)}); run them again with one setting")
                continue
            title = ", ".join([*key[:2], f"defense {key[2]}"])
            if part.arch.nunique() > 1:
                emit(f"mi_by_depth{suffix}", figures.mi_against_depth(part, style, title))
            emit(f"mi_by_attack{suffix}",
                 figures.mi_by_attack(part.assign(baseline=part.attack.isin(BASELINE_ATTACKS)), style, title))
            emit(f"mi_chain{suffix}", figures.mi_chain(part, style, title))
    return paths, notes


def file_word(text: str) -> str:
    """A label as part of a file name: 'ISS-Gray' -> 'iss_gray', 'cifar10 (2000)' -> 'cifar10_2000'."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


def named_parts(frame: pd.DataFrame, groups: list[str]):
    """(key, part, suffix) per value of `groups` in `frame`, in order: the suffix names, for the figure's file,
    the values of the groups that differ between parts (`_iss_gray`), '' where there is one part."""
    varying = [g for g in groups if frame[g].nunique() > 1]
    for key, part in frame.groupby(groups, sort=False):
        values = dict(zip(groups, key))
        yield key, part, "".join("_" + file_word(values[g]) for g in varying)


def ratio_lines(table) -> pd.DataFrame:
    """A `ratio_tables` table as the ratio figure draws it: label, attack, ratio, mean, std, baseline."""
    curves = ratio_curves(table)
    classes = curves.poison_classes.nunique() > 1  # lines drawn from other classes are told apart
    labels = [render.attack_label(row.attack, row.budget) + (f", classes {row.poison_classes or 'all'}" if classes else "")
              for row in curves.itertuples()]
    return pd.DataFrame({"label": labels, "attack": curves.attack, "ratio": curves.poison_ratio, "mean": curves["mean"],
                         "std": curves["std"], "baseline": curves.attack.isin(BASELINE_ATTACKS)})


def gallery_images(records: list[CellResult], store, attack_order) -> tuple[object, dict, list[str]]:
    """(clean images, attack -> poisoned images, notes) for the gallery, or notes saying why not.

    Poisons come from the store's cache (`record.poison["key"]`), clean images from the dataset
    named in the record's spec (offline where BENCH_CIFAR10 or an .npz path is given).
    """
    from bench.data import DataSpec, DataUnavailable, load_dataset  # here, not at the top: bench.data loads torch

    if store is None:
        return None, {}, ["gallery: skipped, no results store given"]
    first_of: dict[str, CellResult] = {}  # attack -> its first finished record with a cached, non-zero poison
    for r in records:
        poison = r.poison or {}
        if r.done and poison.get("budget", 0) > 0 and poison.get("key"):
            first_of.setdefault(r.name("attack"), r)
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
    for attack in ordered(first_of, attack_order):
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

"""Figures for a paper, from the tidy table of stored records (and cached poisons for the gallery).

One style for every figure: matplotlib's `tab10` colours (ten distinct hues; `tableau-colorblind10`
has three greys that read as one), a marker per attack so lines read in greyscale too, `cividis` for
the heatmap (perceptually uniform and colour-blind safe) over the range of its own values, and each
attack keeps its colour and marker across figures. Each function returns a matplotlib
`Figure` built without pyplot (no global state, no display needed); `save` writes it as PDF and PNG.
"""
from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.style
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.store import atomic_write_bytes

STYLE = [{
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.4, "lines.markersize": 4,
    "pdf.fonttype": 42,  # TrueType in the PDF, so the text stays editable in a paper's figure tools
}]
COLOURS = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
MARKERS = "osD^v<>pPX*h"
PNG_DPI = 200
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting logs every table at INFO
ACCURACY_LABEL = "clean test accuracy (%)"


@dataclass(frozen=True)
class AttackStyle:
    """A colour and a marker per attack, fixed by the attack's position in `attacks`."""

    attacks: tuple[str, ...]

    def __call__(self, attack: str) -> dict:
        i = self.attacks.index(attack) if attack in self.attacks else len(self.attacks)
        return {"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[i % len(MARKERS)]}


def save(fig: Figure, stem: Path) -> list[Path]:
    """`stem`.pdf and `stem`.png, each drawn in memory and written atomically (a kill or a full disk leaves the
    previous file, never an empty one); returns both paths."""
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    with matplotlib.style.context(STYLE):
        for path in paths:
            drawn = io.BytesIO()
            fig.savefig(drawn, format=path.suffix[1:], dpi=PNG_DPI, bbox_inches="tight")
            atomic_write_bytes(path, drawn.getvalue())
    return paths


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    with matplotlib.style.context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


HEAT_STEP = 5.0  # the heatmap's range runs between multiples of this (points of accuracy)


def heat_range(values: np.ndarray) -> tuple[float, float]:
    """The colour range of a heatmap: its values' own range, widened to multiples of HEAT_STEP (a fixed 0-100
    would show 23% and 44% in two shades of one grey)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 100.0
    low, high = HEAT_STEP * math.floor(finite.min() / HEAT_STEP), HEAT_STEP * math.ceil(finite.max() / HEAT_STEP)
    return low, max(high, low + HEAT_STEP)


def accuracy_heatmap(means: dict[str, pd.DataFrame], colorbar_label: str = ACCURACY_LABEL) -> Figure:
    """One panel per table (title -> attacks x defenses of mean accuracy in %), annotated, coloured over the
    range of all its panels' values (`heat_range`), so panels compare with each other."""
    panels = [(name, table) for name, table in means.items() if not table.empty]
    if not panels:
        raise ValueError("no accuracy to plot")
    height = sum(0.35 * len(t.index) + 0.9 for _, t in panels)
    width = max(0.75 * len(t.columns) + 2.2 for _, t in panels)
    fig, axes = _figure(len(panels), 1, width, height)
    low, high = heat_range(np.concatenate([t.to_numpy(dtype=float).ravel() for _, t in panels]))
    with matplotlib.style.context(STYLE):
        for ax, (name, table) in zip(axes[:, 0], panels):
            values = table.to_numpy(dtype=float)
            image = ax.imshow(np.ma.masked_invalid(values), cmap="cividis", vmin=low, vmax=high, aspect="auto")
            ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns], rotation=30, ha="right")
            ax.set_yticks(range(len(table.index)), [str(i) for i in table.index])
            ax.grid(False)
            ax.set_title(name)
            for (r, c), v in np.ndenumerate(values):
                if not math.isnan(v):
                    # cividis runs dark to light: dark text on the light upper half of the range.
                    ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=7,
                            color="black" if v > (low + high) / 2 else "white")
            fig.colorbar(image, ax=ax, label=colorbar_label, shrink=0.9)
    return fig


def training_curves(histories: pd.DataFrame, style: AttackStyle, title: str = "") -> Figure:
    """Test accuracy per epoch; `histories` has columns label, attack, epoch, test_acc (%)."""
    if histories.empty:
        raise ValueError("no training history to plot")
    fig, axes = _figure(1, 1, 4.2, 2.8)
    ax = axes[0, 0]
    with matplotlib.style.context(STYLE):
        for label, curve in histories.groupby("label", sort=False):
            ax.plot(curve.epoch, curve.test_acc, label=label, markevery=max(len(curve) // 8, 1),
                    **style(curve.attack.iloc[0]))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ACCURACY_LABEL)
        ax.set_title(title)
        ax.legend(frameon=False, loc="best")
    return fig


def accuracy_against_ratio(panels: dict[str, pd.DataFrame], style: AttackStyle) -> Figure:
    """Accuracy against the poisoned fraction, one panel per table (title -> rows of label, attack, ratio,
    mean, std (%) and baseline): a line per attack with its seeds' std as error bars, the baseline (clean,
    the same cell at every ratio) as a dashed reference line."""
    panels = {title: lines for title, lines in panels.items() if not lines.empty}
    if not panels:
        raise ValueError("no accuracy against ratio to plot")
    fig, axes = _figure(1, len(panels), 3.6 * len(panels), 2.8)
    with matplotlib.style.context(STYLE):
        for ax, (title, lines) in zip(axes[0], panels.items()):
            for label, line in lines.groupby("label", sort=False):
                line = line.sort_values("ratio")
                if line.baseline.iloc[0]:
                    ax.axhline(line["mean"].mean(), color="0.4", linestyle="--", linewidth=1, label=f"{label} (reference)")
                    continue
                ax.errorbar(100 * line.ratio, line["mean"], yerr=line["std"].fillna(0), label=label, capsize=2,
                            **style(line.attack.iloc[0]))
            ax.set_xlabel("poisoned training images (%)")
            ax.set_ylabel(ACCURACY_LABEL)
            ax.set_title(title)
            ax.legend(frameon=False, loc="best")
    return fig


def accuracy_against_effort(cells: pd.DataFrame, style: AttackStyle, title: str = "") -> Figure:
    """Accuracy against generation effort (`bench.report.tables.effort_cells`, one group): a line per attack
    plugin through its budgets, against the recorded generation seconds (left) and the share of its
    official passes per image (right), both log scale, the seeds' std as error bars; the clean baseline
    as a dashed reference line."""
    attacks = cells[~cells.baseline]
    if attacks.empty:
        raise ValueError("no accuracy against effort to plot")
    fig, axes = _figure(1, 2, 8.0, 3.0)
    with matplotlib.style.context(STYLE):
        for ax, x, label in zip(axes[0], ("generate_s", "share"), ("generation time (s)", "share of official passes (%)")):
            for plugin, line in attacks.groupby("attack_plugin", sort=False):
                line = line.sort_values(x)
                per = " (per round)" if (line.per == "round").any() else ""
                ax.errorbar(line[x] * (100 if x == "share" else 1), line["mean"], yerr=line["std"].fillna(0),
                            label=plugin + (per if x == "share" else ""), capsize=2, **style(plugin))
            for _, base in cells[cells.baseline].iterrows():
                ax.axhline(base["mean"], color="0.4", linestyle="--", linewidth=1, label=f"{base.attack} (reference)")
            ax.set_xscale("log")
            # Plain numbers on the decades only: matplotlib's minor labels (3x10^1, 4x10^1) run into each other.
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel(ACCURACY_LABEL)
            ax.legend(frameon=False, loc="best", fontsize="small")
        if title:
            fig.suptitle(title)
    return fig


def arch_depth(arch: str) -> int | None:
    """The depth in an architecture's name (resnet18 -> 18, vgg11 -> 11), or None (tiny_cnn)."""
    match = re.search(r"(\d+)$", arch)
    return int(match.group(1)) if match else None


def arch_family(arch: str) -> str:
    return re.sub(r"\d+$", "", arch)


# MI is I(Z_clean; Z_poisoned) (bench.mi); the axis says which estimator, short enough not to run into a title.
MI_LABELS = {"mi_cca": "MI, CCA (nats)", "mi_gaussian": "MI, Gaussian (nats)", "mi_ksg": "MI, KSG (nats)"}


def mi_panels(cells: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, axis label) of each MI estimate the cells have (CCA, the default, first), then accuracy."""
    present = [(m, label) for m, label in MI_LABELS.items() if m in cells and cells[m].notna().any()]
    return [*present, ("test_acc_last", ACCURACY_LABEL)]


def lead_mi(cells: pd.DataFrame) -> str:
    """The MI estimate a single-estimate panel shows: the first of MI_LABELS the cells have."""
    return mi_panels(cells)[0][0]


def mi_against_depth(cells: pd.DataFrame, style: AttackStyle, title: str = "") -> Figure:
    """The MI-UE paper's figure: MI (each estimator its own panel) and test accuracy against depth, a
    line per attack.

    `cells` has one row per (attack, arch) with columns attack, arch and the means of the metrics in
    `mi_panels`, plus `<metric>_std` (error bars; NaN or absent for one seed). Architectures of one
    family share a line; another family is drawn dashed. Depth and family are read from the arch's
    plugin name (`arch_plugin`, where the cells have it: a variant's own name need not say them).
    Without depths in the names the x axis is categorical.
    """
    if cells.empty:
        raise ValueError("no MI analysis to plot")
    cells = cells.copy()
    plugins = cells["arch_plugin"] if "arch_plugin" in cells else cells.arch
    depths = plugins.map(arch_depth)
    numeric = depths.notna().all()
    order = list(dict.fromkeys(cells.arch))
    cells["x"] = depths if numeric else cells.arch.map(order.index)
    panels = mi_panels(cells)
    fig, axes = _figure(1, len(panels), 2.6 * len(panels), 2.6)
    cells["family"] = plugins.map(arch_family)
    families = list(dict.fromkeys(cells.family))
    with matplotlib.style.context(STYLE):
        for ax, (metric, label) in zip(axes[0], panels):
            in_legend = set()  # each attack once, on its first line, whatever family that is
            for (attack, family), line in cells.groupby(["attack", "family"], sort=False):
                line = line.sort_values("x")
                ax.errorbar(line.x, line[metric], yerr=line.get(f"{metric}_std"), capsize=2,
                            linestyle="--" if families.index(family) > 0 else "-",
                            label=None if attack in in_legend else attack, **style(attack))
                in_legend.add(attack)
            ax.set_ylabel(label)
            ax.set_xlabel("depth (layers)" if numeric else "architecture")
            if numeric:
                ax.set_xticks(sorted(set(cells.x)))
            else:
                ax.set_xticks(range(len(order)), order)
        # One legend for all panels, below them, so it never covers a line.
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 8), frameon=False)
        lines = "solid: " + families[0] + ", dashed: " + ", ".join(families[1:]) if len(families) > 1 else ""
        if title or lines:
            fig.suptitle("; ".join(t for t in (title, lines) if t))
    return fig


def mi_by_attack(cells: pd.DataFrame, style: AttackStyle, title: str = "") -> Figure:
    """MI (each estimator its own panel) and test accuracy per attack, as bars: one bar per attack and
    architecture, hatched by architecture where there are several, with the std over seeds.

    The baseline rows (`baseline` True: the clean poison, where MI is the estimator's ceiling rather than
    a measurement of an attack) are dashed reference lines, one per architecture, not bars.
    """
    if cells.empty:
        raise ValueError("no MI analysis to plot")
    baseline = cells["baseline"].astype(bool) if "baseline" in cells else pd.Series(False, index=cells.index)
    references, cells = cells[baseline], cells[~baseline]
    attacks = list(dict.fromkeys(cells.attack))
    archs = list(dict.fromkeys([*cells.arch, *references.arch]))
    panels = mi_panels(pd.concat([cells, references]))
    width = 0.8 / len(archs)
    panel_width = max(2.2, 0.3 * len(attacks) * len(archs) + 0.8)  # room for every bar's label
    fig, axes = _figure(1, len(panels), panel_width * len(panels), 2.8)
    hatches = ["", "//", "..", "xx", "\\\\", "oo", "++"]
    dashes = ["--", ":", "-.", (0, (5, 1))]
    with matplotlib.style.context(STYLE):
        for ax, (metric, label) in zip(axes[0], panels):
            for j, arch in enumerate(archs):
                part = cells[cells.arch == arch].set_index("attack").reindex(attacks)
                x = np.arange(len(attacks)) + (j - (len(archs) - 1) / 2) * width
                std = part.get(f"{metric}_std")
                if len(attacks):
                    ax.bar(x, part[metric], width, yerr=None if std is None or std.isna().all() else std, capsize=2,
                           color=[style(a)["color"] for a in attacks], hatch=hatches[j % len(hatches)],
                           edgecolor="black", linewidth=0.4, label=arch if len(archs) > 1 else None)
                for _, ref in references[references.arch == arch].iterrows():
                    ax.axhline(ref[metric], color="0.35", linewidth=1, linestyle=dashes[j % len(dashes)],
                               label=f"{ref.attack} (reference)" + (f", {arch}" if len(archs) > 1 else ""))
            ax.set_xticks(range(len(attacks)), attacks, rotation=40, ha="right")
            ax.set_ylabel(label)
            ax.grid(axis="x", visible=False)
        # One legend below the panels (architectures' hatches, the reference lines), so it covers no bar.
        handles, labels = axes[0, 0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False)
        fig.suptitle("; ".join(t for t in (title, archs[0] if len(archs) == 1 else "") if t))
    return fig


def mi_chain(cells: pd.DataFrame, style: AttackStyle, title: str = "") -> Figure:
    """The MI-UE argument link by link, one point per (attack, arch): cosine -> covariance -> MI -> accuracy."""
    if cells.empty:
        raise ValueError("no MI analysis to plot")
    lead = lead_mi(cells)
    mi_label = MI_LABELS[lead]
    links = (("intra_class_cosine", "cond_cov_ratio", "intra-class cosine similarity", "conditional covariance ratio"),
             ("cond_cov_ratio", lead, "conditional covariance ratio", mi_label),
             (lead, "test_acc_last", mi_label, ACCURACY_LABEL))
    fig, axes = _figure(1, len(links), 2.6 * len(links), 2.6)
    with matplotlib.style.context(STYLE):
        for ax, (x, y, xlabel, ylabel) in zip(axes[0], links):
            for attack, points in cells.groupby("attack", sort=False):
                ax.plot(points[x], points[y], linestyle="none", label=attack, **style(attack))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
        axes[0, 0].legend(frameon=False, loc="best")
        if title:
            fig.suptitle(title)
    return fig


def amplified(delta: np.ndarray) -> np.ndarray:
    """A perturbation (H, W, C, any sign) shown as 0.5 + delta / (2 max|delta|): grey is zero, full range."""
    peak = np.abs(delta).max()
    return np.full(delta.shape, 0.5) if peak == 0 else 0.5 + delta / (2 * peak)


def gallery(clean: np.ndarray, poisoned: dict[str, np.ndarray]) -> Figure:
    """Clean images (top row), then per attack its poisoned images and their amplified perturbations.

    `clean` is uint8 (K, H, W, C); `poisoned` maps an attack to uint8 (K, H, W, C) of the same images.
    """
    if not poisoned:
        raise ValueError("no poisoned images to show")
    k = len(clean)
    rows = [("Clean", clean / 255)]
    for attack, images in poisoned.items():
        delta = images.astype(np.float64) - clean.astype(np.float64)
        rows += [(attack, images / 255), (f"{attack}\nperturbation", np.stack([amplified(d) for d in delta]))]
    fig, axes = _figure(len(rows), k, 0.9 * k + 0.8, 0.9 * len(rows))
    with matplotlib.style.context(STYLE):
        for (label, images), line in zip(rows, axes):
            for ax, image in zip(line, images):
                ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1,
                          interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                for spine in ax.spines.values():
                    spine.set_visible(False)
            line[0].set_ylabel(label, rotation=0, ha="right", va="center")
    return fig

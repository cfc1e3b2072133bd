"""The report as text: labels, captions, Markdown and booktabs LaTeX (through pandas' Styler).

Every label a reader sees is made here: an attack and its budget, two keys in `bench.report.tables`,
become `em (Linf 8/255)`; a mean and std over seeds `52.10 ± 1.41`; a table's marks (`tables.
SummaryTable.marks`) bold or a dagger, its ranks `2=`; in LaTeX the budget becomes
`$\\ell_\\infty$ 8/255` and a plugin's label carries its `\\cite{}`; the comparison with published
numbers becomes a table per source. Functions of the tables and of what the caller looked up once
(recipe descriptions, citations, the published sources): no file, no registry.
"""
from __future__ import annotations

import json
import re
from typing import Iterable

import pandas as pd

from bench.records import poisoned_label
from bench.report.tables import BASELINE_ATTACKS, FULL_POISON, SIGNIFICANCE, SummaryTable, value_text

MISSING = "–"
AUTOATTACK_STANDARD = "APGD-CE, APGD-T, FAB-T, Square"  # the standard version's attacks, as the record lists them
# What a source marked `unverified` is (bench.published): said beside its title wherever it is compared.
UNVERIFIED_TEXT = "Unverified: a third party's numbers, not checked against the method's own paper."
DAGGER = "†"  # a cell not significantly above its column's lowest: `$^\dagger$` in LaTeX
TEST_WORDS = "Welch's one-sided t-test"  # the test of tables.below_matrix, as a caption names it
METRIC_WORDS = {"test_acc_last": "clean test accuracy (%, last epoch)", "test_acc_best": "clean test accuracy (%, best epoch)",
                "train_acc": "training accuracy (%, last epoch)",
                "test_acc_early_stop": "clean test accuracy (%, at the epoch of best clean validation accuracy)"}
MI_CAPTION = ("Mutual information I(Z_clean; Z_poisoned) between the trained model's penultimate features of the "
              "clean and the poisoned version of the same training images (bench.mi; nats), the mean per-class "
              "conditional covariance of poisoned features over their total covariance, and their mean intra-class "
              "cosine similarity; mean ± std over seeds.")


# --- labels --------------------------------------------------------------------------------------
def attack_label(attack: str, budget: str) -> str:
    return f"{attack} ({budget})" if budget else attack


def factor_label(factor: str, key) -> str:
    """A factor's key as text: the attack's (attack, budget) as 'em (Linf 8/255)', the poison ratio's
    (ratio, classes) as '20%' or '100% of classes 3, 5', any other as itself."""
    if factor == "poison_ratio":
        return poisoned_label(*key)
    return attack_label(*key) if factor == "attack" else str(key)


def shown_group(table: SummaryTable) -> dict:
    """The group factors a title or caption names: a fully poisoned set is what every table has unless
    it says otherwise, so its poison ratio is left out (reports of grids without ratios read as before)."""
    return {f: key for f, key in table.group.items() if not (f == "poison_ratio" and tuple(key) == FULL_POISON)}


def index_labels(index: pd.Index) -> list[str]:
    """The labels of a table's index or columns (named by their factor; the attack's two levels by 'attack')."""
    return [factor_label(index.names[0], key) for key in index]


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its index and columns as labels, for Markdown and the heatmap."""
    out = frame.copy()
    out.index, out.columns = index_labels(frame.index), index_labels(frame.columns)
    return out


def group_title(table: SummaryTable) -> str:
    return ", ".join(("poisoned " if factor == "poison_ratio" else "") + factor_label(factor, key)
                     for factor, key in shown_group(table).items())


def mean_std(mean, std, digits: int = 2):
    """Per element of two Series or DataFrames: 'mean ± std' where std is known (several seeds), 'mean'
    where it is NaN (one seed), MISSING where there is no mean."""
    number = f"{{:.{digits}f}}".format
    text = mean.map(number).where(std.isna(), mean.map(number) + " ± " + std.map(number))
    return text.where(mean.notna(), MISSING)


def cell_text(table: SummaryTable, bold: str = "{}", tied: str = "{}") -> pd.DataFrame:
    """'mean' or 'mean ± std' per cell of `table`, '(n=2)' after it where its seeds are not the table's
    usual count; a cell marked "best" wrapped in `bold`, one marked "tied" in `tied`."""
    text = mean_std(table.mean, table.std)
    other = (table.seeds > 0) & (table.seeds != table.seed_count())
    text = text.where(~other, text + " (n=" + table.seeds.astype(str) + ")")
    marks = table.marks()
    text = text.where(marks != "best", text.map(bold.format))
    return text.where(marks != "tied", text.map(tied.format))


# --- captions ------------------------------------------------------------------------------------
def sentence(text: str) -> str:
    """`text` as a sentence: its first letter upper case (the rest kept: `MI-UE`, `Linf`), a full stop after."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if not text or text.endswith(".") else ".")


def recipe_description(spec: dict) -> str:
    """The recipe in words, for captions: 'cpu_smoke* (preset cpu_smoke, changed by the grid): 8 epochs of SGD
    (lr 0.05, ...)'."""
    r = spec["recipe"]
    schedule = r["schedule"] + (f" x{r['gamma']:g} at {', '.join(f'{m:g}' for m in r['milestones'])} of training"
                                if r["schedule"] == "multistep" else "")
    clip = f", gradient clipping {r['grad_clip']:g}" if r.get("grad_clip") else ""
    name = spec["recipe_name"]
    if name.endswith("*"):  # bench.grid: a preset the grid changed (`recipe = {preset = ..., epochs = 8}`)
        name += f" (preset {name[:-1]}, changed by the grid)"
    return (f"{name}: {r['epochs']} epochs of SGD (lr {r['lr']:g}, momentum {r['momentum']:g}, "
            f"weight decay {r['weight_decay']:g}, batch {r['batch_size']}, {schedule} schedule{clip})")


def group_text(table: SummaryTable) -> str:
    """The group factors but the recipe (which a caption describes in words): 'arch resnet18, dataset d'."""
    return ", ".join(f"{f.replace('_', ' ')} {factor_label(f, key)}" for f, key in shown_group(table).items()
                     if f != "recipe")


def seeds_text(table: SummaryTable) -> str:
    """'mean ± std over 3 seeds' (the usual count), and that a cell over another count shows its n."""
    usual = table.seed_count()
    text = "one seed" if usual == 1 else f"mean ± std over {usual} seeds"
    if ((table.seeds > 0) & (table.seeds != usual)).to_numpy().any():
        text += "; (n=k): a cell over k seeds"
    return text


def baseline_aside(table: SummaryTable) -> str:
    has_baseline_row = table.layout.rows == "attack" and bool(set(table.budgets) & set(BASELINE_ATTACKS))
    return " (clean baseline aside)" if has_baseline_row else ""


def one_seed_text(table: SummaryTable, consequence: str) -> str:
    """'' where every column could be tested; else which could not, and `consequence`: 'one seed: no test,
    nothing marked', or 'one seed under jpeg: no test there, ...' where only some columns have a single
    seed ('a cell of one seed' where the table's usual count is more)."""
    untested = table.one_seed_columns()
    if not untested:
        return ""
    who = "one seed" if table.seed_count() == 1 else "a cell of one seed"
    if not table.tested():
        return f"{who}: no test, {consequence}"
    where = ", ".join(factor_label(table.layout.columns, key) for key in untested)
    return f"{who} under {where}: no test there, {consequence}"


def marks_text(table: SummaryTable) -> str:
    """What bold and the dagger mean, and where nothing is marked for want of seeds ('' where no column has
    a contender)."""
    untested = one_seed_text(table, "nothing marked")
    if not table.tested():
        return untested
    rows = table.layout.rows.replace("_", " ")
    text = (f"bold: lowest{baseline_aside(table)}, and below every other {rows} by {TEST_WORDS} at "
            f"{SIGNIFICANCE:g}; {DAGGER}: not significantly above the lowest")
    return "; ".join(p for p in (text, untested) if p)


def caption_head(table: SummaryTable, metric: str) -> str:
    """A table's short caption, what it shows and on what: 'Clean test accuracy (%, last epoch), arch Tiny CNN'."""
    group = group_text(table)
    return METRIC_WORDS[metric].capitalize() + (f", {group}" if group else "")


def caption_note(table: SummaryTable, recipes: dict[str, str]) -> str:
    """The details under a table: the recipe, the budgets, the seeds, what bold and the dagger mean.

    `recipes` maps a recipe label (tidy's `recipe` column) to its description in words.
    """
    recipe_text = "; ".join(recipes[r] for r in table.keys("recipe") if r in recipes)
    budget_text = ", ".join(f"{a} {' and '.join(b for b in budgets if b)}" for a, budgets in table.budgets.items()
                            if any(budgets))
    seeds, marks = seeds_text(table), marks_text(table)
    if marks.startswith("one seed: ") and seeds.startswith("one seed"):  # said once: 'one seed: no test, ...'
        seeds, marks = marks + seeds[len("one seed"):], ""
    parts = [f"recipe {recipe_text}" if recipe_text else "", f"budgets: {budget_text}" if budget_text else "",
             seeds, marks]
    return "; ".join(p for p in parts if p)


def caption(table: SummaryTable, metric: str, recipes: dict[str, str]) -> str:
    """Plain-text caption, its head and its note in one sentence (Markdown's paragraph above a table)."""
    return "; ".join(p for p in (caption_head(table, metric), caption_note(table, recipes)) if p) + "."


# --- Markdown and LaTeX --------------------------------------------------------------------------
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
    return out.replace("±", r"$\pm$").replace(DAGGER, r"$^\dagger$").replace(MISSING, "--")


def cited_labels(index: pd.Index, citations: dict) -> list[str]:
    """Each label of `index` as LaTeX, a plugin's `~\\cite{}` after it; `citations` maps (factor, plugin
    name) -> Citation, and a name it lacks (no paper, not installed) is not cited."""
    factor = index.names[0]
    out = []
    for label, name in zip(index_labels(index), index.get_level_values(factor)):
        found = citations.get((factor, name))
        out.append(latex_text(label) + (f"~\\cite{{{','.join(found.keys)}}}" if found and found.keys else ""))
    return out


def to_latex(table: SummaryTable, caption_text: str, label: str, citations: dict, note: str = "") -> str:
    """booktabs LaTeX of `table`, each plugin cited after its row or column label (`cited_labels`)."""
    plain = cell_text(table, tied="{}" + DAGGER)
    body = plain.map(latex_text)
    body = body.where(table.marks() != "best", r"\textbf{" + body + "}")
    plain.index, plain.columns = index_labels(table.mean.index), index_labels(table.mean.columns)
    body.index, body.columns = cited_labels(table.mean.index, citations), cited_labels(table.mean.columns, citations)
    return _booktabs(body, plain, caption_text, label, note)


def frame_to_latex(frame: pd.DataFrame, caption_text: str, label: str, note: str = "") -> str:
    """A plain table (no bold, no citations) in the same booktabs style."""
    plain = frame.astype(str)
    body = plain.map(latex_text)
    body.index = [latex_text(i) for i in body.index]
    body.columns = [latex_text(c) for c in body.columns]
    return _booktabs(body, plain, caption_text, label, note)


# How wide a table may be before it needs more room, in characters of 10 pt text (about 5 pt each): a
# column of a two-column paper holds about 48, a one-column page about 70. A table wider than a column
# floats as `table*` (both columns); one wider than the page is scaled down to it by graphicx.
COLUMN_CHARS = 48
CITE_CHARS = 4  # what `~\cite{key}` prints, `[12]`
TEXT_COLUMN_CHARS = 36  # a column of words longer than this wraps in a paragraph column of that width
TEXT_COLUMN = r"p{0.3\linewidth}"
FIT_TO_WIDTH = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"


def column_chars(plain: pd.DataFrame, cited: bool) -> list[int]:
    """The printed width of each column of a table (its label column first), in characters: the longest of its
    header and cells, and the space between columns."""
    cite = CITE_CHARS if cited else 0
    widths = [max([len(str(plain.index.name or ""))] + [len(str(i)) + cite for i in plain.index])]
    for column in plain.columns:
        texts = [len(str(v)) for v in plain[column]]
        widths.append(max([len(str(column)) + cite] + texts))
    return [min(w, TEXT_COLUMN_CHARS) + 2 for w in widths]


def _booktabs(body: pd.DataFrame, plain: pd.DataFrame, caption_text: str, label: str, note: str = "") -> str:
    """Every table's LaTeX (`body` already LaTeX, `plain` the same text unescaped, for its width): booktabs
    rules, a short caption, label and `note` (the details) under the table, floated at the top; labels
    left, numbers right, long text in paragraph columns; `table*` where wider than a column, scaled to the
    page where wider than that."""
    widths = column_chars(plain, cited=body.index.astype(str).str.contains(r"\\cite").any())
    text_columns = [w > TEXT_COLUMN_CHARS for w in (
        max([len(str(c))] + [len(str(v)) for v in plain[c]]) for c in plain.columns)]
    column_format = "l" + "".join(TEXT_COLUMN if wide else "r" for wide in text_columns)
    latex = body.style.to_latex(hrules=True, caption=latex_text(caption_text), label=label, position="t",
                                position_float="centering", column_format=column_format,
                                environment="table*" if sum(widths) > COLUMN_CHARS else None)
    latex = latex.replace("\\begin{tabular}", FIT_TO_WIDTH + "\n\\begin{tabular}", 1)
    latex = latex.replace("\\end{tabular}\n", "\\end{tabular}}\n", 1)
    if note:
        end = "\\end{table*}" if "\\begin{table*}" in latex else "\\end{table}"
        latex = latex.replace(end, f"\\par\\smallskip{{\\footnotesize {latex_text(note)}\\par}}\n{end}", 1)
    return latex


def table_sections(tables: list[SummaryTable], metric: str, recipes: dict[str, str], citations: dict,
                   name: str) -> tuple[list[str], list[str]]:
    """Markdown lines and LaTeX tables of `metric`, one per summary table."""
    md, tex = [], []
    for i, table in enumerate(tables):
        text = caption(table, metric, recipes)
        shown = labelled(cell_text(table, "**{}**", "{}" + DAGGER))
        md += [f"### {group_title(table)}", "", text, "", to_markdown(shown, table.layout.rows), ""]
        tex.append(to_latex(table, caption_head(table, metric) + ".", f"tab:{name}-{i + 1}", citations,
                            sentence(caption_note(table, recipes))))
    return md or ["No finished cells yet.\n"], tex


def terminal_summary(tables: list[SummaryTable], metric: str) -> list[str]:
    """What `bench report` prints: each table of `metric` and its ranking under its title, what the marks mean
    said once; the captions, the other sections and the figures stay in the files."""
    if not tables:
        return ["No finished cells yet."]
    lines = [f"{METRIC_WORDS[metric].capitalize()}; {seeds_text(tables[0])}.", ""]
    for table in tables:
        lines += [f"### {group_title(table)}", "", to_markdown(labelled(cell_text(table, "**{}**", "{}" + DAGGER)),
                                                              table.layout.rows), ""]
        if table.layout.rows == "attack" and len(table.contenders()) > 1:
            lines += [to_markdown(ranking_table(table), "rank"), ""]
    marks = marks_text(tables[0])
    return lines + ([sentence(marks), ""] if marks else [])


# --- the ranking of attacks ----------------------------------------------------------------------
def rank_text(ranks: pd.Series) -> pd.Series:
    """A column of ranks as text: '2', '2=' where another row shares it, MISSING where there is none."""
    shared = ranks.duplicated(keep=False) & ranks.notna()
    text = pd.Series([MISSING if pd.isna(r) else f"{r:.0f}" for r in ranks], index=ranks.index, dtype=object)
    return text.where(~shared, text + "=")


def ranking_table(table: SummaryTable) -> pd.DataFrame:
    """The contenders' ranks (`SummaryTable.ranks`) per column as text, and their mean rank."""
    ranks = table.ranks()
    text = pd.DataFrame({i: rank_text(ranks.iloc[:, i]) for i in range(ranks.shape[1])})
    text.columns = index_labels(ranks.columns)
    text["mean rank"] = [MISSING if pd.isna(r) else f"{r:.2f}" for r in table.mean_ranks()]
    text.index = index_labels(ranks.index)
    return text


def ranking_caption(table: SummaryTable, metric: str) -> str:
    """What a rank is, on what, and where it could not be tested (there the means alone rank)."""
    return "; ".join(ranking_caption_parts(table, metric)) + "."


def ranking_caption_parts(table: SummaryTable, metric: str) -> list[str]:
    """`ranking_caption`'s head (what, on what) and its details, as a list."""
    columns = table.layout.columns.replace("_", " ")
    group = group_text(table)
    how = (f"1 + the number of attacks significantly below it ({TEST_WORDS} at {SIGNIFICANCE:g}, uncorrected, "
           f"from each cell's mean, std and seeds)" if table.tested() else "1 + the number of attacks with a lower mean")
    parts = [f"Rank of each attack by {METRIC_WORDS[metric]} under each {columns}" + (f", {group}" if group else ""),
             f"{how}, = after a rank another attack shares",
             f"mean rank over the {columns}s{baseline_aside(table)}",
             one_seed_text(table, "ranked by mean alone")]
    return [p for p in parts if p]


def ranking_section(tables: list[SummaryTable], metric: str, name: str) -> tuple[list[str], list[str]]:
    """Markdown lines and LaTeX tables of the attacks' ranks, one per summary table with two or more attacks
    as rows (the baseline aside); none where there is no such table."""
    ranked = [t for t in tables if t.layout.rows == "attack" and len(t.contenders()) > 1]
    if not ranked:
        return [], []
    md, tex = ["### Ranking of attacks", ""], []
    for i, table in enumerate(ranked):
        text, frame = ranking_caption(table, metric), ranking_table(table)
        md += [f"#### {group_title(table)}", "", text, "", to_markdown(frame, "attack"), ""]
        head, *details = ranking_caption_parts(table, metric)
        tex.append(frame_to_latex(frame, head + ".", f"tab:{name}-rank-{i + 1}", sentence("; ".join(details))))
    return md, tex


RATIO_NOTE = ("Accuracy against the poisoned fraction of the training set: each attack's poison, made for the whole "
              "set, on a stratified, seeded part of it, the rest clean. The clean baseline poisons nothing: its one "
              "cell stands under every ratio.")


def ratio_section(tables: list[SummaryTable], metric: str, recipes: dict[str, str], citations: dict,
                  name: str) -> tuple[list[str], list[str]]:
    """Markdown lines and LaTeX tables of `tables.ratio_tables` (none where nothing is partially poisoned)."""
    if not tables:
        return [], []
    md, tex = table_sections(tables, metric, recipes, citations, f"{name}-ratio")
    return ["### Partial poisoning", "", RATIO_NOTE, "", *md], tex


# --- the MI analysis -----------------------------------------------------------------------------
def analysis_table(cells: pd.DataFrame) -> pd.DataFrame:
    """The MI-UE chain per (attack, arch) of `tables.analysis_cells`: accuracy, the MI estimates, covariance
    and cosine, as text."""
    columns = {"test_acc_last": ("test acc. (%)", 2), "mi_cca": ("MI CCA (nats)", 3),
               "mi_gaussian": ("MI Gaussian (nats)", 3), "mi_ksg": ("MI KSG (nats)", 3),
               "cond_cov_ratio": ("cond. cov. ratio", 3), "intra_class_cosine": ("intra-class cosine", 3)}
    columns = {metric: spec for metric, spec in columns.items() if cells[metric].notna().any()}
    # Rows name the attack and arch, and each other factor that varies (the smoke grid's defenses).
    varying = [f for f in ("defense", "dataset", "recipe") if cells[f].nunique() > 1]
    labels, varying = row_labels(cells, ["arch"], varying)
    if "mi_setup" in cells and cells.mi_setup.nunique() > 1:  # records measured differently: say which is which
        numbers = {setup: i + 1 for i, setup in enumerate(dict.fromkeys(cells.mi_setup))}
        labels = [f"{label} / setup {numbers[setup]}" for label, setup in zip(labels, cells.mi_setup)]
    index = pd.Index(labels, name=" / ".join(["attack", "arch", *varying]))
    return pd.DataFrame({title: mean_std(cells[metric], cells[f"{metric}_std"], digits).to_numpy()
                         for metric, (title, digits) in columns.items()}, index=index)


def setup_differences(setups: Iterable[str]) -> str:
    """'n_images 200.0 / 400.0, layer None / features': the fields where MI setups (`tables.mi_setup`) disagree."""
    parsed = [json.loads(s) for s in dict.fromkeys(setups)]
    differing = [k for k in parsed[0] if len({json.dumps(p.get(k)) for p in parsed}) > 1]
    return ", ".join(f"{k} {' / '.join(str(p.get(k)) for p in parsed)}" for k in differing)


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


MI_GROUPS = ["dataset", "recipe", "defense"]  # one MI table (and one set of MI figures) per value of these
MI_HEAD = "Mutual information between clean and poisoned features (nats), with the chain it explains"


def mi_section(cells: pd.DataFrame, calibration: pd.DataFrame, name: str) -> tuple[list[str], list[str]]:
    """Markdown lines and the LaTeX tables of the MI analysis (`tables.analysis_cells`), one per dataset, recipe
    and defense (a table of every defense's rows would not fit a page), with a summary of the estimators'
    calibration at the records' settings."""
    if cells.empty:
        return [], []
    parts = list(cells.groupby(MI_GROUPS, sort=False))
    md, tex = ["### Mutual information (MI-UE analysis)", "", MI_CAPTION, ""], []
    for i, (key, part) in enumerate(parts):
        table = analysis_table(part)
        where = ", ".join(f"{factor} {value}" for factor, value in zip(MI_GROUPS, key))
        if len(parts) > 1:
            md += [f"#### {where}", ""]
        md += [to_markdown(table, table.index.name), ""]
        tex.append(frame_to_latex(table, f"{MI_HEAD}; {where}.", f"tab:{name}-mi" + (f"-{i + 1}" if len(parts) > 1 else ""),
                                  MI_CAPTION))
    # The calibration's rows (one per estimator, case, dims and rho) stay in <name>_mi_calibration.csv;
    # the Markdown keeps its summary.
    md += [calibration_summary(calibration) + f" Every case: `{name}_mi_calibration.csv`.", ""]
    return md, tex


# --- robust accuracy -----------------------------------------------------------------------------
def robust_setup_text(setup: str) -> str:
    """A `tables.robust_setup` in words: 'PGD-20 at Linf 8/255 in steps of 2/255 from a random start, fp32,
    on 10,000 test images', and 'AutoAttack (standard: ...) at Linf 8/255, fp32, on 1,000 test images'
    where the records have it."""
    s = json.loads(setup)
    parts = []
    if s.get("robust_steps") is not None:
        start = "from a random start" if s["robust_random_start"] else "from the clean image"
        parts.append(f"PGD-{s['robust_steps']} at Linf {value_text(s['robust_eps'])} in steps of "
                     f"{value_text(s['robust_step_size'])} {start}, {s['robust_precision']}, on "
                     f"{value_text(s['robust_images'])} test images")
    if s.get("autoattack_version") is not None:
        parts.append(f"AutoAttack ({s['autoattack_version']}: {AUTOATTACK_STANDARD}) at Linf "
                     f"{value_text(s['autoattack_eps'])}, {s['autoattack_precision']}, on "
                     f"{value_text(s['autoattack_images'])} test images")
    return " and ".join(parts)


def row_labels(cells: pd.DataFrame, shown: list[str], varying: list[str]) -> tuple[list[str], list[str]]:
    """Each row's label, 'attack (budget) / <shown> / <varying>', and the factors named after the
    attack; where the cells poison different parts of their sets, how much each poisons ('20%')."""
    factors = [*shown, *varying]
    labels = [" / ".join([attack_label(row.attack, row.budget), *(str(getattr(row, f)) for f in factors)])
              for row in cells.itertuples()]
    if cells.groupby(["poison_ratio", "poison_classes"]).ngroups > 1:  # partial poisoning: say how much
        factors.append("poisoned")
        labels = [f"{label} / {poisoned_label(row.poison_ratio, row.poison_classes)}"
                  for label, row in zip(labels, cells.itertuples())]
    return labels, factors[len(shown):]


def robust_table(cells: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Clean and robust test accuracy per attack (rows) and defense (columns: clean, PGD's robust and, where
    the records have it, AutoAttack's) of `tables.robust_cells`, as text; and the setups in words, numbered
    in the column labels where there are several."""
    setups = list(dict.fromkeys(cells.robust_setup))
    labels, varying = row_labels(cells, [], [f for f in ("arch", "dataset", "recipe") if cells[f].nunique() > 1])
    # Each measurement's column where some record has it: a grid may run PGD, AutoAttack or both.
    shown = [(metric, title) for metric, title in (("test_acc_last", "clean"), ("robust_acc", "robust"),
                                                   ("autoattack_acc", "AutoAttack"))
             if metric == "test_acc_last" or (metric in cells and cells[metric].notna().any())]
    texts = {metric: mean_std(cells[metric], cells[f"{metric}_std"]) for metric, _ in shown}
    rows: dict[str, dict[str, str]] = {}
    columns: dict[str, None] = {}
    for i, (label, row) in enumerate(zip(labels, cells.itertuples())):
        head = row.defense + (f" (setup {setups.index(row.robust_setup) + 1})" if len(setups) > 1 else "")
        for metric, title in shown:
            column = f"{head} {title} (%)"
            rows.setdefault(label, {})[column] = texts[metric].iloc[i]
            columns[column] = None
    # Rows and columns in the order they first appear: `cells` is in grid order, attack by attack.
    index = pd.Index(list(rows), name=" / ".join(["attack", *varying]))
    table = pd.DataFrame([[rows[label].get(c, MISSING) for c in columns] for label in rows], index=index,
                         columns=list(columns))
    return table, [robust_setup_text(setup) for setup in setups]


def robust_section(cells: pd.DataFrame, name: str) -> tuple[list[str], list[str]]:
    """Markdown lines and the LaTeX table of robust accuracy beside clean accuracy (`tables.robust_cells`)."""
    if cells.empty:
        return [], []
    table, setups = robust_table(cells)
    where = (setups[0] if len(setups) == 1
             else "; ".join(f"setup {i + 1}: {text}" for i, text in enumerate(setups)))
    text = ("Robust test accuracy (%) of each trained victim under " + where + " (bench.robust), beside its clean "
            "test accuracy (%, last epoch, on every test image of the cell); an image counts as robust when it is "
            "classified correctly both as it is and attacked; mean ± std over seeds.")
    if "autoattack_acc" in cells and cells.autoattack_acc.notna().any():
        text += (" Every attack's robust accuracy bounds the true one from above; PGD's is the looser bound, "
                 "AutoAttack's is expected at or below it on the same images.")
    md = ["### Robust accuracy", "", text, "", to_markdown(table, table.index.name), ""]
    return md, [frame_to_latex(table, "Robust beside clean test accuracy (%).", f"tab:{name}-robust", text)]


# --- efficacy against effort ----------------------------------------------------------------------
EFFORT_NOTE = ("The metric (mean ± std over seeds) of each attack at each of its generation "
               "budgets: forward-and-backward passes of its surrogate per training image (`Attack.effort`), their "
               "share of the official settings' passes on CIFAR-10's 50,000 images (one round's for an attack a "
               "stop rule ends, marked 'per round'), and the poison's generation seconds (mean over seeds, as "
               "recorded where it was made).")


def effort_table(cells: pd.DataFrame, metric: str = "test_acc_last") -> pd.DataFrame:
    """`tables.effort_cells` as text, one row per attack and group (the groups named where there are several)."""
    varying = [f for f in ("dataset", "arch", "recipe", "defense") if cells[f].nunique() > 1]
    rows = []
    for row in cells.itertuples():
        label = " / ".join([attack_label(row.attack, row.budget), *(str(getattr(row, f)) for f in varying)])
        per = " per round" if row.per == "round" else ""
        rows.append({"attack": label, "plugin": row.attack_plugin,
                     "passes per image": MISSING if row.baseline else f"{row.passes:.1f}{per}",
                     "share of official": MISSING if row.baseline else f"{100 * row.share:.1f}%{per}",
                     "generation (s)": MISSING if row.baseline else f"{row.generate_s:.1f}",
                     METRIC_WORDS[metric]: mean_std(pd.Series([row.mean]), pd.Series([row.std]))[0],
                     "seeds": row.seeds})
    return pd.DataFrame(rows).set_index("attack")


def effort_section(cells: pd.DataFrame, name: str, metric: str = "test_acc_last") -> tuple[list[str], list[str]]:
    """Markdown lines and the LaTeX table of `metric` against effort (none where no plugin has two budgets)."""
    if cells.empty:
        return [], []
    table = effort_table(cells, metric)
    md = ["### Efficacy against effort", "", EFFORT_NOTE, "", to_markdown(table, table.index.name), ""]
    return md, [frame_to_latex(table, "Efficacy against generation effort.", f"tab:{name}-effort", EFFORT_NOTE)]


# --- beside the published numbers ----------------------------------------------------------------
def source_recipe_text(recipe: dict) -> str:
    """A source's recipe in words: 'cifar10 (train all, test all), resnet18, 60 epochs of sgd (lr 0.1, ...)'."""
    if not recipe:
        return "not stated"
    described = {"dataset", "train_size", "test_size", "arch", "epochs", "optimizer"}
    head = [recipe.get("dataset", "dataset not stated")]
    sizes = [f"{k.split('_')[0]} {value_text(recipe[k])}" for k in ("train_size", "test_size") if k in recipe]
    head[0] += f" ({', '.join(sizes)})" if sizes else ""
    head.append(recipe.get("arch", "architecture not stated"))
    training = (f"{recipe['epochs']} epochs" if "epochs" in recipe else "epochs not stated") + \
        (f" of {recipe['optimizer']}" if "optimizer" in recipe else "")
    rest = [f"{k.replace('_', ' ')} {value_text(v)}" for k, v in recipe.items() if k not in described]
    return ", ".join(head + [training + (f" ({', '.join(rest)})" if rest else "")])


def _shared_reasons(part: pd.DataFrame) -> list[str]:
    """The phrases of `differs` that every row of `part` has, in the first row's order."""
    split = [set(text.split("; ")) if text else set() for text in part.differs]
    common = set.intersection(*split) if split else set()
    first = part.differs.iloc[0].split("; ") if len(part) and part.differs.iloc[0] else []
    return [reason for reason in first if reason in common]


def comparison_text(part: pd.DataFrame, shared: list[str], bold: str = "**{}**") -> pd.DataFrame:
    """One source's rows of `tables.compare_published` as text: our cell, the source's, both numbers, the
    difference (`bold` where beyond the tolerance; MISSING where not comparable) and what else differs."""
    setups = part.arch + ", " + part.recipe + ", " + part.dataset
    ours_cell = [f"{attack_label(a, b)} / {d}" for a, b, d in zip(part.attack, part.budget, part.defense)]
    if setups.nunique() > 1:
        ours_cell = [f"{cell} / {setup}" for cell, setup in zip(ours_cell, setups)]
    delta = part.delta.map("{:+.2f}".format).where(part.comparable, MISSING)
    delta = delta.where(~part.beyond_tolerance, delta.map(bold.format))
    published = part.published.map("{:.2f}".format).where(~part.unverified, part.published.map("{:.2f} (unverified)".format))
    shared_set = set(shared)
    rest = ["; ".join(r for r in text.split("; ") if r not in shared_set) if text else "" for text in part.differs]
    seeds = part.seeds.map(lambda n: f"{n} seed" + ("s" if n > 1 else ""))
    return pd.DataFrame({"source cell": (part.source_attack + " / " + part.source_defense).to_numpy(),
                         "ours (%)": (mean_std(part.ours, part.ours_std) + ", " + seeds).to_numpy(),
                         "published (%)": published.to_numpy(), "difference (points)": delta.to_numpy(),
                         "also differs": rest}, index=pd.Index(ours_cell, name="our cell"))


def comparison_section(frame: pd.DataFrame, sources, tolerance: float, unmatched: dict[str, list[str]],
                       name: str) -> tuple[list[str], list[str]]:
    """Markdown lines and LaTeX tables of `tables.compare_published`'s frame, a table per source; a source's
    differences shared by every row are said once, above its table."""
    md = ["### Beside the published numbers", "",
          f"Each of our cells (mean over seeds) beside the source's number for the same attack and defense, and "
          f"the difference (ours - published) where the cell is comparable: the data, victim, training recipe, "
          f"budget and defense settings the source states are ours too. Differences beyond ±{tolerance:g} points "
          f"are bold (--tolerance). Where anything differs no difference is shown, only what differs.", ""]
    tex = []
    for source in sources:
        part = frame[frame.source == source.id]
        link = f" ({source.link})" if source.link else ""
        md += [f"#### {source.title}", "", f"{source.table}. {source.paper}{link}. Its recipe: "
               f"{source_recipe_text(source.recipe)}." + (f" {UNVERIFIED_TEXT}" if source.unverified else ""), ""]
        if part.empty:
            md += ["No cell of ours has an attack and a defense of this table.", ""]
            continue
        shared = _shared_reasons(part)
        comparable, beyond = int(part.comparable.sum()), int(part.beyond_tolerance.sum())
        if comparable == 0:
            summary = (f"Nothing here is comparable with this source ({len(part)} cell{'s' * (len(part) > 1)}): "
                       + (f"{'every cell' if len(part) > 1 else 'it'} differs in {'; '.join(shared)}" if shared
                          else "each differs as its row says")
                       + ". No differences are shown.")
        else:
            summary = (f"{comparable} of {len(part)} cells comparable, {beyond} beyond ±{tolerance:g} points"
                       + (f"; every cell differs in {'; '.join(shared)}" if shared else "") + ".")
        text = comparison_text(part, shared)
        md += [summary, "", to_markdown(text, text.index.name), ""]
        md += [f"- {note}" for note in source.notes] + ([""] if source.notes else [])
        latex = comparison_text(part, shared, bold="{}*")
        marked = f" Differences marked * are beyond ±{tolerance:g} points." if beyond else ""
        tex.append(frame_to_latex(latex, f"{source.title} beside ours.", f"tab:{name}-{source.id}", f"{summary}{marked}"))
    missing = [f"{kind}s {', '.join(names)}" for kind, names in unmatched.items() if names]
    if missing:
        md += [f"No table compared here has a number for our {' or '.join(missing)}.", ""]
    return md, tex

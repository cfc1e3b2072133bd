"""Tables, captions, citations and the `bench report` command, on a small stored result set."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, replace

import pandas as pd
import pytest
from click.testing import CliRunner

import stored_results as sr
from bench.citations import BIBTEX, Citation, citation, plugin_citation
from bench.cli import main
from bench.config import ConfigError
from bench.registry import ATTACKS, DEFENSES
from bench.report import (TableLayout, caption, cell_text, index_labels, parse_formats, ranking_caption,
                          ranking_section, ranking_table, summary_tables, tidy, to_latex, write_report)
from bench.report.render import factor_label


def tables_only(stored, out, **kwargs):
    store, records, grid = stored
    return write_report(records, out, "t", grid.attacks, grid.defenses, arch_order=grid.archs, store=store,
                        formats=("latex", "csv", "md"), **kwargs)


def test_tidy_has_one_row_per_finished_cell_and_metric(stored):
    _, records, _ = stored
    df = tidy(records)
    cells = len(sr.ATTACKS_) * len(sr.DEFENSES_) * len(sr.ARCHS_) * len(sr.SEEDS)  # the failed record is left out
    analysed = cells // len(sr.DEFENSES_)
    assert len(df) == cells * 3 + analysed * 6  # 3 accuracies; 3 MI estimates, covariance trace and ratio, cosine
    assert df.cell_id.nunique() == cells
    row = df[(df.attack == "ops") & (df.defense == "jpeg") & (df.arch == "vgg11") & (df.seed == 1) & (df.metric == "test_acc_last")]
    assert row.value.item() == pytest.approx(sr.accuracy("ops", "jpeg", "vgg11", 1)) and row.unit.item() == "%"
    assert set(df[df.metric == "mi_gaussian"].unit) == {"nats"}
    assert set(df[df.attack == "ops"].budget) == {"L0 1 px"} and set(df[df.attack == "random_noise"].budget) == {"Linf 8/255"}


def test_early_stop_accuracy_is_a_metric_of_the_cells_that_have_it_only(stored):
    _, records, _ = stored
    plain = [r for r in records if r.done and r.spec["defense"] == "none"]
    stopped = [replace(r, cell_id="e" + r.cell_id[1:], spec={**r.spec, "defense": "early_stop", "defense_config": {}},
                       metrics={**r.metrics, "test_acc_early_stop": r.metrics["test_acc_last"] - 0.01}) for r in plain]
    df = tidy(plain + stopped)
    early = df[df.metric == "test_acc_early_stop"]
    assert set(early.defense) == {"early_stop"} and len(early) == len(stopped)
    assert early.value.tolist() == pytest.approx([100 * r.metrics["test_acc_early_stop"] for r in stopped])
    tables = summary_tables(df, "test_acc_early_stop", TableLayout(), {})
    assert tables and all(list(t.mean.columns) == ["early_stop"] for t in tables)


def test_cells_are_mean_and_std_over_seeds_with_the_significantly_lowest_attack_in_bold(stored):
    _, records, grid = stored
    tables = summary_tables(tidy(records), "test_acc_last", TableLayout(),
                            {"attack": grid.attacks, "defense": grid.defenses, "arch": grid.archs})
    assert [t.group["arch"] for t in tables] == list(sr.ARCHS_)  # the grid's order, one table per arch
    table = tables[0]
    # The attack is keyed by its name and its budget, two levels; the labels join them.
    assert list(table.mean.index) == [("clean", ""), ("random_noise", "Linf 8/255"), ("ops", "L0 1 px")]
    assert index_labels(table.mean.index) == ["clean", "random_noise (Linf 8/255)", "ops (L0 1 px)"]
    assert list(table.mean.columns) == ["none", "jpeg"]
    text = cell_text(table, "**{}**", "{}†")
    a, b = sr.accuracy("ops", "none", "resnet18", 0), sr.accuracy("ops", "none", "resnet18", 1)
    # 50 points apart, std sqrt(2) each over two seeds: Welch's one-sided p is far below 0.05.
    assert text.at[("ops", "L0 1 px"), "none"] == f"**{(a + b) / 2:.2f} ± {sr.sample_std(a, b):.2f}**"
    # Under jpeg the clean baseline has the lowest accuracy, yet random_noise (the lowest attack) is bold.
    assert not text.at[("clean", ""), "jpeg"].startswith("**")
    assert text.at[("random_noise", "Linf 8/255"), "jpeg"].startswith("**")
    marks = table.marks()
    assert (marks == "best").to_numpy().sum() == 2 and not (marks == "tied").to_numpy().any()


def test_any_pivot_the_user_names(stored):
    _, records, grid = stored
    tables = summary_tables(tidy(records), "test_acc_best", TableLayout(rows="arch", columns="attack"),
                            {"attack": grid.attacks, "defense": grid.defenses, "arch": grid.archs})
    assert [t.group["defense"] for t in tables] == ["none", "jpeg"]  # one table per defense now
    table = tables[0]
    assert list(table.mean.index) == list(sr.ARCHS_)
    expected = sr.BASE["random_noise", "none"] - sr.DEPTH["vgg11"] / 10 + 2  # best = last + 2 in the fixture
    assert table.mean.at["vgg11", ("random_noise", "Linf 8/255")] == pytest.approx(expected)


def test_bad_layout_format_and_query_name_the_option_and_the_choices(stored, tmp_path):
    with pytest.raises(ValueError, match=r"--rows: 'model' is not a factor; allowed: dataset, arch, recipe, attack, defense"):
        TableLayout(rows="model")
    with pytest.raises(ValueError, match="--rows and --columns must differ"):
        TableLayout(rows="arch", columns="arch")
    with pytest.raises(ValueError, match=r"--format: unknown format 'pdf'; allowed: latex, csv, md, fig"):
        parse_formats("latex,pdf")
    store, records, grid = stored
    with pytest.raises(ValueError, match="--curves: cannot evaluate"):
        write_report(records, tmp_path / "r", "t", formats="fig", curves="attack ==", store=store)


def test_caption_states_recipe_budgets_and_seeds(stored, tmp_path):
    report = tables_only(stored, tmp_path / "r")
    caption = report.markdown.split("\n")[2]
    assert "clean test accuracy (%, last epoch)".capitalize() in caption and "arch ResNet-18" in caption
    assert "cpu_smoke* (preset cpu_smoke, changed by the grid): 3 epochs of SGD (lr 0.05, momentum 0.9, weight decay 0.0005, batch 128, cosine schedule)" in caption
    assert "budgets: Random noise Linf 8/255, OPS L0 1 px" in caption
    assert "mean ± std over 2 seeds;" in caption and "(n=" not in caption
    assert ("bold: lowest (clean baseline aside), and below every other attack by Welch's one-sided t-test at 0.05; "
            "†: not significantly above the lowest." in caption)


def tidy_rows(cells, metric="test_acc_last"):
    """A tidy frame of one value per (attack, budget, arch, defense, seed), everything else fixed."""
    return pd.DataFrame([{"cell_id": "-".join(map(str, c)), "grid": "g", "dataset": "d", "arch": arch, "recipe": "r",
                          "attack": attack, "budget": budget, "defense": defense, "seed": seed, "metric": metric,
                          "value": value, "unit": "%"} for c in cells for attack, budget, arch, defense, seed, value in [c]])


def test_caption_counts_seeds_only_where_a_cell_has_a_value():
    df = tidy_rows([("em", "", "a", d, s, 50.0 + s) for d in ("none", "jpeg") for s in (0, 1)]
                   + [("ops", "", "a", "none", s, 40.0 + s) for s in (0, 1)])  # ops under jpeg is missing
    (table,) = summary_tables(df)
    assert cell_text(table).at[("ops", ""), "jpeg"] == "–"
    assert "mean ± std over 2 seeds;" in caption(table, "test_acc_last", {})


def test_caption_names_each_budget_of_an_attack_in_its_table():
    df = tidy_rows([("em", "Linf 8/255", "a", "none", 0, 50.0), ("em", "Linf 16/255", "a", "none", 0, 40.0),
                    ("em", "Linf 8/255", "b", "none", 0, 50.0), ("ops", "L0 1 px", "a", "none", 0, 30.0)])
    tables = summary_tables(df, orders={"arch": ["a", "b"]})
    assert "budgets: em Linf 8/255 and Linf 16/255, ops L0 1 px;" in caption(tables[0], "test_acc_last", {})
    assert "budgets: em Linf 8/255;" in caption(tables[1], "test_acc_last", {})


def test_recipes_as_rows_or_columns_are_described_in_the_caption():
    df = tidy_rows([("em", "Linf 8/255", "a", "none", 0, 50.0)])
    for layout in (TableLayout(rows="recipe", columns="attack"), TableLayout(rows="attack", columns="recipe")):
        (table,) = summary_tables(df, layout=layout)
        assert "recipe r: 3 epochs of SGD;" in caption(table, "test_acc_last", {"r": "r: 3 epochs of SGD"})


def test_tables_grouped_by_attack_follow_the_grid_order():
    df = tidy_rows([(a, b, arch, "none", 0, 50.0) for a, b in (("em", "Linf 8/255"), ("ops", "L0 1 px"))
                    for arch in ("a", "b")])
    tables = summary_tables(df, layout=TableLayout(rows="arch", columns="defense"), orders={"attack": ["ops", "em"]})
    assert [t.group["attack"] for t in tables] == [("ops", "L0 1 px"), ("em", "Linf 8/255")]
    assert [factor_label("attack", t.group["attack"]) for t in tables] == ["ops (L0 1 px)", "em (Linf 8/255)"]


# --- significance: marks and ranks -----------------------------------------------------------------
def seeded(values: dict) -> pd.DataFrame:
    """A tidy frame of {(attack, defense): [a value per seed]}, budgets empty, everything else fixed."""
    return tidy_rows([(attack, "", "a", defense, seed, value) for (attack, defense), seeds in values.items()
                      for seed, value in enumerate(seeds)])


def marked(values: dict):
    """The one summary table of `values`, and its cells as the Markdown shows them."""
    (table,) = summary_tables(seeded(values), orders={"attack": ["clean", "em", "tap", "rem"]})
    return table, cell_text(table, "**{}**", "{}†")


def spread(mean: float, std: float) -> list[float]:
    """Three seeds whose mean and sample std are `mean` and `std`."""
    return [mean - std, mean, mean + std]


# Under none, em lies far below the others with a small spread; under jpeg em and tap overlap
# (25.35 ± 7.85 against 30 ± 8) and rem lies clearly above both.
SEPARATED = {("clean", "none"): spread(90, 1), ("em", "none"): spread(10, 0.5), ("tap", "none"): spread(40, 1),
             ("rem", "none"): spread(60, 2)}
OVERLAPPING = {("clean", "jpeg"): spread(20, 1), ("em", "jpeg"): spread(25.35, 7.85), ("tap", "jpeg"): spread(30, 8),
               ("rem", "jpeg"): spread(71, 1)}


def test_the_lowest_far_below_the_rest_is_bold_and_nothing_carries_a_dagger():
    table, text = marked(SEPARATED)
    assert text.at[("em", ""), "none"] == "**10.00 ± 0.50**"
    assert text.at[("tap", ""), "none"] == "40.00 ± 1.00" and text.at[("rem", ""), "none"] == "60.00 ± 2.00"
    assert not text.map(lambda t: "†" in t).to_numpy().any()
    assert list(table.marks()["none"]) == ["", "best", "", ""]
    assert "mean ± std over 3 seeds;" in caption(table, "test_acc_last", {})


def test_overlapping_spreads_share_a_dagger_and_nothing_is_bold():
    from scipy.stats import ttest_ind

    table, text = marked(OVERLAPPING)
    # The test on the seeds' values agrees: em is not significantly below tap, and is below rem.
    assert ttest_ind(spread(25.35, 7.85), spread(30, 8), equal_var=False, alternative="less").pvalue > 0.05
    assert ttest_ind(spread(25.35, 7.85), spread(71, 1), equal_var=False, alternative="less").pvalue < 0.05
    assert text.at[("em", ""), "jpeg"] == "25.35 ± 7.85†" and text.at[("tap", ""), "jpeg"] == "30.00 ± 8.00†"
    assert text.at[("rem", ""), "jpeg"] == "71.00 ± 1.00"  # clearly above the tied pair: not marked
    assert text.at[("clean", ""), "jpeg"] == "20.00 ± 1.00"  # the lowest of all, but a baseline
    assert not text.map(lambda t: t.startswith("**")).to_numpy().any()


def test_one_seed_marks_nothing_and_the_caption_says_why():
    table, text = marked({("clean", "none"): [90.0], ("em", "none"): [10.0], ("tap", "none"): [40.0]})
    assert text.at[("em", ""), "none"] == "10.00" and not (table.marks() != "").to_numpy().any()
    assert "; one seed: no test, nothing marked." in caption(table, "test_acc_last", {})
    # One attack of one seed in a column of three-seed cells: that column is not tested, the other is.
    table, text = marked({**SEPARATED, ("em", "jpeg"): [10.0], ("tap", "jpeg"): spread(40, 1),
                          ("rem", "jpeg"): spread(60, 1)})
    assert text.at[("em", ""), "jpeg"] == "10.00 (n=1)" and text.at[("em", ""), "none"].startswith("**")
    assert not (table.marks()["jpeg"] != "").any()
    text_of = caption(table, "test_acc_last", {})
    assert "mean ± std over 3 seeds; (n=k): a cell over k seeds;" in text_of
    assert text_of.endswith("; a cell of one seed under jpeg: no test there, nothing marked.")


def test_a_cell_over_another_number_of_seeds_shows_its_n():
    table, text = marked({**SEPARATED, ("tap", "none"): [41.2 - 0.8 / 2 ** 0.5, 41.2 + 0.8 / 2 ** 0.5]})
    assert text.at[("tap", ""), "none"] == "41.20 ± 0.80 (n=2)" and text.at[("rem", ""), "none"] == "60.00 ± 2.00"


def test_degenerate_columns_neither_crash_nor_mislead():
    table, text = marked({("em", "flat"): [5.0, 5.0, 5.0], ("tap", "flat"): [6.0, 6.0, 6.0],
                          ("em", "same"): [5.0, 5.0, 5.0], ("tap", "same"): [5.0, 5.0, 5.0],
                          ("tap", "gap"): spread(40, 1), ("rem", "gap"): spread(60, 1),
                          ("tap", "alone"): spread(40, 1)})
    marks = table.marks()
    assert list(marks.index) == [("em", ""), ("tap", ""), ("rem", "")]
    assert list(marks["flat"]) == ["best", "", ""]  # no spread on either side, different means: separated
    assert list(marks["same"]) == ["tied", "tied", ""]  # identical values: not separated
    assert list(marks["gap"]) == ["", "best", ""] and text.at[("em", ""), "gap"] == "–"  # no record: no contender
    assert list(marks["alone"]) == ["", "best", ""]  # no other attack to be below, as the ratio tables have


def test_the_ranking_counts_the_attacks_significantly_below_and_shows_ties():
    table, _ = marked({**SEPARATED, **OVERLAPPING})
    ranks = ranking_table(table)
    assert list(ranks.index) == ["em", "tap", "rem"]  # the baseline aside
    assert list(ranks.columns) == ["jpeg", "none", "mean rank"]
    assert list(ranks["none"]) == ["1", "2", "3"]
    assert list(ranks["jpeg"]) == ["1=", "1=", "3"]
    assert list(ranks["mean rank"]) == ["1.00", "1.50", "3.00"]
    assert "significantly below it (Welch's one-sided t-test at 0.05, uncorrected" in ranking_caption(table, "test_acc_last")
    md, tex = ranking_section([table], "test_acc_last", "x")
    assert md[0] == "### Ranking of attacks" and "| tap | 1= | 2 | 1.50 |" in "\n".join(md)
    assert len(tex) == 1 and "tap & 1= & 2 & 1.50" in tex[0] and "\\label{tab:x-rank-1}" in tex[0]


def test_with_one_seed_the_ranking_is_by_mean_and_says_no_test_was_possible():
    table, _ = marked({("clean", "none"): [90.0], ("em", "none"): [10.0], ("tap", "none"): [40.0], ("rem", "none"): [40.0]})
    assert list(ranking_table(table)["none"]) == ["1", "2=", "2="]
    text = ranking_caption(table, "test_acc_last")
    assert "1 + the number of attacks with a lower mean" in text and text.endswith("one seed: no test, ranked by mean alone.")


def test_latex_is_bold_only_where_the_test_separates_and_daggers_the_ties():
    table, _ = marked({**SEPARATED, **OVERLAPPING})
    tex = to_latex(table, caption(table, "test_acc_last", {}), "tab:x", {})
    assert re.findall(r"\\textbf\{([^}]*)\}", tex) == ["10.00 $\\pm$ 0.50"]
    assert "em & 25.35 $\\pm$ 7.85$^\\dagger$ & \\textbf{10.00 $\\pm$ 0.50} \\\\" in tex
    assert "tap & 30.00 $\\pm$ 8.00$^\\dagger$ & 40.00 $\\pm$ 1.00 \\\\" in tex
    assert "rem & 71.00 $\\pm$ 1.00 & 60.00 $\\pm$ 2.00 \\\\" in tex
    assert "$^\\dagger$: not significantly above the lowest" in tex and "†" not in tex


def test_the_report_ranks_the_attacks_after_the_tables_in_markdown_and_latex(stored, tmp_path):
    report = tables_only(stored, tmp_path / "r")
    md, tex = report.markdown, report.paths["tex"].read_text()
    assert md.index("ResNet-18, cpu_smoke") < md.index("### Ranking of attacks") < md.index("### Mutual information")
    ranking = md[md.index("### Ranking of attacks"):]
    # Under none ops is 50 points below random_noise, under jpeg 10 points above: each is first once.
    assert "| attack | No defense | JPEG | mean rank |" in ranking
    assert "| Random noise (Linf 8/255) | 2 | 1 | 1.50 |" in ranking and "| OPS (L0 1 px) | 1 | 2 | 1.50 |" in ranking
    assert "| Clean |" not in ranking
    assert [f"tab:t-rank-{i}" in tex for i in (1, 2, 3)] == [True] * 3


def test_latex_cites_every_plugin_paper_and_writes_their_bib(stored, tmp_path):
    report = tables_only(stored, tmp_path / "r")
    tex, bib = report.paths["tex"].read_text(), report.paths["bib"].read_text()
    # 3 archs, their 3 rankings and the MI table (of the one defense with MI)
    assert tex.count("\\toprule") == 3 + 3 + 1 and "\\midrule" in tex and "\\bottomrule" in tex
    assert "Random noise ($\\ell_\\infty$ 8/255)~\\cite{huang2021unlearnable}" in tex
    assert "OPS ($\\ell_0$ 1 px)~\\cite{wu2023onepixel}" in tex and "JPEG~\\cite{liu2023image}" in tex
    assert re.search(r"\\textbf\{[\d.]+ \$\\pm\$ [\d.]+\}", tex)
    cited = {k for group in re.findall(r"\\cite\{([^}]*)\}", tex) for k in group.split(",")}
    in_bib = set(re.findall(r"@\w+\{([^,]+),", bib))
    assert cited == in_bib == {"huang2021unlearnable", "wu2023onepixel", "liu2023image"}


def test_a_report_on_plugins_no_longer_installed_renders_without_their_citations(stored, tmp_path, monkeypatch):
    store, records, grid = stored
    gone = {"ops": "gone_attack", "jpeg": "gone_defense"}
    assert not set(gone.values()) & {*ATTACKS.names(), *DEFENSES.names()}
    moved = [replace(r, spec={**r.spec, "attack": gone.get(r.attack, r.attack), "defense": gone.get(r.defense, r.defense)})
             for r in records]
    looked_up = []

    def counted(kind, name):
        looked_up.append((kind, name))
        return citation(kind, name)

    monkeypatch.setattr("bench.report.write.citation", counted)
    report = write_report(moved, tmp_path / "r", "t", ["clean", "random_noise", "gone_attack"], ["none", "gone_defense"],
                          arch_order=grid.archs, store=store)
    # Each plugin's citation is looked up once for the whole report.
    assert sorted(looked_up) == sorted({(kind, n) for r in moved if r.done for kind, n in (("attack", r.attack),
                                                                                          ("defense", r.defense))})
    assert "| gone_attack (L0 1 px) | " in report.markdown and "| attack | No defense | gone_defense |" in report.markdown
    assert "| gone_attack (L0 1 px) / VGG-11 |" in report.markdown  # the MI table
    tex, bib = report.paths["tex"].read_text(), report.paths["bib"].read_text()
    assert "gone\\_attack ($\\ell_0$ 1 px) &" in tex and "& gone\\_defense \\\\" in tex  # shown, not cited
    assert "Random noise ($\\ell_\\infty$ 8/255)~\\cite{huang2021unlearnable}" in tex
    assert set(re.findall(r"@\w+\{([^,]+),", bib)) == {"huang2021unlearnable"}  # neither wu2023onepixel nor liu2023image
    for kind in ("accuracy_heatmap", "training_curves", "poison_gallery", "mi_by_depth", "mi_by_attack", "mi_chain"):
        assert report.paths[f"{kind}.png"].stat().st_size > 1000, kind
    assert report.notes == ()


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (.ci/run installs texlive-latex-base and -recommended)")
def test_generated_latex_compiles_with_pdflatex(stored, tmp_path):
    out = tmp_path / "r"
    tables_only(stored, out)
    # Beside the report, a table with daggers, a cell over other seeds and its ranking with shared ranks.
    table, _ = marked({**SEPARATED, **OVERLAPPING, ("tap", "none"): [39.5, 40.5]})
    (out / "ties.tex").write_text("\n".join([to_latex(table, caption(table, "test_acc_last", {}), "tab:ties", {}),
                                             *ranking_section([table], "test_acc_last", "ties")[1]]))
    (out / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n"
                                 "\\input{t.tex}\n\\input{ties.tex}\n\\bibliographystyle{plain}\n\\bibliography{t}\n"
                                 "\\end{document}\n")
    latex = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"]
    steps = [latex] + ([["bibtex", "doc"], latex, latex] if shutil.which("bibtex") else [])
    for step in steps:
        done = subprocess.run(step, cwd=out, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(step)} failed:\n{done.stdout[-3000:]}"
    assert (out / "doc.pdf").stat().st_size > 1000
    log = (out / "doc.log").read_text(errors="replace")
    if shutil.which("bibtex"):
        assert "undefined" not in log.lower(), "every \\cite must resolve through the written .bib"


def test_markdown_and_csv_hold_the_same_numbers(stored, tmp_path):
    report = tables_only(stored, tmp_path / "r")
    csv = pd.read_csv(report.paths["csv"])
    row = next(l for l in report.markdown.splitlines() if l.startswith("| OPS (L0 1 px) |"))
    shown = float(row.split("|")[3].strip().strip("*").split(" ± ")[0])  # the jpeg column of the resnet18 table
    cells = csv[(csv.attack_plugin == "ops") & (csv.defense_plugin == "jpeg") & (csv.arch_plugin == "resnet18") & (csv.metric == "test_acc_last")]
    assert shown == pytest.approx(cells.value.mean(), abs=0.005)


def test_mi_section_shows_the_chain_and_the_estimators_error(stored, tmp_path):
    report = tables_only(stored, tmp_path / "r")
    md = report.markdown
    assert "### Mutual information (MI-UE analysis)" in md
    value = (sr.mi("ops", "vgg11", 0) + sr.mi("ops", "vgg11", 1)) / 2
    assert re.search(rf"^\| OPS \(L0 1 px\) / VGG-11 \| [^|]+ \| {value:.3f} ± ", md, re.M)
    assert "Estimator error on correlated Gaussians with known MI (cca: largest |error|" in md
    calibration = pd.read_csv(report.paths["mi_calibration"])
    assert set(calibration.estimator) == {"cca", "gaussian", "ksg"} and set(calibration.dims) == {1, 4, 8}
    assert "With 8 shared dims under 200 louder ones (true MI 6.64 nats): cca " in md
    # the calibration's rows stay in the CSV; the Markdown (printed to the terminal) names the file
    assert "| estimator | case |" not in md and f"`{report.paths['mi_calibration'].name}`" in md


def test_mi_rows_name_the_defense_where_the_records_have_several(stored):
    from bench.report import analysis_cells, analysis_table

    _, records, grid = stored
    # As the smoke grid: the analysis on every defense's cells, not only on `none`.
    with_mi = next(r for r in records if r.analysis).analysis
    everywhere = [replace(r, analysis=with_mi) if r.done else r for r in records]
    table = analysis_table(analysis_cells(tidy(everywhere), {"attack": grid.attacks, "arch": grid.archs}))
    assert table.index.name == "attack / arch / defense"
    assert {"ops (L0 1 px) / vgg11 / none", "ops (L0 1 px) / vgg11 / jpeg"} <= set(table.index)
    assert table.index.is_unique


def test_the_report_skips_what_it_cannot_make_and_says_why(tmp_path):
    report = write_report([], tmp_path / "r", "empty", formats="md")
    assert "No finished cells yet." in report.markdown and set(report.paths) == {"md"}


@pytest.mark.parametrize("kind,registry", [("attack", ATTACKS), ("defense", DEFENSES)])
def test_every_registered_plugin_citation_resolves(kind, registry):
    for name in registry.names():
        found = citation(kind, name)
        assert set(found.keys) == set(found.entries)
        paper = registry.entry(name).paper
        assert bool(found.keys) == bool(paper), f"{name}: a paper needs a cite key, and only a paper"


@pytest.mark.parametrize("key", sorted(BIBTEX))
def test_bibtex_entries_are_complete(key):
    entry = BIBTEX[key]
    assert re.match(rf"@(inproceedings|article|incollection)\{{{key},", entry)
    for field in ("title", "author", "year"):
        assert re.search(rf"^\s+{field}\s*=\s*\{{.+\}},?$", entry, re.M), f"{key} has no {field}"
    assert re.search(r"^\s+(booktitle|journal)\s*=", entry, re.M), f"{key} names no venue"
    assert entry.count("{") == entry.count("}")


def test_third_party_plugins_cite_with_their_own_entry_or_not_at_all():
    @dataclass
    class OwnEntry:
        bibtex = "@misc{doe2030noise,\n  title = {Noise},\n  author = {Doe, Jane},\n  year = {2030}\n}"

    class NoCitation:
        pass

    class KnownKey:
        cite = "huang2021unlearnable"

    class UnknownKey:
        name = "mine"
        cite = "nobody2099"

    assert plugin_citation(OwnEntry) == Citation(("doe2030noise",), {"doe2030noise": OwnEntry.bibtex})
    assert plugin_citation(NoCitation) == Citation((), {})
    assert plugin_citation(KnownKey).entries == {"huang2021unlearnable": BIBTEX["huang2021unlearnable"]}
    with pytest.raises(ConfigError, match=r"mine\.cite: no BibTeX entry for 'nobody2099'"):
        plugin_citation(UnknownKey)
    assert citation("attack", "not_installed_here") == Citation((), {})
    assert citation("defense", "jpeg+at").keys == ("liu2023image", "madry2018towards")


def test_cli_writes_only_the_formats_asked_for(stored):
    store, _, _ = stored
    runner = CliRunner()
    done = runner.invoke(main, ["report", "--out", str(store.root), "--format", "md,csv", "--rows", "defense",
                                "--columns", "attack"])
    assert done.exit_code == 0, done.output
    written = sorted(p.name for p in (store.root / "reports").iterdir())
    assert written == ["all.csv", "all.md", "all_mi_calibration.csv"]
    # Without a grid there is no grid order: attacks sort by name.
    assert "| defense | Clean | OPS (L0 1 px) | Random noise (Linf 8/255) |" in done.output
    bad = runner.invoke(main, ["report", "--out", str(store.root), "--format", "latex,docx"])
    assert bad.exit_code != 0 and "--format: unknown format 'docx'; allowed: latex, csv, md, fig" in bad.output


# --- variants: one plugin in two columns under names of the grid's choosing ---------------------
RADII = {"attacks": ["clean", "ops"], "defenses": ["at", "at_4"], "archs": ["tiny_cnn"], "recipe": "cpu_smoke",
         "variants": {"at_4": {"plugin": "at", "eps": "4/255", "step_size": "0.8/255"}}}


def radii_records(grid) -> list:
    """A record per cell of a grid with AT at two radii, as the runner writes them: 60% under at, 40% under at_4."""
    from bench.records import CellResult

    records = []
    for cell in grid.cells():
        acc = 0.6 if cell.defense_config["eps"] > 5 / 255 else 0.4
        outcome = {"metrics": {"test_acc_last": acc, "test_acc_best": acc, "best_epoch": 1, "train_acc": 1.0},
                   "history": [], "poison": {"key": cell.poison_key, "norm": "l0" if cell.attack == "ops" else "linf",
                                             "budget": 1.0 if cell.attack == "ops" else 0.0}, "timings": {}}
        records.append(CellResult.finished(cell, grid.name, outcome, provenance={}, attempts=1, earlier_errors=[],
                                           wall_seconds=1.0))
    return records


def test_two_variants_of_one_plugin_are_two_columns_under_their_names_and_cite_its_paper(tmp_path):
    from bench.grid import parse_grid
    from bench.store import Store

    grid = parse_grid(RADII, "radii")
    store = Store(tmp_path / "results")
    for r in radii_records(grid):
        store.write_record(r)
    # What a record keeps: the plugin that ran, its whole config, and the grid's name for it.
    stored = {r.name("defense"): r for r in store.records() if r.attack == "ops"}
    assert stored["at_4"].spec["defense"] == "at" and stored["at_4"].spec["variants"] == {"defense": "at_4"}
    assert stored["at_4"].spec["defense_config"]["eps"] == pytest.approx(4 / 255) and "variants" not in stored["at"].spec
    # The report needs the records only, not the grid file.
    report = write_report(store.records(), tmp_path / "r", "radii", formats=("md", "csv", "latex"))
    assert "| attack | AT | at_4 |" in report.markdown
    # One seed and one attack beside the baseline: nothing to test, nothing marked.
    assert re.search(r"^\| OPS \(L0 1 px\) \| 60\.00 \| 40\.00 \|$", report.markdown, re.M), report.markdown
    tex, bib = report.paths["tex"].read_text(), report.paths["bib"].read_text()
    assert "AT~\\cite{madry2018towards} & at\\_4~\\cite{madry2018towards}" in tex
    assert re.findall(r"@\w+\{([^,]+),", bib) == ["madry2018towards", "wu2023onepixel"]  # each entry once
    csv = pd.read_csv(report.paths["csv"])
    assert set(zip(csv.defense, csv.defense_plugin)) == {("AT", "at"), ("at_4", "at")}


def test_a_report_of_a_grid_shows_the_grids_names_for_cells_run_under_others(tmp_path):
    from bench.grid import parse_grid
    from bench.store import Store

    store = Store(tmp_path / "results")
    for r in radii_records(parse_grid(RADII, "radii")):
        store.write_record(r)
    # The same experiments, the 4/255 column renamed: the records are its cells and show its name.
    renamed = tmp_path / "renamed.toml"
    renamed.write_text('attacks = ["clean", "ops"]\ndefenses = ["at", "at_half"]\narchs = ["tiny_cnn"]\n'
                       'recipe = "cpu_smoke"\n[variants.at_half]\nplugin = "at"\neps = "4/255"\nstep_size = "0.8/255"\n')
    done = CliRunner().invoke(main, ["report", "--grid", str(renamed), "--out", str(store.root), "--format", "md"])
    assert done.exit_code == 0, done.output
    assert "| attack | AT | at_half |" in done.output and "at_4" not in done.output


def test_records_under_one_name_with_other_settings_are_told_apart_not_averaged(tmp_path):
    """Two runs of tiny_cnn at two widths (two grids, or --set) are two rows, never one cell's seeds."""
    from bench.grid import parse_grid
    from bench.records import CellResult

    def runs(width: int, acc: float) -> list[CellResult]:
        grid = parse_grid({"attacks": ["clean"], "defenses": ["none"], "archs": ["tiny_cnn"], "recipe": "cpu_smoke",
                           "config": {"tiny_cnn": {"width": width}}}, f"w{width}")
        outcome = {"metrics": {"test_acc_last": acc, "test_acc_best": acc, "best_epoch": 1, "train_acc": 1.0},
                   "history": [], "poison": {"key": "k", "norm": "linf", "budget": 0.0}, "timings": {}}
        return [CellResult.finished(cell, grid.name, outcome, provenance={}, attempts=1, earlier_errors=[],
                                    wall_seconds=1.0) for cell in grid.cells()]

    both = runs(8, 0.30) + runs(16, 0.50)
    report = write_report(both, tmp_path / "r", "widths", formats=("md",), layout=TableLayout("arch", "defense"))
    assert re.search(r"^\| Tiny CNN \(width 8\) \| 30\.00 \|$", report.markdown, re.M), report.markdown
    assert re.search(r"^\| Tiny CNN \(width 16\) \| 50\.00 \|$", report.markdown, re.M)
    assert "one seed: no test, nothing marked." in report.markdown  # one seed each: not bold, and why
    assert "40.00" not in report.markdown, "the two widths are not averaged"
    # One width alone keeps its plain label, as every report did before.
    alone = write_report(runs(8, 0.30), tmp_path / "a", "w8", formats=("md",), layout=TableLayout("arch", "defense"))
    assert re.search(r"^\| Tiny CNN \| 30\.00 \|$", alone.markdown, re.M), alone.markdown


def effort_records(with_effort: bool = True):
    """Records of a grid with MI-UE at two budgets (variants) and TAP at one, beside clean: accuracy falls
    with the budget (made up), each poison with the effort and generation seconds it would record."""
    from bench.grid import parse_grid
    from bench.records import CellResult

    g = parse_grid({"attacks": ["clean", "miue", "miue_x3", "tap"], "defenses": ["none"], "archs": ["tiny_cnn"],
                    "seeds": [0, 1, 2], "recipe": "cpu_smoke", "data": {"name": "cifar10", "train_size": 200},
                    "config": {"miue": {"preset": "cpu", "epochs": 2, "steps": 5}, "tap": {"preset": "cpu"}},
                    "variants": {"miue_x3": {"plugin": "miue", "epochs": 6}}}, "effort")
    accuracy = {"clean": 45.0, "miue": 35.0, "miue_x3": 25.0, "tap": 30.0}
    seconds = {"clean": 0.0, "miue": 10.0, "miue_x3": 30.0, "tap": 12.0}
    records = []
    for cell in g.cells():
        name = cell.name("attack")
        attack = ATTACKS.create(cell.attack, cell.attack_config)
        acc = accuracy[name] + cell.seed - 1
        poison = {"key": cell.poison_key, "norm": "linf", "budget": 0.0 if name == "clean" else 8 / 255,
                  **({"effort": attack.effort(200)} if with_effort else {})}
        outcome = {"metrics": {"test_acc_last": acc / 100, "test_acc_best": acc / 100, "best_epoch": 12, "train_acc": 0.9},
                   "history": [], "poison": poison, "timings": {"poison_generate_s": seconds[name]}}
        records.append(CellResult.finished(cell, g.name, outcome, provenance={}, attempts=1, earlier_errors=[],
                                           wall_seconds=1.0))
    return records


def test_effort_cells_put_each_budget_of_a_varied_attack_beside_its_recorded_cost():
    from bench.report.tables import effort_cells

    cells = effort_cells(effort_records()).set_index("attack")
    # tap runs under one name only: no curve to draw; clean is the baseline.
    assert set(cells.index) == {"clean", "miue", "miue_x3"} and cells.baseline.to_dict()["clean"]
    assert cells.loc["miue", "passes"] == 2 * 6 and cells.loc["miue_x3", "passes"] == 6 * 6
    assert cells.loc["miue_x3", "share"] == pytest.approx(36 / 1100)
    assert cells.loc["miue_x3", "generate_s"] == 30.0 and cells.loc["miue_x3", "mean"] == pytest.approx(25.0)
    assert cells.loc["miue", "std"] == pytest.approx(1.0) and (cells.seeds == 3).all()
    assert effort_cells(effort_records(with_effort=False)).empty  # records without effort draw nothing


def test_the_report_writes_the_effort_table_and_figure(tmp_path):
    report = write_report(effort_records(), tmp_path, "e", formats=("md", "latex", "fig"))
    text = (tmp_path / "e.md").read_text()
    assert "### Efficacy against effort" in text
    assert re.search(r"\| miue_x3 \(Linf 8/255\) \| miue \| 36\.0 \| 3\.3% \| 30\.0 \| 25\.00 ± 1\.00 \| 3 \|", text)
    assert "tab:e-effort" in (tmp_path / "e.tex").read_text()
    assert report.paths["accuracy_by_effort.png"].stat().st_size > 0

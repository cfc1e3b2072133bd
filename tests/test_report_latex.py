"""Paper-ready artefacts: display names, LaTeX that fits a page, short captions with notes, and figures a
reader can tell apart (colours, markers, the heatmap's range, the MI ceiling as a reference line)."""
from __future__ import annotations

import re
import shutil
from dataclasses import replace
import subprocess

import numpy as np
import pandas as pd
import pytest

from bench.figures import COLOURS, MARKERS, AttackStyle, heat_range, mi_by_attack
from bench.registry import ARCHS, ATTACKS, DEFENSES, REGISTRIES
from bench.report import BASELINE_ATTACKS, write_report
from bench.report.render import COLUMN_CHARS, frame_to_latex, sentence
from bench.report.write import displayed, file_word


@pytest.fixture(scope="module")
def report(stored, tmp_path_factory):
    store, records, grid = stored
    return write_report(records, tmp_path_factory.mktemp("report"), "t", grid.attacks, grid.defenses,
                        arch_order=grid.archs, store=store)


# --- display names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,name", [(kind, name) for kind, registry in REGISTRIES.items()
                                       for name in registry.names() if not name.startswith("test_")])
def test_every_built_in_plugin_declares_its_display_name(kind, name):
    entry = REGISTRIES[kind].entry(name)
    if entry.origin:  # a plugin file or another package's entry point: its own business
        pytest.skip(f"{name} is not a built-in")
    assert entry.display and entry.display.strip() == entry.display, f"{kind} {name} declares no display name"
    assert REGISTRIES[kind].display(name) == entry.display


def test_display_names_are_the_papers_spelling_and_unique_per_kind():
    assert ATTACKS.display("miue") == "MI-UE" and DEFENSES.display("iss_gray") == "ISS-Gray"
    assert ARCHS.display("resnet18") == "ResNet-18" and ARCHS.display("vgg11") == "VGG-11"
    for registry in REGISTRIES.values():
        shown = [registry.display(n) for n in registry.names() if not n.startswith("test_")]
        assert len(shown) == len(set(shown)), f"two {registry.kind}s share a display name"
    # The baseline row is known by the name reports show, too.
    assert ATTACKS.display("clean") in BASELINE_ATTACKS


def test_a_composition_shows_its_parts_and_an_unknown_name_itself():
    assert DEFENSES.display("jpeg+cutout") == "JPEG + Cutout"
    assert DEFENSES.display("at_4") == "at_4"  # a variant: the grid's own name
    assert ATTACKS.display("no_such_attack") == "no_such_attack"


def test_register_refuses_an_empty_display_name():
    with pytest.raises(ValueError, match="display must be a non-empty string"):
        ATTACKS.register("x_blank", display=" ")


def test_records_are_shown_under_display_names_and_keep_the_plugin(stored, report):
    _, records, _ = stored
    shown = displayed(next(r for r in records if r.spec["attack"] == "ops" and r.done))
    assert shown.name("attack") == "OPS" and shown.spec["attack"] == "ops" and shown.name("arch") == ARCHS.display(shown.spec["arch"])
    md = report.markdown
    assert "| OPS (L0 1 px) |" in md and "| ops (L0 1 px) |" not in md
    assert "| attack | No defense | JPEG |" in md and "ResNet-18" in md
    csv = pd.read_csv(report.paths["csv"])
    assert set(csv.attack) == {"Clean", "Random noise", "OPS"} and set(csv.attack_plugin) == {"clean", "random_noise", "ops"}
    # The clean baseline is still aside: never bold, never ranked.
    assert not re.search(r"^\| Clean \| \*\*", md, re.M)


# --- LaTeX -------------------------------------------------------------------------------------------
def test_a_wide_table_floats_over_both_columns_and_shrinks_to_the_page():
    wide = pd.DataFrame({f"defense {i}": ["44.53 ± 1.36"] * 3 for i in range(6)},
                        index=pd.Index(["MI-UE (Linf 8/255)", "EM (Linf 8/255)", "TAP (Linf 8/255)"], name="attack"))
    tex = frame_to_latex(wide, "Short.", "tab:w", "Details of the table.")
    assert tex.startswith("\\begin{table*}") and tex.rstrip().endswith("\\end{table*}")
    assert "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n\\begin{tabular}" in tex
    assert "\\end{tabular}}" in tex
    # The caption is the short line; the details sit under the table.
    assert "\\caption{Short.}" in tex
    assert tex.index("\\end{tabular}") < tex.index("{\\footnotesize Details of the table.\\par}")


def test_a_narrow_table_stays_in_one_column():
    narrow = pd.DataFrame({"none": ["44.5"]}, index=pd.Index(["EM"], name="attack"))
    assert sum(len(s) + 2 for s in ("attack", "none")) < COLUMN_CHARS
    tex = frame_to_latex(narrow, "Short.", "tab:n")
    assert tex.startswith("\\begin{table}") and "table*" not in tex and "footnotesize" not in tex


def test_long_text_wraps_in_a_paragraph_column():
    frame = pd.DataFrame({"n": ["1"], "also differs": ["x" * 80]}, index=pd.Index(["a"], name="cell"))
    assert "{lrp{0.3\\linewidth}}" in frame_to_latex(frame, "Short.", "tab:p")


def test_captions_are_short_and_every_table_has_its_note(report):
    tex = report.paths["tex"].read_text()
    captions = re.findall(r"\\caption\{(.*)\}", tex)
    assert captions and all(len(c.split()) <= 25 for c in captions), max(captions, key=len)
    assert tex.count("\\begin{table") == tex.count("\\footnotesize")  # a note under every table

    
def test_the_mi_analysis_is_a_table_and_a_figure_per_defense(stored, tmp_path):
    store, records, grid = stored
    # As the smoke grid: the analysis on every defense's cells, not only on `none`.
    with_mi = next(r for r in records if r.analysis).analysis
    everywhere = [replace(r, analysis=with_mi) if r.done else r for r in records]
    report = write_report(everywhere, tmp_path, "t", grid.attacks, grid.defenses, arch_order=grid.archs,
                          formats=("latex", "md", "fig"))
    tex = report.paths["tex"].read_text()
    assert re.findall(r"\\label\{(tab:t-mi-\d)\}", tex) == ["tab:t-mi-1", "tab:t-mi-2"]
    assert "#### dataset" in report.markdown and ", defense JPEG" in report.markdown
    names = {p.stem for p in report.paths.values() if p.suffix == ".png"}
    assert {"mi_by_attack_no_defense", "mi_by_attack_jpeg", "mi_chain_jpeg", "mi_by_depth_jpeg"} <= names


def test_sentence_keeps_the_case_of_names():
    assert sentence("recipe em60; MI-UE at Linf 8/255") == "Recipe em60; MI-UE at Linf 8/255."


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (.ci/run installs texlive-latex-base and -recommended)")
def test_every_table_fits_the_page_of_a_two_column_paper(report):
    out = report.paths["tex"].parent
    (out / "paper.tex").write_text("\\documentclass[twocolumn]{article}\n\\usepackage{booktabs,graphicx}\n"
                                   "\\begin{document}\n\\input{t.tex}\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=out,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    log = (out / "paper.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)[:3]


# --- figures -----------------------------------------------------------------------------------------
def test_attacks_get_distinct_colours_and_markers():
    style = AttackStyle(tuple(f"a{i}" for i in range(len(COLOURS))))
    looks = [style(f"a{i}") for i in range(len(COLOURS))]
    assert len({look["color"] for look in looks}) == len(COLOURS)
    assert len({look["marker"] for look in looks[:len(MARKERS)]}) == min(len(MARKERS), len(COLOURS))


def test_the_heatmap_runs_over_its_own_values():
    assert heat_range(np.array([23.4, 31.0, 44.1, np.nan])) == (20.0, 45.0)
    assert heat_range(np.array([50.0, 50.0])) == (50.0, 55.0)
    assert heat_range(np.array([np.nan])) == (0.0, 100.0)


def test_the_mi_ceiling_of_the_clean_row_is_a_line_not_a_bar():
    cells = pd.DataFrame({"attack": ["Clean", "EM", "TAP"], "arch": ["Tiny CNN"] * 3, "mi_cca": [5.0, 1.0, 2.0],
                          "test_acc_last": [44.0, 28.0, 24.0], "baseline": [True, False, False]})
    fig = mi_by_attack(cells, AttackStyle(("Clean", "EM", "TAP")))
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # EM and TAP
    assert [t.get_text() for t in ax.get_xticklabels()] == ["EM", "TAP"]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == 5.0
    assert ax.get_ylim()[1] >= 5.0  # the ceiling stays in view


def test_figure_files_are_named_by_what_they_show(report):
    names = {p.stem for p in report.paths.values() if p.suffix == ".png"}
    assert {"accuracy_heatmap", "training_curves", "poison_gallery", "mi_by_attack", "mi_by_depth"} <= names
    assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in names)
    assert file_word("ISS-Gray") == "iss_gray" and file_word("cifar10 (2000)") == "cifar10_2000"


def test_the_terminal_summary_is_short_and_names_the_files(report):
    assert "Mutual information" not in report.summary and "Estimator error" not in report.summary
    assert "| OPS (L0 1 px) |" in report.summary
    files = report.files_text()
    assert f"report: {report.paths['md']}" in files and "figures (PDF and PNG): " in files
    assert len(files.splitlines()) <= 8

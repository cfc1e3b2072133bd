"""What goes into a paper, from stored records alone: tables, the MI analysis and figures.

- A tidy CSV: one row per finished cell and metric (accuracies in %, MI in nats).
- Tables (Markdown and booktabs LaTeX through pandas' Styler): attacks as rows and defenses as
  columns by default (`TableLayout` names any other pivot), one table per value of the remaining
  factors (dataset x architecture x recipe). A cell is the mean over seeds, +- std where there are
  several; the lowest accuracy of each column (the strongest attack, the clean baseline aside) is
  bold where Welch's one-sided t-test puts it below every other row, and where it does not, it and
  the rows not significantly above it carry a dagger. The caption states the recipe, the budgets,
  the number of seeds and the test; row and column labels `\\cite{}` each plugin's paper and
  `<name>.bib` holds the entries.
- A ranking of the attacks under each defense, per table with attacks as rows: 1 + the number of
  attacks significantly below, shared ranks marked `=`, and the mean rank.
- Where records carry the MI analysis (`bench.mi`), a table of the MI-UE chain per attack and
  architecture, and the estimators' error on correlated Gaussians at the same settings.
- Where records carry robust accuracy (`bench.robust`), a table of it beside clean accuracy, per
  attack and defense.
- With `compare` (`bench report --compare published`), each cell beside the published number for it
  (`bench.published`), the difference where the recipe is the source's, what differs where not.
- Where some cell poisoned part of its training set (`poison_ratio`), a table and a figure of each
  attack's accuracy against the ratio, the clean baseline under every ratio.
- Figures (`bench.figures`): accuracy heatmap, accuracy against the poison ratio, training curves,
  a gallery of poisons (from the store's poison cache and the dataset), and MI against depth.

Three modules, one job each: `tables` (records -> tidy frame -> summary tables and the MI cells, as
numbers; the attack keyed by its name and its budget), `render` (labels, captions, Markdown, LaTeX)
and `write` (`write_report`: looks the citations up once, runs the MI calibration, draws the figures,
writes the files).
"""
from bench.report.render import (DAGGER, MISSING, analysis_table, attack_label, caption, cell_text, comparison_section,
                                 index_labels, labelled, ranking_caption, ranking_section, ranking_table,
                                 recipe_description, to_latex, to_markdown)
from bench.report.tables import (ANALYSIS_METRICS, BASELINE_ATTACKS, FACTORS, METRICS, MI_METRICS, ROBUST_METRICS,
                                 SIGNIFICANCE, SummaryTable, TableLayout, analysis_cells, budget_label, compare_published,
                                 histories_frame, mi_setup, ratio_tables, recipe_label, robust_cells, robust_setup,
                                 summary_tables, tidy)
from bench.report.write import FORMATS, Report, gallery_images, parse_formats, write_report

__all__ = [
    "ANALYSIS_METRICS", "BASELINE_ATTACKS", "DAGGER", "FACTORS", "FORMATS", "METRICS", "MISSING", "MI_METRICS", "Report",
    "SIGNIFICANCE",
    "SummaryTable", "TableLayout", "analysis_cells", "analysis_table", "attack_label", "budget_label", "caption",
    "cell_text", "compare_published", "comparison_section", "gallery_images", "histories_frame", "index_labels", "labelled", "mi_setup", "parse_formats",
    "ranking_caption", "ranking_section", "ranking_table",
    "ROBUST_METRICS", "ratio_tables", "recipe_description", "recipe_label", "robust_cells", "robust_setup",
    "summary_tables", "tidy", "to_latex", "to_markdown", "write_report",
]

"""The published numbers as data (bench.published) and `bench report --compare`: the files hold the
numbers of the sources they cite, and say where they read them; cells of a matching recipe get
differences and flags, and cells of another recipe (the CPU grids) are called not comparable, with
the reasons and no differences."""
from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import stored_results as sr
from bench.cli import main
from bench.config import ConfigError
from bench.grid import load_grid, parse_grid
from bench.published import ALL, Budget, parse_source, select_sources, shipped_sources
from bench.registry import ATTACKS, DEFENSES
from bench.report import compare_published, write_report
from bench.store import Store
from test_references import forbidden_references

ROOT = Path(__file__).resolve().parents[1]
SOURCES = shipped_sources()

# Typed a second time, so that a slip in a data file shows here: clean test accuracy (%) per source ->
# row label -> column label. ISS's from the official README's table, EM's from the official
# QuickStart.ipynb, TAP's from the author's comment on the official repository's issue 1, CUDA's from
# the RSK paper's table (each file's read_from says where). APBench's are its paper's, which no file
# of lafeat/apbench prints to check them against.
ISS = {"clean data": (94.68, 92.41, 85.38), "EM": (21.05, 93.01, 81.50), "REM": (25.44, 92.84, 81.50),
       "TAP": (8.17, 9.11, 83.87), "LSP": (19.07, 82.47, 83.01), "OPS": (36.55, 42.44, 82.53),
       "AR": (13.28, 34.04, 85.15), "SEP": (3.85, 3.57, 84.37)}
APBENCH = {"EM": (20.78, 18.79, 22.28, 31.14, 37.94, 92.03, 80.72, 82.51),
           "REM": (17.47, 21.96, 26.22, 43.07, 58.60, 92.27, 85.44, 77.46),
           "TAP": (6.27, 9.88, 14.21, 15.46, 70.75, 11.01, 84.08, 79.92),
           "LSP": (13.06, 14.96, 17.69, 18.77, 53.86, 64.70, 80.14, 81.38),
           "OPS": (14.69, 52.98, 64.72, 49.27, 37.32, 19.88, 78.48, 14.95)}
EXPECTED = {
    "iss2023": {row: dict(zip(("none", "gray", "JPEG-10"), values)) for row, values in ISS.items()},
    "apbench2023": {row: dict(zip(("std", "cutout", "cutmix", "mixup", "BDR", "gray", "JPEG", "AT"), values))
                    for row, values in APBENCH.items()},
    "fowl2021_tap": {"TAP, untargeted (released)": {"none": 7.26}},
    "huang2021_em": {"EM, sample-wise": {"none": 23.6}},
    "cuda_rsk": {"CUDA": {"none": 23.25, "AT": 44.40}},
}
UNVERIFIED = {"cuda_rsk"}  # a third party's numbers for CUDA, not checked against CUDA's paper
BUDGETS = {("iss2023", "LSP"): ("l2", 1.0), ("iss2023", "AR"): ("l2", 1.0), ("iss2023", "OPS"): ("l0", 1.0),
           ("iss2023", "clean data"): ("none", 0.0), ("apbench2023", "LSP"): ("l2", math.sqrt(3072) * 6 / 255),
           ("apbench2023", "OPS"): ("l0", 1.0), ("cuda_rsk", "CUDA"): ("linf", 1.0)}


def test_the_shipped_sources_hold_the_numbers_of_their_sources_exactly():
    assert set(SOURCES) == set(EXPECTED)
    for source_id, rows in EXPECTED.items():
        source = SOURCES[source_id]
        assert {row.label: row.acc for row in source.attacks} == rows, source_id
        assert source.unverified == (source_id in UNVERIFIED)
        assert not any(row.unverified for row in source.attacks)
        for row in source.attacks:
            norm, eps = BUDGETS.get((source_id, row.label), ("linf", 8 / 255))
            assert (row.budget.norm, row.budget.eps) == (norm, pytest.approx(eps, rel=1e-4) if eps else eps), row.label


def test_each_source_states_where_it_comes_from_and_its_recipe():
    for source in SOURCES.values():
        assert source.title and source.paper and source.table and source.read_from
        assert source.link.startswith("https://") and source.recipe["dataset"] == "cifar10"
    iss, apbench = SOURCES["iss2023"], SOURCES["apbench2023"]
    assert iss.arxiv == "2301.13838" and apbench.arxiv == "2308.03258"
    assert {k: iss.recipe[k] for k in ("arch", "epochs", "batch_size", "lr", "weight_decay", "schedule")} == {
        "arch": "resnet18", "epochs": 60, "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine"}
    assert {k: apbench.recipe[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay")} == {
        "epochs": 200, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    em = SOURCES["huang2021_em"].recipe  # QuickStart.ipynb's training cell
    assert {k: em[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "schedule", "grad_clip")} == {
        "epochs": 30, "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine", "grad_clip": 5.0}


# A paper's table with its arXiv id, or a file of a public repository: owner/name and a commit (or an
# issue's address). Each file's read_from must name the second; a paper's table must carry its id.
REPOSITORY_FILE = re.compile(r"\b[\w.-]+/[\w.-]+, commit [0-9a-f]{7,40}\b|https://github\.com/[\w.-]+/[\w.-]+/issues/\d+")
ARXIV_ID = re.compile(r"arXiv (\d{4}\.\d{4,5})")


@pytest.mark.parametrize("source_id", sorted(SOURCES))
def test_read_from_names_a_paper_table_or_a_repository_file_a_user_can_open(source_id):
    source = SOURCES[source_id]
    assert REPOSITORY_FILE.search(source.read_from), f"{source_id}: read_from names no repository file at a commit"
    if "table" in source.read_from:  # a paper's table: which paper, by an arXiv id
        ids = ARXIV_ID.findall(source.read_from)
        assert ids and (source.arxiv in ids or not source.arxiv), f"{source_id}: a table without its paper's arXiv id"
    text = (ROOT / "bench" / "published" / f"{source_id}.toml").read_text()
    assert forbidden_references(text) == [] and not re.search(r"\b(REFERENCE|DESIGN|STYLE)\b", text)


def test_the_rule_catches_a_reference_a_user_cannot_follow():
    assert not REPOSITORY_FILE.search("Numbers: the notes, attacks table (TAP).")
    assert not REPOSITORY_FILE.search("the official main.py")  # a file without its repository and commit
    assert REPOSITORY_FILE.search("main.py (liuzrcc/ImageShortcutSqueezing, commit 869398f)")
    assert REPOSITORY_FILE.search("https://github.com/lhfowl/adversarial_poisons/issues/1")


@pytest.mark.parametrize("source_id", sorted(SOURCES))
def test_every_name_a_source_maps_is_registered_with_the_config_fields_it_names(source_id):
    for kind, registry, entries in (("attack", ATTACKS, SOURCES[source_id].attacks),
                                    ("defense", DEFENSES, SOURCES[source_id].defenses)):
        for entry in entries:
            for name in entry.ours:
                assert name in registry.names(), f"{source_id}: {entry.label} maps to unknown {kind} {name!r}"
                fields = {f.name for f in dataclasses.fields(registry.get(name).Config)}
                assert set(entry.config) <= fields, f"{source_id}: {name} has no field {set(entry.config) - fields}"


def test_the_data_files_are_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bench"]
    files = sorted((ROOT / "bench" / "published").glob("*.toml"))
    assert len(files) == len(SOURCES)
    for path in files:
        assert any(fnmatch.fnmatch(f"published/{path.name}", glob) for glob in package_data), path.name


MINIMAL = {"title": "t", "paper": "p", "table": "x", "read_from": "r", "recipe": {"dataset": "cifar10"},
           "defenses": {"none": {"ours": ["none"]}}, "attacks": {"EM": {"ours": ["em"], "budget": "Linf 8/255",
                                                                          "acc": {"none": 20.0}}}}


@pytest.mark.parametrize("change,message", [
    ({"acuracy": 1}, r"published source bad: unknown key 'acuracy'"),
    ({"recipe": {"epoch": 60}}, r"bad, recipe: unknown key 'epoch'; allowed: .*epochs"),
    ({"attacks": {"EM": {"acc": {"std": 20.0}}}}, r"bad, attacks.EM.acc: 'std' is no column; columns: none"),
    ({"attacks": {"EM": {"acc": {"none": 120.0}}}}, r"attacks.EM.acc.none: must be an accuracy in % \(0-100\), got 120.0"),
    ({"metric": "best"}, r"bad, metric: must be test_acc_last or test_acc_best, got 'best'"),
])
def test_a_bad_source_file_names_the_source_and_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_source("bad", {**MINIMAL, **change})
    missing = {k: v for k, v in MINIMAL.items() if k != "recipe"}
    with pytest.raises(ConfigError, match="published source bad: missing recipe"):
        parse_source("bad", missing)


def test_budgets_parse_as_papers_write_them():
    assert Budget.parse("Linf 8/255") == Budget("Linf 8/255", "linf", 8 / 255)
    assert Budget.parse("L2 1.3041").eps == 1.3041 and Budget.parse("L0 1 px").norm == "l0"
    assert Budget.parse("none").eps == 0.0 and Budget.parse("class-wise blur kernels").norm is None
    assert Budget.parse("unbounded") == Budget("unbounded", "linf", 1.0)  # what cuda claims


def test_compare_takes_published_or_source_ids_and_names_the_allowed_ones():
    assert [s.id for s in select_sources(ALL)] == sorted(SOURCES)
    assert [s.id for s in select_sources("iss2023,apbench2023")] == ["iss2023", "apbench2023"]
    with pytest.raises(ValueError, match=r"--compare: unknown published source 'iss'; allowed: published, apbench2023, "):
        select_sources("iss")


# --- a store trained with APBench's recipe: differences, and flags beyond the tolerance ------------
APBENCH_LABEL = {"none": "std", "cutout": "cutout", "cutmix": "cutmix", "iss_gray": "gray", "at": "AT", "jpeg": "JPEG"}
OFFSET = {("em", "none"): 1.0, ("em", "cutout"): 5.0, ("lsp", "none"): -0.5, ("ops", "at"): 10.0}  # points from APBench


def apbench_accuracy(cell) -> float:
    """APBench's number for the cell, OFFSET points away, -1 / +1 for seeds 0 / 1 (sample std sqrt 2)."""
    published = EXPECTED["apbench2023"][cell.attack.upper()][APBENCH_LABEL[cell.defense]]
    return published + OFFSET.get((cell.attack, cell.defense), 0.0) + (1.0 if cell.seed else -1.0)


@pytest.fixture(scope="module")
def apbench_records():
    grid = parse_grid({"attacks": ["em", "lsp", "ops"], "defenses": list(APBENCH_LABEL), "archs": ["resnet18"],
                       "seeds": [0, 1], "recipe": "apbench200", "data": {"name": "cifar10"}}, "apbench_like")
    return sr.unrun_records(grid, apbench_accuracy)


def cell(frame, source, attack, defense):
    (row,) = frame[(frame.source == source) & (frame.attack == attack) & (frame.defense == defense)].itertuples()
    return row


def test_cells_of_the_sources_recipe_get_differences_and_flags_beyond_the_tolerance(apbench_records):
    frame = compare_published(apbench_records, [SOURCES["apbench2023"], SOURCES["iss2023"]])
    for (attack, defense), offset in {**OFFSET, ("em", "jpeg"): 0.0, ("ops", "none"): 0.0}.items():
        row = cell(frame, "apbench2023", attack, defense)
        assert row.comparable and row.differs == "" and row.seeds == 2
        assert row.delta == pytest.approx(offset) and row.ours_std == pytest.approx(math.sqrt(2))
        assert row.beyond_tolerance == (abs(offset) > 3)
    # What no config of ours matches is never comparable, and says why.
    cutmix = cell(frame, "apbench2023", "em", "cutmix")
    assert not cutmix.comparable and math.isnan(cutmix.delta) and not cutmix.beyond_tolerance
    assert "cutmix p 0.5 vs 1" in cutmix.differs and "cutmix per_image default vs true" in cutmix.differs
    # iss_gray converts the training set only, as APBench's --gray: comparable.
    gray = cell(frame, "apbench2023", "ops", "iss_gray")
    assert gray.comparable and gray.delta == pytest.approx(0.0)
    # The same cells beside ISS's table: another recipe, and LSP at another budget.
    lsp = cell(frame, "iss2023", "lsp", "none")
    assert not lsp.comparable and math.isnan(lsp.delta)
    for reason in ("epochs 200 vs 60", "batch size 256 vs 128", "schedule multistep vs cosine", "budget L2 1.30 vs L2 1.0"):
        assert reason in lsp.differs
    assert "milestones" not in lsp.differs  # a schedule that differs is said once
    assert set(frame.source) == {"apbench2023", "iss2023"} and not frame[frame.source == "iss2023"].comparable.any()


def test_the_tolerance_and_the_metric_are_options(apbench_records):
    wide = compare_published(apbench_records, [SOURCES["apbench2023"]], tolerance=6.0)
    assert not cell(wide, "apbench2023", "em", "cutout").beyond_tolerance
    assert cell(wide, "apbench2023", "ops", "at").beyond_tolerance
    best = compare_published(apbench_records, [SOURCES["apbench2023"]], metric="test_acc_best")
    assert not best.comparable.any()  # APBench reports the last epoch
    assert "metric test_acc_best vs test_acc_last" in cell(best, "apbench2023", "em", "none").differs
    with pytest.raises(ValueError, match="--tolerance: must be a number of points >= 0, got -1"):
        compare_published(apbench_records, [SOURCES["apbench2023"]], tolerance=-1)


def test_the_report_shows_the_comparison_as_markdown_csv_and_latex(apbench_records, tmp_path):
    report = write_report(apbench_records, tmp_path, "ap", formats=("md", "csv", "latex"),
                          compare=select_sources("apbench2023"))
    md = report.markdown
    assert "### Beside the published numbers" in md and "#### APBench (Qin et al., 2023)" in md
    assert "15 of 18 cells comparable, 2 beyond ±3 points." in md  # all but the three cutmix cells
    assert re.search(r"^\| EM \(Linf 8/255\) / Cutout \| EM / cutout \| 23\.79 ± 1\.41, 2 seeds \| 18\.79 \| \*\*\+5\.00\*\* \|",
                     md, re.M)
    assert re.search(r"^\| EM \(Linf 8/255\) / No defense \| EM / std \| [^|]+ \| 20\.78 \| \+1\.00 \|", md, re.M)
    assert "has a number for our" not in md  # APBench has every defense of this store
    csv = report.paths["published"].read_text().splitlines()
    assert csv[0].startswith("source,dataset,arch,recipe,attack,budget,defense,seeds,ours,") and len(csv) == 1 + 18
    assert "tab:ap-apbench2023" in report.paths["tex"].read_text() and "+5.00*" in report.paths["tex"].read_text()


# --- the CPU grids: nothing is comparable, and the report says so -------------------------------------
@pytest.mark.parametrize("grid_name,arch", [("smoke", "tiny_cnn (width 16)"), ("depth_cpu", "resnet18 (width 8)")])
def test_cpu_grids_are_not_comparable_with_any_source_and_show_no_differences(grid_name, arch, tmp_path):
    records = sr.unrun_records(load_grid(grid_name), lambda cell: 50.0)
    frame = compare_published(records, SOURCES.values())
    assert len(frame) > 0 and not frame.comparable.any() and frame.delta.isna().all()
    assert not frame.beyond_tolerance.any()
    stated = frame.source.isin(["iss2023", "apbench2023", "huang2021_em"])  # the sources with a whole recipe
    assert frame[stated].differs.str.contains("train size 2,000 vs all").all()
    assert frame[stated & (frame.arch == arch.split()[0])].differs.str.contains(re.escape(f"arch {arch} vs resnet18")).all()
    assert frame[~stated].differs.str.contains("the source states no").all()

    md = write_report(records, tmp_path, grid_name, formats=("md",), compare=select_sources(ALL)).markdown
    section = md[md.index("### Beside the published numbers"):]
    shown = [s for s in SOURCES.values() if (frame.source == s.id).any()]
    assert section.count("Nothing here is comparable with this source") == len(shown)
    assert not re.search(r"\| [+-]\d+\.\d\d(\*\*)? \|", section), "a difference was printed for a cell not comparable"
    assert "No cell of ours has an attack and a defense of this table." in section  # CUDA: in no CPU grid
    # The unverified source says why, and nothing rendered points at notes outside the repository.
    assert section.count("Unverified: a third party's numbers, not checked against the method's own paper.") == 1
    assert forbidden_references(md) == [] and not re.search(r"\b(REFERENCE|DESIGN|STYLE)\b", md)


def test_cli_compare_names_the_allowed_sources_on_one_line_and_writes_the_comparison(apbench_records, tmp_path):
    store = Store(tmp_path / "results")
    for record in apbench_records:
        store.write_record(record)
    runner = CliRunner()
    bad = runner.invoke(main, ["report", "--out", str(store.root), "--format", "md", "--compare", "iss2023,nonsense"])
    assert bad.exit_code != 0 and bad.output.strip().count("\n") == 0
    assert bad.output.strip() == ("Error: --compare: unknown published source 'nonsense'; allowed: published, apbench2023, "
                                  "cuda_rsk, fowl2021_tap, huang2021_em, iss2023 (any comma-separated subset)")
    done = runner.invoke(main, ["report", "--out", str(store.root), "--format", "md,csv", "--compare", "iss2023",
                                "--tolerance", "1"])
    assert done.exit_code == 0, done.output
    # The comparison is in the report's files; the terminal names them.
    md = (store.root / "reports" / "all.md").read_text()
    assert "#### ISS (Liu et al., ICML 2023)" in md and "#### APBench" not in md
    assert "Nothing here is comparable with this source (9 cells): every cell differs in epochs 200 vs 60;" in md
    assert (store.root / "reports" / "all_published.csv").is_file()
    assert f"published comparison: {store.root / 'reports' / 'all_published.csv'}" in done.output
    negative = runner.invoke(main, ["report", "--out", str(store.root), "--compare", "published", "--tolerance", "-1"])
    assert negative.exit_code != 0 and "--tolerance" in negative.output


def test_a_metric_only_some_cells_record_compares_the_cells_that_have_it(tmp_path):
    """`--metric test_acc_early_stop` beside published tables: cells without early_stop have no such
    metric and are left out of the comparison, not a KeyError."""
    from dataclasses import replace

    import stored_results as sr
    from bench.published import shipped_sources

    _, records, _ = sr.build_under(tmp_path)
    plain = [r for r in records if r.done and r.spec["defense"] == "none"]
    stopped = [replace(r, cell_id="e" + r.cell_id[1:], spec={**r.spec, "defense": "early_stop", "defense_config": {}},
                       metrics={**r.metrics, "test_acc_early_stop": r.metrics["test_acc_last"]}) for r in plain]
    sources = list(shipped_sources().values())
    assert len(compare_published(plain + stopped, sources, "test_acc_last")), "the plain cells meet a published table"
    # Those same cells have no test_acc_early_stop, and no published table has an early-stopping column.
    assert len(compare_published(plain + stopped, sources, "test_acc_early_stop")) == 0

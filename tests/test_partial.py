"""Partial poisoning: the grid's poison_ratio and poison_classes, the selection, the mixed training set,
the record, and the report's table and figure of accuracy against the ratio."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import stored_results as sr
from bench.config import ConfigError
from bench.data import DataSpec, load_dataset, poisoned_subset
from bench.executors import run_grid
from bench.grid import parse_grid
from bench.report import TableLayout, ratio_tables, summary_tables, tidy, write_report
from bench.runner import preflight
from bench.store import Store

LABELS = np.repeat(np.arange(4), [50, 30, 20, 13])  # unequal classes: 113 images


def grid_of(npz, **keys):
    return parse_grid({"attacks": ["clean", "random_noise"], "defenses": ["none", "jpeg"], "archs": ["tiny_cnn"],
                       "recipe": {"preset": "cpu_smoke", "epochs": 1}, "data": {"name": str(npz)}, **keys}, "partial")


# --- the selection -------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.1, 0.29, 0.5, 0.77, 1.0])
def test_the_selection_is_stratified_with_the_exact_count(ratio):
    rows = poisoned_subset(LABELS, ratio, (), seed=0)
    assert len(rows) == int(np.floor(ratio * len(LABELS) + 1e-9)) and len(set(rows)) == len(rows)
    per_class = np.bincount(LABELS[rows], minlength=4)
    assert np.all(np.abs(per_class - ratio * np.bincount(LABELS)) < 1), per_class


def test_the_selection_is_seeded():
    first, again, other = (poisoned_subset(LABELS, 0.3, (), seed) for seed in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_the_selection_stays_within_poison_classes():
    rows = poisoned_subset(LABELS, 0.5, (1, 3), seed=0)
    assert set(LABELS[rows]) == {1, 3} and len(rows) == int(0.5 * (30 + 13))
    everything = poisoned_subset(LABELS, 1.0, (3, 1), seed=0)  # ratio 1: every image of the classes, as EM's code
    assert np.array_equal(everything, np.flatnonzero(np.isin(LABELS, [1, 3])))


def test_a_class_the_data_lacks_is_refused_with_the_allowed_range():
    with pytest.raises(ConfigError, match=r"poison_classes: class 7 has no training images; allowed: 0 to 3"):
        poisoned_subset(LABELS, 0.5, (1, 7), seed=0)


# --- the grid ------------------------------------------------------------------------------------
def test_ids_and_poison_keys_are_unchanged_at_the_defaults_and_ratios_share_one_poison(tiny_npz):
    plain = grid_of(tiny_npz).cells()
    assert [c.cell_id for c in grid_of(tiny_npz, poison_ratio=1.0, poison_classes=[]).cells()] == [c.cell_id for c in plain]
    assert all("poison_ratio" not in c.to_dict() and "poison_classes" not in c.to_dict() for c in plain)
    cells = grid_of(tiny_npz, poison_ratio=[0.2, 0.5, 1.0]).cells()
    noise = [c for c in cells if c.attack == "random_noise"]
    assert len(noise) == 3 * 2 and len({c.cell_id for c in noise}) == 6
    assert len({c.poison_key for c in noise}) == 1 and noise[0].poison_key == plain[-1].poison_key
    assert {c.cell_id for c in cells if c.poison_ratio == 1.0} == {c.cell_id for c in plain}
    assert [c.label for c in noise[:1]] == ["random_noise / none / tiny_cnn / seed 0 / poisoned 20%"]


def test_the_clean_baseline_is_not_multiplied_by_ratios_or_classes(tiny_npz):
    cells = grid_of(tiny_npz, poison_ratio=[0.2, 0.5], poison_classes=[2, 1]).cells()
    clean = [c for c in cells if c.attack == "clean"]
    assert [(c.poison_ratio, c.poison_classes) for c in clean] == [(1.0, ()), (1.0, ())]  # one per defense
    assert {c.cell_id for c in clean} == {c.cell_id for c in grid_of(tiny_npz).cells() if c.attack == "clean"}
    assert {c.poison_classes for c in cells if c.attack != "clean"} == {(1, 2)}  # order-free


@pytest.mark.parametrize("key, value, message", [
    ("poison_ratio", 0, r"poison_ratio must be a number in \(0, 1\].*; 0 is not"),
    ("poison_ratio", [0.5, 1.5], r"poison_ratio must be a number in \(0, 1\].*; 1.5 is not"),
    ("poison_ratio", True, r"poison_ratio must be .*; True is not"),
    ("poison_ratio", "0.2", r"poison_ratio must be .*; '0.2' is not"),
    ("poison_ratio", [], r"poison_ratio must be .*, got \[\]"),
    ("poison_classes", [-1], r"poison_classes must be a list of distinct class indices"),
    ("poison_classes", "3", r"poison_classes must be a list of distinct class indices"),
    ("poison_classes", [3, 3], r"poison_classes must be .*repeats a class"),
])
def test_bad_ratios_and_classes_are_refused_naming_the_key_and_what_is_allowed(tiny_npz, key, value, message):
    with pytest.raises(ConfigError, match=message):
        grid_of(tiny_npz, **{key: value})


def test_a_class_the_data_lacks_stops_the_run_before_any_cell(tiny_npz):
    with pytest.raises(ConfigError, match=r"poison_classes: class 10 has no training images; allowed: 0 to 9"):
        preflight(grid_of(tiny_npz, poison_classes=[3, 10]).cells())


# --- the run and its record ----------------------------------------------------------------------
def test_a_partial_cell_trains_on_the_poison_where_selected_and_clean_bytes_elsewhere(tiny_npz, tmp_path, monkeypatch):
    import bench.runner as runner

    seen = {}
    train_model = runner.train_model

    def spy(model, train, test, recipe, **kwargs):
        seen.setdefault(recipe.epochs, []).append(train.images.clone())
        return train_model(model, train, test, recipe, **kwargs)

    monkeypatch.setattr(runner, "train_model", spy)
    grid = parse_grid({"attacks": ["random_noise"], "defenses": ["none", "jpeg"], "archs": ["tiny_cnn"], "seeds": [3],
                       "recipe": {"preset": "cpu_smoke", "epochs": 1}, "data": {"name": str(tiny_npz)},
                       "poison_ratio": [0.25, 1.0], "poison_classes": [0, 4]}, "partial")
    store = Store(tmp_path / "out")
    assert run_grid(grid, store, torch.device("cpu"), progress=False)["failed"] == 0
    records = {(r.spec.get("poison_ratio", 1.0), r.defense): r for r in store.records()}
    clean = load_dataset(DataSpec(name=str(tiny_npz))).train
    record = records[0.25, "none"]
    poison = torch.from_numpy(store.load_poison(record.poison["key"])[0])  # the attack's poison of the whole set
    partial = seen[1][0]  # cells in grid order: 0.25 (none, jpeg), then 1.0 of the classes (none, jpeg)
    rows = poisoned_subset(clean.labels.numpy(), 0.25, (0, 4), seed=3)
    assert len(rows) == 10  # a quarter of the 40 images of classes 0 and 4
    kept = np.setdiff1d(np.arange(len(clean)), rows)
    assert torch.equal(partial[kept], clean.images[kept]) and torch.equal(partial[rows], poison[rows])
    assert not torch.equal(poison[kept], clean.images[kept])  # the poison perturbs the images left clean
    assert record.spec["poison_ratio"] == 0.25 and record.spec["poison_classes"] == [0, 4]
    positions = clean.index.numpy()[rows].astype(np.int64)
    assert record.poisoned == {"ratio": 0.25, "classes": [0, 4], "count": 10, "of": 200, "seed": 3,
                               "indices_sha256": hashlib.sha256(positions.tobytes()).hexdigest()}
    classes = records[1.0, "none"]  # every image of the two classes: the ratio at its default, left out of the spec
    assert "poison_ratio" not in classes.spec and classes.poisoned["count"] == 40 and classes.poisoned["ratio"] == 1.0
    assert classes.poison["key"] == record.poison["key"]
    # JPEG ran on each training set, each cached under its own key.
    prepared = [store.load_poison(p.stem)[1] for p in store.poisons_dir.glob("prepared-*.json")]
    assert sorted(meta["poisoned"] for meta in prepared) == sorted(
        r.poisoned["indices_sha256"] for (_, defense), r in records.items() if defense == "jpeg")
    assert not torch.equal(seen[1][1], seen[1][3])


# --- the report ----------------------------------------------------------------------------------
def partial_accuracy(cell) -> float:
    """In %: clean 80; random_noise falls linearly with the ratio, to 30 at 100%, +- 1 by seed."""
    if cell.attack == "clean":
        return 80.0 + (1 if cell.seed else -1)
    return 80.0 - 50.0 * cell.poison_ratio + (1 if cell.seed else -1) + (10 if cell.defense == "jpeg" else 0)


@pytest.fixture
def partial_records(tiny_npz):
    grid = parse_grid({"attacks": ["clean", "random_noise"], "defenses": ["none", "jpeg"], "archs": ["tiny_cnn"],
                       "seeds": [0, 1], "recipe": {"preset": "cpu_smoke", "epochs": 1}, "data": {"name": str(tiny_npz)},
                       "poison_ratio": [0.2, 0.5, 1.0]}, "partial")
    return grid, sr.unrun_records(grid, partial_accuracy)


def test_the_ratio_table_puts_each_attack_against_the_ratio_with_clean_under_every_ratio(partial_records):
    grid, records = partial_records
    tables = ratio_tables(tidy(records), orders={"attack": list(grid.attacks), "defense": list(grid.defenses)})
    assert [t.group["defense"] for t in tables] == ["none", "jpeg"]  # grid order
    none = next(t for t in tables if t.group["defense"] == "none")
    assert list(none.mean.columns) == [(0.2, ""), (0.5, ""), (1.0, "")]
    assert none.mean.loc[("clean", "")].tolist() == pytest.approx([80.0] * 3)
    assert none.mean.loc[("random_noise", "Linf 8/255")].tolist() == pytest.approx([70.0, 55.0, 30.0])
    assert none.std.loc[("random_noise", "Linf 8/255")].tolist() == pytest.approx([sr.sample_std(69, 71)] * 3)
    # Any pivot on the ratio through the layout, as `bench report --rows poison_ratio` asks for.
    (table,) = [t for t in summary_tables(tidy(records), layout=TableLayout("poison_ratio", "attack"))
                if t.group["defense"] == "none"]
    assert table.mean.at[(0.5, ""), ("random_noise", "Linf 8/255")] == pytest.approx(55.0)


def test_the_report_writes_the_ratio_table_figure_and_columns(partial_records, tmp_path):
    grid, records = partial_records
    report = write_report(records, tmp_path, "p", grid.attacks, grid.defenses, formats=("csv", "md", "latex", "fig"))
    assert "### Partial poisoning" in report.markdown
    assert "| Random noise (Linf 8/255) | **70.00 ± 1.41** | **55.00 ± 1.41** | **30.00 ± 1.41** |" in report.markdown
    assert "| Clean | 80.00 ± 1.41 | 80.00 ± 1.41 | 80.00 ± 1.41 |" in report.markdown
    assert "poison ratio 20%;" in report.markdown and ", poisoned 20%\n" in report.markdown  # captions and titles
    assert {"accuracy_by_poison_ratio.pdf", "accuracy_by_poison_ratio.png"} <= {p.name for p in report.paths.values()}
    csv = report.paths["csv"].read_text().splitlines()
    assert "poison_ratio,poison_classes" in csv[0]
    assert "tab:p-ratio-1" in report.paths["tex"].read_text()


def test_a_report_without_partial_poisoning_is_as_it_was(tiny_npz, tmp_path):
    grid = grid_of(tiny_npz)
    report = write_report(sr.unrun_records(grid, partial_accuracy), tmp_path, "q", grid.attacks, grid.defenses,
                          formats=("csv", "md", "fig"))
    assert "poison" not in report.paths["csv"].read_text().splitlines()[0]
    assert "Partial poisoning" not in report.markdown and "poison ratio" not in report.markdown
    assert not any(p.name.startswith("ratio") for p in report.paths.values())


def test_ratios_and_robust_accuracy_combine_in_one_grid(tiny_npz):
    """A cell can be partial and robust-evaluated at once: each ratio's AT cell carries the robust settings."""
    grid = parse_grid({"attacks": ["clean", "random_noise"], "defenses": ["none", "at"], "archs": ["tiny_cnn"],
                       "recipe": "cpu_smoke", "data": {"name": str(tiny_npz)}, "poison_ratio": [0.5, 1.0],
                       "analysis": ["robust"], "robust": {"defenses": ["at"]}}, "g")
    cells = grid.cells()
    assert len(cells) == 2 + 2 * 2  # clean once per defense; random_noise per ratio and defense
    for cell in cells:
        assert bool(cell.robust) == (cell.defense == "at") == ("robust" in cell.analysis)
    assert len({c.cell_id for c in cells}) == len(cells)
    assert {c.poison_ratio for c in cells if c.attack == "random_noise"} == {0.5, 1.0}

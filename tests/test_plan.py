"""Dry-run planning and status, from synthetic records in a temporary store: no training, no data."""
from __future__ import annotations

from dataclasses import replace

import pytest

from bench.grid import parse_grid
from bench.plan import (Timings, cell_states, count, estimate, format_duration, format_plan, format_status, grid_status,
                        plan_grid, poisons_to_generate, records_by_cell, store_status)
from bench.records import CellResult
from bench.store import Store

RAW = {"attacks": ["clean", "ops"], "defenses": ["none", "jpeg"], "archs": ["tiny_cnn"], "seeds": [0],
       "recipe": {"preset": "cpu_smoke", "epochs": 4}, "data": {"name": "missing/nowhere.npz", "train_size": 100}}


METRICS = {"test_acc_last": 0.5, "test_acc_best": 0.6, "best_epoch": 3, "train_acc": 0.9}


def record(cell, grid="g", status="done", train_s=8.0, generate_s=30.0, epochs=None, error=None, device="cpu") -> CellResult:
    spec = cell.to_dict()
    if epochs is not None:
        spec["recipe"] = {**spec["recipe"], "epochs": epochs}
    rec = {"cell_id": cell.cell_id, "grid": grid, "spec": spec, "status": status, "provenance": {"device": device}}
    if status == "done":
        rec["timings"] = {"train_s": train_s, "generate_s": 0.0, "poison_generate_s": generate_s}
        rec["metrics"] = METRICS
    else:
        rec["error"] = error or {"type": "RuntimeError", "message": "boom\nsecond line", "traceback": "Traceback ..."}
    return CellResult.from_json(rec)


@pytest.fixture
def grid():
    return parse_grid(RAW, "g")


def by_label(cells):
    return {c.label: c for c in cells}


def test_states_come_from_the_records(tmp_path, grid):
    cells = by_label(grid.cells())
    store = Store(tmp_path)
    store.write_record(record(cells["clean / none / tiny_cnn / seed 0"]))
    store.write_record(record(cells["ops / jpeg / tiny_cnn / seed 0"], status="failed"))
    states = {s.cell.label: s for s in cell_states(grid.cells(), records_by_cell(store))}
    assert states["clean / none / tiny_cnn / seed 0"].status == "done"
    assert states["ops / jpeg / tiny_cnn / seed 0"].status == "failed"
    assert states["ops / jpeg / tiny_cnn / seed 0"].error["message"].startswith("boom")
    assert count(states.values()) == {"done": 1, "failed": 1, "pending": 2}


def test_poisons_to_generate_skip_done_cells_and_cached_files(tmp_path, grid):
    cells = by_label(grid.cells())
    store = Store(tmp_path)
    # Both clean cells are done, so clean's poison is not needed; ops's is needed until its files exist.
    for label in ("clean / none / tiny_cnn / seed 0", "clean / jpeg / tiny_cnn / seed 0"):
        store.write_record(record(cells[label]))
    states = cell_states(grid.cells(), records_by_cell(store))
    assert [c.attack for c in poisons_to_generate(states, store)] == ["ops"]
    key = cells["ops / none / tiny_cnn / seed 0"].poison_key
    store.poisons_dir.mkdir(parents=True)
    (store.poisons_dir / f"{key}.npy").write_bytes(b"not an array: existence is all the plan reads")
    assert [c.attack for c in poisons_to_generate(states, store)] == ["ops"], "a poison without its metadata is not cached"
    (store.poisons_dir / f"{key}.json").write_text("{}")
    assert poisons_to_generate(states, store) == []


def test_estimate_scales_recorded_epoch_times_and_uses_medians(tmp_path, grid):
    cells = by_label(grid.cells())
    # Records of another grid (2 epochs, other seeds, so other ids). Training time depends on the data,
    # arch and defense, not on the attack: six undefended runs, per epoch 1.5, 2.5, 50, 2, 3, 3.5 s
    # (median 2.75 s). ops's poison took 20, 100 and 30 s (median 30 s); clean's has no timing.
    other = parse_grid({**RAW, "recipe": {"preset": "cpu_smoke", "epochs": 2}, "defenses": ["none"], "seeds": [1, 2, 3]}, "other")
    train_s = iter([3.0, 5.0, 100.0, 4.0, 6.0, 7.0])
    generate_s = iter([20.0, 100.0, 30.0])
    records = [record(c, "other", train_s=next(train_s), generate_s=next(generate_s) if c.attack == "ops" else None)
               for c in other.cells()]
    timings = Timings.from_records(records)
    assert timings.records == 6 and timings.devices == ("cpu",)
    assert timings.train_seconds(cells["clean / none / tiny_cnn / seed 0"]) == pytest.approx(2.75 * 4)
    assert timings.train_seconds(cells["ops / none / tiny_cnn / seed 0"]) == pytest.approx(2.75 * 4)
    assert timings.train_seconds(cells["ops / jpeg / tiny_cnn / seed 0"]) is None  # no jpeg timing
    # ... so jpeg's cells are scaled from the same arch's records: same images, 4 epochs against 2.
    seconds, basis = timings.train_estimate(cells["ops / jpeg / tiny_cnn / seed 0"])
    assert seconds == pytest.approx(2.75 * 4) and (basis.kind, basis.label, basis.records) == ("scaled", "tiny_cnn", 6)
    assert timings.poison_seconds(cells["ops / none / tiny_cnn / seed 0"]) == pytest.approx(30.0)
    assert timings.poison_seconds(cells["clean / none / tiny_cnn / seed 0"]) is None
    states = cell_states(grid.cells(), {})
    est = estimate(states, poisons_to_generate(states, Store(tmp_path)), timings)
    assert est.seconds == pytest.approx(4 * 11.0 + 30.0)  # two undefended cells, two scaled jpeg cells, ops's poison
    assert (est.cells, est.cells_unknown, est.poisons, est.poisons_unknown) == (4, 0, 1, 1)


def test_failed_and_unfinished_records_give_no_timings(grid):
    cell = grid.cells()[0]
    assert Timings.from_records([record(cell, status="failed"), replace(record(cell), timings={})]).records == 0


def test_dry_run_listing(tmp_path, grid):
    cells = by_label(grid.cells())
    store = Store(tmp_path)
    assert format_plan(plan_grid(grid, store)).endswith("cost: no timings recorded yet")
    done = cells["clean / none / tiny_cnn / seed 0"]
    store.write_record(record(done, train_s=6.0))
    store.write_record(record(cells["ops / jpeg / tiny_cnn / seed 0"], status="failed"))
    text = format_plan(plan_grid(grid, store))
    lines = text.splitlines()
    assert lines[0] == "grid g: 4 cells: 1 done, 1 failed, 2 pending"
    assert f"  done     {done.cell_id}  clean / none / tiny_cnn / seed 0" in lines
    assert any(l.startswith("  failed") and l.endswith("ops / jpeg / tiny_cnn / seed 0  (RuntimeError: boom)") for l in lines)
    assert "poisons to generate: 2" in lines  # clean's (clean / jpeg is pending) and ops's
    # ops / none has clean / none's training time (the attack does not change it), clean's poison its 30 s.
    # ops / jpeg and clean / jpeg: scaled from clean / none's 6 s for its 100 images x 4 epochs.
    assert lines[-1] == ("cost: about 48 s of device time, one cell at a time, on cpu (1 cell from records of the same "
                         "data, arch and defense; 2 cells scaled from 1 record of tiny_cnn at 100 images x 4 epochs; "
                         "1 poison from records of the same attack and config); unknown: 1 poison (no record of "
                         "their attack and config)")


def test_status_counts_each_grid_and_names_each_failure_in_one_line(grid):
    cells = by_label(grid.cells())
    overridden = parse_grid({**RAW, "seeds": [7]}, "g").cells()[0]  # same grid name, other settings
    records = {r.cell_id: r for r in [
        record(cells["clean / none / tiny_cnn / seed 0"]),
        record(cells["ops / none / tiny_cnn / seed 0"], status="failed",
               error={"type": "BudgetError", "message": "linf budget 0.0314 exceeded\nmore", "traceback": "..."}),
        record(overridden),
        record(cells["ops / jpeg / tiny_cnn / seed 0"], grid="mine", status="failed"),
    ]}
    status = grid_status(grid, records)
    assert status.counts == {"done": 1, "failed": 2, "pending": 1} and status.others == 1
    text = format_status(status).splitlines()
    assert text[0] == "grid g: 1 done, 2 failed, 1 pending"
    ids = {label: c.cell_id for label, c in cells.items()}
    assert f"  failed  {ids['ops / none / tiny_cnn / seed 0']}  ops / none / tiny_cnn / seed 0: BudgetError: linf budget 0.0314 exceeded" in text
    assert f"  failed  {ids['ops / jpeg / tiny_cnn / seed 0']}  ops / jpeg / tiny_cnn / seed 0: RuntimeError: boom" in text
    # Without --grid: shipped grids that have records, then grids known only by the name in records.
    statuses = {s.grid: s for s in store_status(records, {"g": grid, "empty": parse_grid({**RAW, "seeds": [9]}, "empty")})}
    assert list(statuses) == ["g", "mine"]
    assert statuses["mine"].counts == {"done": 0, "failed": 1, "pending": None}
    assert format_status(statuses["mine"]).splitlines()[0] == (
        "grid mine: 0 done, 1 failed, pending unknown (name its grid file with --grid)")


@pytest.mark.parametrize("seconds,text", [(42, "42 s"), (61, "1 min"), (3600 * 26 + 60 * 5, "26 h 05 min")])
def test_durations_read_like_a_person_would_say_them(seconds, text):
    assert format_duration(seconds) == text


def test_estimate_takes_the_poisons_as_any_iterable(tmp_path, grid):
    """Poisons given as an iterator are counted once each, known or not (not exhausted by the first count)."""
    cells = by_label(grid.cells())
    timings = Timings.from_records([record(cells["ops / none / tiny_cnn / seed 0"], generate_s=30.0)])
    states = cell_states(grid.cells(), {})
    poisons = poisons_to_generate(states, Store(tmp_path))
    assert [c.attack for c in poisons] == ["clean", "ops"]
    assert estimate(states, iter(poisons), timings) == estimate(states, poisons, timings)
    assert (estimate(states, iter(poisons), timings).poisons, estimate(states, iter(poisons), timings).poisons_unknown) == (1, 1)


def test_status_and_dry_run_show_a_variants_name_and_a_grid_shows_its_own(tmp_path):
    at_4 = {"plugin": "at", "eps": "4/255"}
    grid = parse_grid({**RAW, "defenses": ["at", "at_4"], "variants": {"at_4": at_4}}, "g")
    cell = by_label(grid.cells())["ops / at_4 / tiny_cnn / seed 0"]
    failed = record(cell, status="failed")
    assert failed.spec["defense"] == "at" and failed.name("defense") == "at_4"
    # Known from its records only, the failure carries the name of the grid that ran it.
    assert format_status(store_status({cell.cell_id: failed}, {})[0]).splitlines()[1] == \
           f"  failed  {cell.cell_id}  ops / at_4 / tiny_cnn / seed 0: RuntimeError: boom"
    # Another grid running the same experiment under another name counts the record as its cell, under its name.
    renamed = parse_grid({**RAW, "defenses": ["at_half"], "variants": {"at_half": at_4}}, "h")
    status = grid_status(renamed, {cell.cell_id: failed})
    assert status.counts["failed"] == 1 and status.failures[0][0] == "ops / at_half / tiny_cnn / seed 0"
    store = Store(tmp_path)
    store.write_record(failed)
    assert "ops / at_half / tiny_cnn / seed 0  (RuntimeError: boom)" in format_plan(plan_grid(renamed, store))

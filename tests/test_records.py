"""`CellResult`, the typed record: stored records load, round-trip unchanged, and feed every reader."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.plan import Timings, cell_states, records_by_cell
from bench.records import CellResult, RecordError
from bench.report import tidy, write_report
from bench.store import Store

WRITTEN_BEFORE = Path(__file__).parent / "data" / "records"  # by cc99757, when records were plain dicts


@pytest.fixture
def old_store(tmp_path) -> Store:
    store = Store(tmp_path)
    store.records_dir.mkdir(parents=True)
    for path in WRITTEN_BEFORE.glob("*.json"):
        shutil.copy(path, store.records_dir / path.name)
    return store


def test_records_written_before_the_type_load_and_write_back_byte_for_byte(old_store, tmp_path):
    loaded = {r.cell_id: r for r in old_store.records()}
    assert len(loaded) == 4
    assert {r.status for r in loaded.values()} == {"done", "failed"}
    copy = Store(tmp_path / "copy")
    for record in loaded.values():
        copy.write_record(record)
    for path in WRITTEN_BEFORE.glob("*.json"):
        assert (copy.records_dir / path.name).read_text() == path.read_text(), path.name


def test_old_records_feed_status_costs_and_reports(old_store, tmp_path):
    records = records_by_cell(old_store)
    with_mi = next(r for r in records.values() if r.analysis)
    assert with_mi.done and with_mi.attack == "em" and with_mi.defense == "cutout+jpeg" and with_mi.seed == 0
    unrunnable = next(r for r in records.values() if r.attempts == 0)
    assert unrunnable.status == "failed" and unrunnable.error["type"] == "BrokenProcessPool"
    assert unrunnable.earlier_errors is None and unrunnable.wall_seconds is None  # the executor's record has neither
    assert Timings.from_records(records.values()).records == 2
    df = tidy(records.values())
    assert set(df.attack) == {"em", "clean"} and set(df.cell_id) == {r.cell_id for r in records.values() if r.done}
    report = write_report(records.values(), tmp_path / "r", "old", formats="md,csv")
    assert "EM (Linf 8/255)" in report.markdown and "MI CCA (nats)" in report.markdown


def test_constructors_write_the_fields_of_their_kind_only():
    from bench.grid import parse_grid

    cell = parse_grid({"attacks": ["clean"], "defenses": ["none"], "archs": ["tiny_cnn"]}, "g").cells()[0]
    done = CellResult.finished(cell, "g", {"metrics": {"test_acc_last": 0.5}, "history": [], "precision": "fp32",
                                           "poison": {}, "timings": {}}, provenance={"device": "cpu"}, attempts=1,
                               earlier_errors=[], wall_seconds=2.0)
    assert done.done and done.cell_id == cell.cell_id and done.spec == cell.to_dict()
    assert set(done.to_json()) == {"cell_id", "grid", "spec", "status", "attempts", "provenance", "metrics", "history",
                                   "precision", "poison", "timings", "earlier_errors", "wall_seconds"}
    failed = CellResult.failed(cell, "g", {"type": "E", "message": "m"}, provenance={}, attempts=0)
    assert not failed.done and set(failed.to_json()) == {"cell_id", "grid", "spec", "status", "attempts", "provenance",
                                                         "error"}
    assert CellResult.from_json(json.loads(json.dumps(failed.to_json()))) == failed


METRICS = {"test_acc_last": 0.5, "test_acc_best": 0.6, "best_epoch": 3, "train_acc": 0.9}
DONE = {"cell_id": "a", "status": "done", "spec": {"attack": "em"}, "metrics": METRICS}


def test_keys_of_other_versions_are_kept():
    record = CellResult.from_json({**DONE, "future_field": [1, 2]})
    assert record.extra == {"future_field": [1, 2]} and record.to_json()["future_field"] == [1, 2]


NOT_RECORDS = [
    ([], "a record is a JSON object, got list"),
    ({}, "no cell_id"),
    ({**DONE, "cell_id": 3}, "no cell_id"),
    ({"cell_id": "a", "spec": {}}, "status None is not one of done, failed"),
    ({**DONE, "status": "running"}, "status 'running' is not one of done, failed"),
    ({**DONE, "spec": None}, "no spec"),
    ({**DONE, "metrics": None}, r"a done record without its metrics \(test_acc_last, test_acc_best, best_epoch, train_acc\)"),
    ({**DONE, "metrics": {**METRICS, "test_acc_last": "high"}}, r"without its metrics \(test_acc_last\)"),
    ({**DONE, "metrics": {**METRICS, "train_acc": True}}, r"without its metrics \(train_acc\)"),
    ({**DONE, "history": {"epoch": 1}}, "history is a dict, not a list"),
    ({**DONE, "wall_seconds": "1 s"}, "wall_seconds is a str, not a number"),
]


@pytest.mark.parametrize("bad,why", NOT_RECORDS, ids=[str(i) for i in range(len(NOT_RECORDS))])
def test_json_that_is_not_a_record_is_refused_with_what_is_wrong(bad, why):
    with pytest.raises(RecordError, match=why):
        CellResult.from_json(bad)


def test_a_failed_record_needs_no_metrics():
    assert not CellResult.from_json({**DONE, "status": "failed", "metrics": None}).done


@pytest.mark.parametrize("bad,why", NOT_RECORDS[:7], ids=[str(i) for i in range(7)])
def test_a_non_record_in_the_store_is_named_and_counts_as_not_done(bad, why, tmp_path, caplog):
    from click.testing import CliRunner

    from bench.cli import main

    store = Store(tmp_path)
    store.records_dir.mkdir(parents=True)
    (store.records_dir / "a.json").write_text(json.dumps(bad))
    assert store.read_record("a") is None and not store.is_done("a") and list(store.records()) == []
    assert "a.json" in caplog.text
    for command in (["status"], ["report", "--format", "md,csv"]):  # neither crashes on it
        result = CliRunner().invoke(main, [*command, "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output

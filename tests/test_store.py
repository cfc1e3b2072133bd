import json

import numpy as np
import pytest

from bench import store as store_mod
from bench.records import CellResult
from bench.store import Store, atomic_write_json, canonical_hash


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"v": 1})

    def crash(src, dst):
        raise OSError("killed mid-write")

    monkeypatch.setattr(store_mod.os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"], "no temporary file may be left behind"


def test_records_round_trip_and_unreadable_ones_are_skipped(tmp_path):
    store = Store(tmp_path)
    metrics = {"test_acc_last": 0.5, "test_acc_best": 0.5, "best_epoch": 1, "train_acc": 0.5}
    store.write_record(CellResult.from_json({"cell_id": "a", "status": "done", "spec": {}, "metrics": metrics}))
    store.write_record(CellResult.from_json({"cell_id": "b", "status": "failed", "spec": {}}))
    (store.records_dir / "c.json").write_text("{truncated")
    assert store.is_done("a") and not store.is_done("b") and not store.is_done("c") and not store.is_done("zzz")
    assert [r.cell_id for r in store.records()] == ["a", "b"]


def test_poison_cache_detects_altered_and_truncated_files(tmp_path):
    store = Store(tmp_path)
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    store.save_poison("k", images, {"norm": "linf", "budget": 0.1})
    loaded, meta = store.load_poison("k")
    assert np.array_equal(loaded, images) and meta["norm"] == "linf"
    path = store.poisons_dir / "k.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.load_poison("k") is None
    path.write_bytes(bytes(data[:50]))
    assert store.load_poison("k") is None
    assert store.load_poison("missing") is None


def test_poison_cache_never_unpickles(tmp_path):
    import pickle

    store = Store(tmp_path)
    store.save_poison("k", np.zeros((1, 3, 2, 2), np.uint8), {"norm": "linf", "budget": 0.0})
    payload = pickle.dumps({"evil": object})
    path = store.poisons_dir / "k.npy"
    path.write_bytes(payload)
    meta = json.loads((store.poisons_dir / "k.json").read_text())
    import hashlib

    meta["sha256"] = hashlib.sha256(payload).hexdigest()  # even with a matching hash
    (store.poisons_dir / "k.json").write_text(json.dumps(meta))
    assert store.load_poison("k") is None


def test_canonical_hash_ignores_key_order():
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash({"b": [1, 2], "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})

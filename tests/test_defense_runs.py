"""Defenses through the runner: composition in a grid, set-level caching, and OPS recovery on CIFAR-10."""
from __future__ import annotations

import torch

import pytest

from bench.grid import parse_grid
from bench.executors import run_grid
from bench.store import Store
from defenses.basic import JPEG


def _run(tmp_path, data, attacks, defenses, *, epochs=1, width=8, train_size=None, test_size=None, config=None):
    grid = parse_grid({
        "attacks": attacks, "defenses": defenses, "archs": ["tiny_cnn"],
        "recipe": {"preset": "cpu_smoke", "epochs": epochs},
        "data": {"name": str(data), "train_size": train_size, "test_size": test_size},
        "config": {"tiny_cnn": {"width": width}, **(config or {})},
    }, "g")
    store = Store(tmp_path / "out")
    counts = run_grid(grid, store, torch.device("cpu"), progress=False)
    return counts, {(r.spec["attack"], r.spec["defense"]): r for r in store.records()}


def test_composed_defenses_run_in_a_grid_and_set_level_work_is_done_once(tmp_path, tiny_npz, monkeypatch):
    calls = []
    prepare = JPEG.prepare
    monkeypatch.setattr(JPEG, "prepare", lambda self, images, labels: calls.append(1) or prepare(self, images, labels))
    defenses = ["none", "jpeg", "jpeg+cutout", "iss_gray+at", "mixup"]
    counts, records = _run(tmp_path, tiny_npz, ["clean", "ops"], defenses, config={"at": {"steps": 1}})
    assert counts == {"skipped": 0, "done": 10, "failed": 0}, [r.error for r in records.values()]
    assert records[("ops", "jpeg+cutout")].spec["defense_config"] == {"jpeg": {"quality": 10}, "cutout": {"size": 16}}
    assert len(calls) == 2, "JPEG runs once per poison, shared by jpeg and jpeg+cutout"
    # A second run over fresh cells (other epochs) reads the compressed sets from the disk cache.
    counts, _ = _run(tmp_path, tiny_npz, ["clean", "ops"], ["jpeg", "jpeg+cutout"], epochs=2)
    assert counts["done"] == 4 and len(calls) == 2


@pytest.mark.slow
def test_iss_jpeg_recovers_accuracy_that_ops_removed_on_real_cifar10(tmp_path, cifar10_npz):
    """OPS (one pixel per image) is a colour shortcut that JPEG at quality 10 squeezes out (ISS)."""
    torch.set_num_threads(2)
    setting = dict(epochs=8, width=24, train_size=3000, test_size=1000)  # ~13 s a cell on 2 cores
    _run(tmp_path, cifar10_npz, ["clean"], ["none"], **setting)
    _, records = _run(tmp_path, cifar10_npz, ["ops"], ["none", "iss_jpeg"], **setting)  # same store: 3 cells in all
    acc = {key: 100 * r.metrics["test_acc_last"] for key, r in records.items()}
    clean, ops, ops_jpeg = acc[("clean", "none")], acc[("ops", "none")], acc[("ops", "iss_jpeg")]
    print(f"clean {clean:.1f}  ops {ops:.1f}  ops + iss_jpeg {ops_jpeg:.1f}")
    assert clean - ops >= 15, "the OPS poison must work before a defense can be judged against it"
    assert ops_jpeg - ops >= 10, "ISS JPEG-10 must recover at least 10 points of what OPS removed"

"""Defenses through the runner: composition in a grid, set-level caching, and OPS recovery on CIFAR-10."""
from __future__ import annotations

import numpy as np
import torch

import pytest

from bench.grid import parse_grid
from bench.executors import run_grid
from bench.registry import DEFENSES
from bench.store import Store
from defenses.basic import JPEG
from defenses.squeeze import pil_luma


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


def test_the_victims_crop_pads_with_the_defenses_fill(tmp_path, tiny_npz, monkeypatch):
    import bench.train

    fills, crop = set(), bench.train.random_crop_flip
    monkeypatch.setattr(bench.train, "random_crop_flip", lambda x, p, f, g, fill=0: fills.add(fill) or crop(x, p, f, g, fill))
    counts, records = _run(tmp_path, tiny_npz, ["clean"], ["orthogonal_projection+cutout"],
                           config={"orthogonal_projection": {"epochs": 1}})
    assert counts["failed"] == 0 and fills == {85}, [r.error for r in records.values()]
    fills.clear()
    _run(tmp_path, tiny_npz, ["clean"], ["none"])
    assert fills == {0}


@pytest.mark.slow
def test_iss_jpeg_and_orthogonal_projection_recover_accuracy_that_ops_removed_on_real_cifar10(tmp_path, cifar10_npz):
    """OPS (one pixel per image) is a colour shortcut that JPEG at quality 10 squeezes out (ISS), and
    a class-wise one that a linear model finds and orthogonal projection removes (Sandoval-Segura et al.)."""
    torch.set_num_threads(2)
    setting = dict(epochs=8, width=24, train_size=3000, test_size=1000)  # ~13 s a cell on 2 cores
    _run(tmp_path, cifar10_npz, ["clean"], ["none"], **setting)
    _, records = _run(tmp_path, cifar10_npz, ["ops"], ["none", "iss_jpeg", "orthogonal_projection"], **setting,
                      config={"orthogonal_projection": {"preset": "cpu"}})  # same store: 4 cells in all
    acc = {key: 100 * r.metrics["test_acc_last"] for key, r in records.items()}
    clean, ops, ops_jpeg = acc[("clean", "none")], acc[("ops", "none")], acc[("ops", "iss_jpeg")]
    ops_projected = acc[("ops", "orthogonal_projection")]
    print(f"clean {clean:.1f}  ops {ops:.1f}  ops + iss_jpeg {ops_jpeg:.1f}  ops + orthogonal_projection {ops_projected:.1f}")
    assert clean - ops >= 15, "the OPS poison must work before a defense can be judged against it"
    assert ops_jpeg - ops >= 10, "ISS JPEG-10 must recover at least 10 points of what OPS removed"
    assert ops_projected - ops >= (clean - ops) / 2, "orthogonal projection must recover half of what OPS removed"


def test_early_stop_trains_without_its_clean_validation_split_and_reports_the_test_accuracy_it_chose(
        tmp_path, tiny_npz, monkeypatch):
    import bench.runner

    seen = {}
    train_model = bench.runner.train_model
    prepare = JPEG.prepare

    def spy(model, train, test, recipe, **kwargs):
        seen.setdefault("train", []).append(len(train))
        seen.setdefault("val", []).append(kwargs.get("val"))
        return train_model(model, train, test, recipe, **kwargs)

    monkeypatch.setattr(bench.runner, "train_model", spy)
    monkeypatch.setattr(JPEG, "prepare", lambda self, images, labels: seen.setdefault("jpeg", []).append(len(images))
                        or prepare(self, images, labels))
    config = {"early_stop": {"val_size": 50}, "iss_gray": {"both_train_test": True}, "orthogonal_projection": {"epochs": 2}}
    defenses = ["none", "early_stop", "jpeg+early_stop", "iss_gray+early_stop", "orthogonal_projection+early_stop"]
    counts, records = _run(tmp_path, tiny_npz, ["ops"], defenses, epochs=3, config=config)
    assert counts["done"] == 5, [r.error for r in records.values()]
    assert seen["train"] == [200, 150, 150, 150, 150] and seen["val"][0] is None
    assert seen["jpeg"] == [150], "the validation rows leave the set before any set-level stage sees it"
    rows = DEFENSES.create("early_stop", {"val_size": 50}).holdout(torch.arange(200) % 10)
    clean = torch.from_numpy(np.load(tiny_npz)["x_train"]).permute(0, 3, 1, 2)[rows]
    assert torch.equal(seen["val"][1].images, clean), "validation images are the clean ones"
    assert torch.equal(seen["val"][3].images, pil_luma(clean)), "and pass through the test-time stages"
    assert torch.equal(seen["val"][4].images, DEFENSES.create("orthogonal_projection").prepare_test(clean))
    assert "test_acc_early_stop" not in records[("ops", "none")].metrics
    for defense in defenses[1:]:
        record = records[("ops", defense)]
        stop = max(record.history, key=lambda h: h["val_acc"])
        assert record.metrics["early_stop_epoch"] == stop["epoch"]
        assert record.metrics["test_acc_early_stop"] == stop["test_acc"] and record.metrics["val_acc_best"] == stop["val_acc"]

"""Content, not names: a store never counts cells of other data as done, nor serves a replaced file's poison."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from bench.data import DataSpec, load_dataset
from bench.registry import ATTACKS
from bench.context import RunContext
from methods.base import BudgetError
from test_cli import bench, write_grid


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


def poison_meta(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (out / "cache" / "poisons").glob("*.json")]


def test_data_replaced_under_the_same_name_runs_its_cells_again_and_keeps_the_old_records(tmp_path, tiny_npz):
    data = tmp_path / "data.npz"
    data.write_bytes(tiny_npz.read_bytes())
    grid = write_grid(tmp_path / "g.toml", data, ["clean", "random_noise"], ("none", "jpeg"))
    out = tmp_path / "out"
    bench("run", "--grid", str(grid), "--out", str(out))
    first = records(out)
    assert len(first) == 4 and len({r["data_fingerprint"] for r in first.values()}) == 1
    # Other images under the same file name (as BENCH_CIFAR10 pointed at another copy).
    arrays = dict(np.load(data))
    arrays["x_train"] = 255 - arrays["x_train"]
    np.savez(data, **arrays)
    again = bench("run", "--grid", str(grid), "--out", str(out))
    assert "grid g: 4 cells run, 0 already done" in again.stdout
    assert "its record was made on other data" in again.stderr and "made from other data" in again.stderr
    second = records(out)
    assert second.keys() == first.keys()
    assert all(second[k]["data_fingerprint"] != first[k]["data_fingerprint"] for k in first)
    kept = sorted((out / "records" / "superseded").glob("*.json"))
    assert len(kept) == 4 and {json.loads(p.read_text())["data_fingerprint"] for p in kept} == {
        first[k]["data_fingerprint"] for k in first}, "no finished result is lost"
    noise = [m for m in poison_meta(out) if m.get("attack") == "random_noise"]
    assert [m["data_fingerprint"] for m in noise] == [second[next(iter(second))]["data_fingerprint"]]
    # The same data again: nothing to do.
    assert "0 cells run, 4 already done" in bench("run", "--grid", str(grid), "--out", str(out)).stdout


def test_an_external_poison_replaced_at_the_same_path_is_read_and_checked_again(tmp_path, tiny_npz):
    clean = np.load(tiny_npz)["x_train"].astype(np.int16)
    poison = tmp_path / "p.npz"
    np.savez(poison, x_train=np.clip(clean + 2, 0, 255).astype(np.uint8))
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["external"], ("none",),
                      extra=f'[config.external]\npath = "{poison}"\neps = 0.0313725')
    out = tmp_path / "out"
    bench("run", "--grid", str(grid), "--out", str(out))
    np.savez(poison, x_train=np.clip(clean + 20, 0, 255).astype(np.uint8))  # now 20/255 > its 8/255 claim
    proc = bench("run", "--grid", str(grid), "--out", str(out), "--defenses", "none,jpeg", check=False)
    # Both cells run: the done one was made with the old file (its input fingerprint says so).
    assert proc.returncode == 1 and "2 failed" in proc.stdout and "its attack's file was replaced" in proc.stderr
    for record in records(out).values():
        assert record["status"] == "failed" and record["error"]["type"] == "BudgetError" and record["attempts"] == 1
    assert not poison_meta(out), "external poisons are never cached"
    assert len(list((out / "records" / "superseded").glob("*.json"))) == 1, "no finished result is lost"


def test_external_checks_every_image_of_the_file_not_only_the_subset(tmp_path, tiny_npz):
    spec = DataSpec(name=str(tiny_npz), train_size=100)
    data = load_dataset(spec)
    full = np.load(tiny_npz)["x_train"].astype(np.int16)
    outside = np.setdiff1d(np.arange(len(full)), data.train.index.numpy())
    full[outside] += 20  # over budget only where the grid does not look
    path = tmp_path / "p.npz"
    np.savez(path, x_train=np.clip(full, 0, 255).astype(np.uint8))
    attack = ATTACKS.create("external", {"path": str(path), "eps": 8 / 255})
    assert attack(data.train, RunContext()).images.shape == data.train.images.shape  # the subset alone passes
    ctx = RunContext(full_train=lambda: load_dataset(DataSpec(name=str(tiny_npz))).train)
    try:
        attack(data.train, ctx)
    except BudgetError as err:
        assert f"{path}, all 200 images: poison breaks its linf budget" in str(err)
    else:
        raise AssertionError("an over-budget image outside the subset must be refused")


def test_a_bad_dataset_stops_the_run_in_one_line_before_any_cell(tmp_path, tiny_npz):
    arrays = dict(np.load(tiny_npz))
    arrays["y_train"] = arrays["y_train"] - 1
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    grid = write_grid(tmp_path / "g.toml", bad, ["clean", "random_noise"], ("none", "jpeg"))
    proc = bench("run", "--grid", str(grid), "--out", str(tmp_path / "out"), check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode == 1 and errors == [f"Error: dataset {bad}: y_train labels run from -1 to 8; they must be "
                                               "0 to 9"], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "records").exists()


def test_an_arch_that_cannot_take_the_images_stops_the_run_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    small = tmp_path / "small.npz"
    np.savez(small, x_train=rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8), y_train=np.arange(20) % 10,
             x_test=rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8), y_test=np.arange(10) % 10)
    grid = write_grid(tmp_path / "g.toml", small, ["clean"])
    proc = bench("run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--archs", "vgg11", check=False)
    assert proc.returncode == 1 and "Error: arch vgg11: cannot take the 3x16x16 images of" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "records").exists()

"""Run the cells of a grid on the local device, one record per finished cell.

A cell whose record says `done` is never run again; a cell that fails is recorded with its error
and traceback, and the grid goes on. Poisons are generated once per (data, attack, config, seed),
cached on disk under that key, and reused by every defense, architecture and recipe. A set-level
defense (JPEG, grayscale, ...) runs once per poison the same way: its output is cached under the
poison key and the configs of the defense stages that act on the set.
"""
from __future__ import annotations

import logging
import platform
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from tqdm import tqdm

import bench
from bench.context import RunContext
from bench.data import Dataset, load_dataset
from bench.grid import CellSpec, Grid
from bench.config import as_dict
from bench.registry import ARCHS, ATTACKS, create_defense
from bench.store import Store, canonical_hash
from bench.train import train_model
from methods.base import Poison, check_budget

log = logging.getLogger("bench")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def provenance(device: torch.device) -> dict:
    return {
        "package_version": bench.__version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }


def _git_commit() -> str | None:
    root = Path(bench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class PoisonSource:
    """Poisons for cells: from memory (the last one), the disk cache, or the attack itself."""

    def __init__(self, store: Store, device: torch.device):
        self.store = store
        self.device = device
        self._last: tuple[str, Poison, dict] | None = None
        self._failed: dict[str, BaseException] = {}

    def get(self, cell: CellSpec, data: Dataset) -> tuple[Poison, dict]:
        key = cell.poison_key
        if key in self._failed:
            raise self._failed[key]
        if self._last and self._last[0] == key:
            return self._last[1], {**self._last[2], "cached": True}
        attack_cls = ATTACKS.get(cell.attack)
        cached = self.store.load_poison(key) if getattr(attack_cls, "cacheable", True) else None
        if cached is not None:
            images, meta = cached
            poison = Poison(torch.from_numpy(images).to(self.device), meta["norm"], meta["budget"])
            meta = {**meta, "cached": True}
        else:
            try:
                poison, meta = self._generate(cell, data)
            except Exception as err:
                self._failed[key] = err
                raise
        # The budget is checked on every use, whoever made the poison and wherever it was stored.
        meta["measured"] = check_budget(data.train.images, poison)
        self._last = (key, poison, meta)
        return poison, meta

    def _generate(self, cell: CellSpec, data: Dataset) -> tuple[Poison, dict]:
        attack = ATTACKS.create(cell.attack, cell.attack_config)
        log.info("generating poison %s: %s (seed %d)", cell.poison_key, cell.attack, cell.seed)
        start = time.perf_counter()
        work_dir = self.store.root / "cache" / "work" / cell.poison_key
        ctx = RunContext(device=self.device, seed=cell.seed, cache_dir=self.store.root / "cache", work_dir=work_dir)
        poison = attack(data.train, ctx)
        meta = {"key": cell.poison_key, "attack": cell.attack, "attack_config": cell.attack_config, "seed": cell.seed,
                "norm": poison.norm, "budget": poison.budget, "generate_seconds": time.perf_counter() - start,
                "cached": False}
        if getattr(attack, "cacheable", True):
            self.store.save_poison(cell.poison_key, poison.images.cpu().numpy(), meta)
        shutil.rmtree(work_dir, ignore_errors=True)  # resumable state is no longer needed
        return poison, meta


class PreparedSets:
    """Training and test sets after a defense's set-level stages, computed once per poison.

    Keyed by the poison key and the (name, config) of every stage that acts on the set, in order,
    so `jpeg`, `jpeg+cutout` and `jpeg+at` share one compressed set. Training sets are kept in
    memory for the current poison and on disk beside the poisons (same hash-checked cache); test
    sets, which do not depend on the poison, in memory.
    """

    def __init__(self, store: Store):
        self.store = store
        self._train: dict[str, torch.Tensor] = {}
        self._test: dict[str, torch.Tensor] = {}
        self._poison_key: str | None = None

    def get(self, cell: CellSpec, defense, poison: Poison, data: Dataset, cacheable: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if cell.poison_key != self._poison_key:  # cells are grouped by poison: drop the last poison's sets
            self._train.clear()
            self._poison_key = cell.poison_key
        train_stages = defense.stages("prepare")
        key = "prepared-" + canonical_hash({"poison": cell.poison_key, "stages": _signature(train_stages)})
        if not train_stages:
            train_images = poison.images
        elif key in self._train:
            train_images = self._train[key]
        else:
            cached = self.store.load_poison(key) if cacheable else None
            if cached is not None:
                train_images = torch.from_numpy(cached[0]).to(poison.images.device)
            else:
                train_images = defense.prepare(poison.images, data.train.labels)
                if cacheable:
                    self.store.save_poison(key, train_images.cpu().numpy(), {
                        "kind": "prepared", "poison_key": cell.poison_key, "stages": _signature(train_stages)})
            self._train[key] = train_images
        test_stages = defense.stages("prepare_test")
        test_key = canonical_hash(_signature(test_stages))
        if not test_stages:
            test_images = data.test.images
        elif test_key not in self._test:
            test_images = self._test[test_key] = defense.prepare_test(data.test.images)
        else:
            test_images = self._test[test_key]
        return train_images, test_images


def _signature(stages) -> list:
    return [[stage.name, as_dict(stage.config)] for stage in stages]


def run_cell(cell: CellSpec, data: Dataset, poisons: PoisonSource, device: torch.device, on_epoch=None,
             prepared: PreparedSets | None = None) -> dict:
    """Train and evaluate one cell; returns the metrics part of its record."""
    poison, poison_meta = poisons.get(cell, data)
    defense = create_defense(cell.defense, cell.defense_config, num_classes=data.train.num_classes)
    prepared = prepared or PreparedSets(poisons.store)
    start = time.perf_counter()
    cacheable = getattr(ATTACKS.get(cell.attack), "cacheable", True)
    train_images, test_images = prepared.get(cell, defense, poison, data, cacheable)
    defense_seconds = time.perf_counter() - start
    torch.manual_seed(cell.seed)
    model = ARCHS.create(cell.arch, cell.arch_config, num_classes=data.train.num_classes)
    result = train_model(
        model, data.train.with_images(train_images), data.test.with_images(test_images), cell.recipe,
        seed=cell.seed, augment=defense.augment, adversary=defense.adversary, on_epoch=on_epoch,
    )
    return {
        "metrics": {"test_acc_last": result.test_acc_last, "test_acc_best": result.test_acc_best,
                    "best_epoch": result.best_epoch, "train_acc": result.train_acc},
        "history": result.history,
        "poison": poison_meta,
        "timings": {"generate_s": 0.0 if poison_meta.get("cached") else poison_meta["generate_seconds"],
                    "defense_prepare_s": defense_seconds, "train_s": result.seconds,
                    "images_per_second": result.images_per_second},
    }


def run_grid(grid: Grid, store: Store, device: torch.device, progress: bool | None = None) -> dict[str, int]:
    """Run every cell of `grid` that has no `done` record. Returns counts of done/failed/skipped."""
    cells = grid.cells()
    pending = [c for c in cells if not store.is_done(c.cell_id)]
    counts = {"skipped": len(cells) - len(pending), "done": 0, "failed": 0}
    log.info("grid %s: %d cells, %d already done, %d to run on %s", grid.name, len(cells), counts["skipped"], len(pending), device)
    if not pending:
        return counts
    data = load_dataset(grid.data, device)
    poisons = PoisonSource(store, device)
    prepared = PreparedSets(store)
    env = provenance(device)
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(pending, desc=f"grid {grid.name}", unit="cell", disable=not show_bar)
    for cell in bar:
        label = f"{cell.attack} / {cell.defense} / {cell.arch} / seed {cell.seed}"
        bar.set_postfix_str(label)
        start = time.perf_counter()
        base = {"cell_id": cell.cell_id, "grid": grid.name, "spec": cell.to_dict(), "provenance": env}

        def on_epoch(rec: dict, label=label) -> None:
            bar.set_postfix_str(f"{label}: epoch {rec['epoch']} test {rec['test_acc']:.1%}")

        try:
            outcome = run_cell(cell, data, poisons, device, on_epoch, prepared)
        except Exception as err:  # record the failure, go on with the grid
            store.write_record({**base, "status": "failed", "wall_seconds": time.perf_counter() - start,
                                "error": {"type": type(err).__name__, "message": str(err),
                                          "traceback": traceback.format_exc()}})
            counts["failed"] += 1
            log.error("cell %s (%s) failed: %s: %s", cell.cell_id, label, type(err).__name__, err)
            continue
        store.write_record({**base, "status": "done", "wall_seconds": time.perf_counter() - start, **outcome})
        counts["done"] += 1
        log.info("cell %s (%s): test acc %.2f%% (best %.2f%%) in %.0f s", cell.cell_id, label,
                 100 * outcome["metrics"]["test_acc_last"], 100 * outcome["metrics"]["test_acc_best"],
                 time.perf_counter() - start)
    return counts

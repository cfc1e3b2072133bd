"""A small stored result set for the report and figure tests: records as the runner writes them.

Specs come from a real grid (so they follow `CellSpec.to_dict`), poisons from the real attack
plugins on a tiny dataset, saved in the store's cache under each cell's poison key. Accuracies and
MI values are made up by formulas the tests can recompute (`accuracy`, `mi`): a cell's two seeds are
1 point either side of its mean, so its sample std is sqrt(2).
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from bench.cell import CellSpec
from bench.context import RunContext
from bench.data import DataSpec, load_dataset
from bench.grid import Grid, parse_grid
from bench.records import CellResult
from bench.registry import ATTACKS
from bench.store import Store

ATTACKS_ = ("clean", "random_noise", "ops")
DEFENSES_ = ("none", "jpeg")
ARCHS_ = ("resnet18", "resnet34", "vgg11")
SEEDS = (0, 1)
EPOCHS = 3
# Mean accuracy (%) per (attack, defense); clean is lowest under jpeg on purpose: a baseline is never bold.
BASE = {("clean", "none"): 90.0, ("clean", "jpeg"): 20.0, ("random_noise", "none"): 80.0,
        ("random_noise", "jpeg"): 60.0, ("ops", "none"): 30.0, ("ops", "jpeg"): 70.0}
DEPTH = {"resnet18": 18, "resnet34": 34, "vgg11": 11}


def accuracy(attack: str, defense: str, arch: str, seed: int) -> float:
    """In %: BASE, minus a point per 10 layers, +- 1 by seed."""
    return BASE[attack, defense] - DEPTH[arch] / 10 + (1.0 if seed else -1.0)


def mi(attack: str, arch: str, seed: int) -> float:
    """Made-up MI in nats: falls with depth for the attacks, flat for clean."""
    return (3.0 if attack == "clean" else 2.0 - DEPTH[arch] / 34) + 0.1 * seed


def grid(npz: Path) -> Grid:
    return parse_grid({"attacks": list(ATTACKS_), "defenses": list(DEFENSES_), "archs": list(ARCHS_),
                       "seeds": list(SEEDS), "recipe": {"preset": "cpu_smoke", "epochs": EPOCHS},
                       "data": {"name": str(npz)}}, "stored")


def write_npz(path: Path) -> Path:
    """The tiny random dataset of conftest's `tiny_npz` (200 train, 100 test images), for module-scoped fixtures."""
    from conftest import synthetic_arrays

    np.savez(path, **synthetic_arrays())
    return path


def build(root: Path, npz: Path) -> tuple[Store, list[CellResult], Grid]:
    """A store under `root` with one record per cell (MI analysis on the `none` cells) and one failed record."""
    store, g = Store(root), grid(npz)
    data = load_dataset(DataSpec(name=str(npz)))
    poisons = {}
    records = []
    for cell in g.cells():
        if cell.poison_key not in poisons:
            poison = poisons[cell.poison_key] = ATTACKS.create(cell.attack)(data.train, RunContext(seed=cell.seed))
            if poison.budget > 0:
                store.save_poison(cell.poison_key, poison.images.numpy(), {"norm": poison.norm, "budget": poison.budget})
        poison = poisons[cell.poison_key]
        acc = accuracy(cell.attack, cell.defense, cell.arch, cell.seed)
        outcome = {
            "metrics": {"test_acc_last": acc / 100, "test_acc_best": (acc + 2) / 100, "best_epoch": EPOCHS,
                        "train_acc": 0.99},
            "history": [{"epoch": e, "test_acc": acc / 100 * e / EPOCHS} for e in range(1, EPOCHS + 1)],
            "poison": {"key": cell.poison_key, "norm": poison.norm, "budget": poison.budget},
            "timings": {"train_s": 1.0},
        }
        if cell.defense == "none":
            value = mi(cell.attack, cell.arch, cell.seed)
            outcome["analysis"] = {"mi_cca": value, "mi_gaussian": value, "mi_ksg": value / 2, "cca_ridge": 1e-6,
                                  "gaussian_shrinkage": 0.01, "cond_cov_trace": 1.0, "cond_cov_ratio": value / 10,
                                  "intra_class_cosine": 1 - value / 10, "max_images": 5000.0, "n_images": 200.0,
                                  "feature_dim": 512.0, "gaussian_dims": 8.0, "ksg_dims": 4.0, "ksg_k": 3.0,
                                  "cca_components": 16.0, "cca_folds": 5.0, "batch_size": 256.0, "seed": 0.0,
                                  "images": "train", "model": "victim", "layer": "features"}
        record = CellResult.finished(cell, g.name, outcome, provenance={}, attempts=1, earlier_errors=[], wall_seconds=1.0)
        store.write_record(record)
        records.append(record)
    failed = replace(records[0], cell_id="f" * 16, status="failed", error={"type": "RuntimeError", "message": "x"})
    store.write_record(failed)
    return store, records + [failed], g


def build_under(root: Path) -> tuple[Store, list[CellResult], Grid]:
    """`build` with the store and the dataset under `root` (a module fixture's temporary folder)."""
    return build(root / "results", write_npz(root / "tiny.npz"))


def sample_std(a: float, b: float) -> float:
    mean = (a + b) / 2
    return math.sqrt((a - mean) ** 2 + (b - mean) ** 2)


def unrun_records(g: Grid, accuracy: Callable[[CellSpec], float]) -> list[CellResult]:
    """A finished record per cell of `g` without running anything: `accuracy(cell)` in % as every accuracy
    metric, and the poison's norm and budget as the attack would record them (for the comparison with
    published numbers, which reads nothing else)."""
    records = []
    for cell in g.cells():
        config = cell.attack_config
        norm, budget = {"ops": ("l0", 1.0), "clean": ("linf", 0.0), "lsp": ("l2", config.get("eps"))}.get(
            cell.attack, ("linf", config.get("eps", 0.0)))
        acc = accuracy(cell) / 100
        outcome = {"metrics": {"test_acc_last": acc, "test_acc_best": acc, "best_epoch": 1, "train_acc": 1.0},
                   "history": [], "poison": {"key": cell.poison_key, "norm": norm, "budget": budget}, "timings": {}}
        records.append(CellResult.finished(cell, g.name, outcome, provenance={}, attempts=1, earlier_errors=[],
                                           wall_seconds=1.0))
    return records

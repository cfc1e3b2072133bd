"""What the measurements run on: CIFAR-10 images or random ones, and synthetic records.

Random images serve where their content does not change the cost (generation, memory); CIFAR-10
serves where it might (training, JPEG, the defenses), with random images where it cannot be had.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from bench.data import DataSpec, DataUnavailable, ImageSet, load_dataset
from bench.cell import CellSpec
from bench.records import CellResult
from bench.registry import ATTACKS, DEFENSES
from bench.train import Recipe


def head(data: ImageSet, n: int) -> ImageSet:
    """The first `n` images of `data`."""
    return data.take(slice(n))


def synthetic_set(n: int, device: torch.device | str = "cpu", num_classes: int = 10) -> ImageSet:
    """Random uint8 CIFAR-sized images with balanced labels, where content does not matter."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % num_classes, torch.arange(n), num_classes, n).to(device)


def training_images(n: int, device: torch.device, echo: Callable[[str], None]) -> ImageSet:
    """The first class-balanced `n` CIFAR-10 training images, or random ones where CIFAR-10 cannot be had."""
    try:
        return load_dataset(DataSpec(train_size=n, test_size=10), device).train
    except DataUnavailable as err:
        echo(f"  (CIFAR-10 unavailable, random images instead: {str(err).splitlines()[0]})")
        return synthetic_set(n, device)


def synthetic_records(n: int, seed: int = 0) -> list[CellResult]:
    """`n` finished-cell records as the runner writes them, over every registered attack and defense."""
    rng = np.random.default_rng(seed)
    attacks, defenses = ATTACKS.names(), DEFENSES.names()
    records = []
    for i in range(n):
        seed_ = i // (len(attacks) * len(defenses))
        cell = CellSpec(DataSpec(), attacks[i % len(attacks)], {}, defenses[i // len(attacks) % len(defenses)], {},
                        "resnet18", {}, Recipe(), "em60", seed_)
        acc = float(rng.uniform(0.1, 0.95))
        records.append(CellResult.finished(cell, "perf", {
            "metrics": {"test_acc_last": acc, "test_acc_best": acc, "best_epoch": 60, "train_acc": 1.0},
            "poison": {"norm": "linf", "budget": 8 / 255}, "history": [], "timings": {"train_s": 100.0},
        }, provenance={}, attempts=1, earlier_errors=[], wall_seconds=100.0))
    return records

"""Early stopping on a small clean validation split that the defender holds out."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.config import ConfigError, require
from bench.data import balanced_subset
from bench.registry import register_defense
from defenses.base import Defense


@dataclass(frozen=True)
class EarlyStopConfig:
    val_size: int = 1000  # clean validation images, class-balanced, taken out of the training split (2% of CIFAR-10)
    split_seed: int = 0  # which images; fixed across cells whatever their seed, as `data.subset_seed`

    def __post_init__(self):
        require(self.val_size >= 1, "val_size", f"must be at least 1, got {self.val_size}")


@register_defense("early_stop", display="Early stopping")
class EarlyStop(Defense):
    """Early stopping on a clean validation split (Prechelt, Early Stopping - But When?, 1998).

    Threat model: the poisoner perturbs the training set; the defender also owns `val_size` clean,
    labelled images of the same distribution, which it does not train on. It validates after
    every epoch and keeps the model of the epoch of best validation accuracy (the first such epoch
    on ties), which the record reports as `test_acc_early_stop`, with `early_stop_epoch` and
    `val_acc_best`; the test set never chooses the epoch. It asks whether a poison's effect
    shows only late in training, once the shortcut has been learned.

    The validation images are a class-balanced, seeded subset of the training split (`holdout`):
    the runner takes them out of the (poisoned) training set before any other defense stage, so
    the victim trains on `val_size` fewer images, and validates on their clean versions, passed
    through the test-time stages of a composition (`iss_gray+early_stop` with `both_train_test`).
    Training runs all its epochs: stopping is a choice of checkpoint afterwards, with unlimited
    patience, so `test_acc_last` of the same record is the no-stopping baseline on the same images.
    There is no official code; the split size is ours (1,000 images, 2% of CIFAR-10; `preset =
    "cpu"` holds out 200 for the CPU grids' few thousand).
    """

    Config = EarlyStopConfig
    paper = "Prechelt, Early Stopping - But When?, Neural Networks: Tricks of the Trade, 1998"
    cite = "prechelt1998early"
    # tiny: a rehearsal's few dozen images (bench.rehearse), one held out per class.
    presets = {"cpu": {"val_size": 200}, "tiny": {"val_size": 10}}

    def holdout(self, labels: torch.Tensor) -> torch.Tensor:
        if self.config.val_size >= len(labels):
            raise ConfigError(f"defense early_stop.val_size: must be smaller than the training set "
                              f"({len(labels)} images), got {self.config.val_size}")
        rows = balanced_subset(labels.cpu().numpy(), self.config.val_size, self.num_classes, self.config.split_seed)
        return torch.from_numpy(rows).to(labels.device)

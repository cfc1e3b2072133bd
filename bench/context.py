"""What a plugin gets from the runner: device, seed, randomness, scratch space and progress."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from bench.data import ImageSet

log = logging.getLogger("bench")


@dataclass
class RunContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    cache_dir: Path | None = None  # shared between runs: trained clean models (TAP), ...
    work_dir: Path | None = None  # this poison's own scratch space: resumable generation state
    progress: bool | None = None  # progress bars; None = only on a terminal
    # Least seconds between two generation checkpoints: a TAP checkpoint of all CIFAR-10 is 300 MB
    # and a batch takes seconds on a GPU, so writing after every batch would cost a third of the run.
    checkpoint_every_s: float = 60.0
    # What this poison's generation state is made from (the runner's `work_stamp`: the data's
    # fingerprint, the attack, its config and seed); a checkpoint with another stamp is not resumed.
    stamp: str = ""
    # The whole clean training split, loaded on demand, for an attack that must check more than the
    # subset it poisons (external checks every image of a file); None outside a run.
    full_train: Callable[[], ImageSet] | None = None

    def generator(self, device: torch.device | str | None = None) -> torch.Generator:
        """A fresh generator seeded from the cell seed: same seed, same draws."""
        g = torch.Generator(device=device or self.device)
        g.manual_seed(self.seed)
        return g

    def log(self, message: str) -> None:
        log.info(message)

    def bar(self, total: int, desc: str, initial: int = 0) -> tqdm:
        """A progress bar over rounds; quiet off a terminal, where `log` lines stand in for it."""
        show = sys.stderr.isatty() if self.progress is None else self.progress
        return tqdm(total=total, desc=desc, initial=initial, unit="round", disable=not show, leave=False)

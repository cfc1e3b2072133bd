"""What a plugin gets from the runner: device, seed, randomness and progress."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("bench")


@dataclass
class RunContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    cache_dir: Path | None = None  # where a plugin may keep files between runs (surrogates, ...)

    def generator(self, device: torch.device | str | None = None) -> torch.Generator:
        """A fresh generator seeded from the cell seed: same seed, same draws."""
        g = torch.Generator(device=device or self.device)
        g.manual_seed(self.seed)
        return g

    def log(self, message: str) -> None:
        log.info(message)

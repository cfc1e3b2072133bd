"""The defense interface: up to three points where a defense acts on training.

- `prepare(images, labels)`: once, on the whole (poisoned) training set, uint8 in and out;
  `prepare_test(images)` where the defense also changes test inputs.
- `augment(x, y)`: per batch on the device, float images in [0, 1]; may return soft labels.
- `adversary`: an inner maximisation run each step (adversarial training).

The identity at every point is the default, so a defense overrides only where it acts.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch


class Defense:
    name: ClassVar[str]
    Config: ClassVar[type]
    paper: ClassVar[str] = ""
    adversary: Callable | None = None

    def __init__(self, config):
        self.config = config

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return images

    def prepare_test(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

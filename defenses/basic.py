"""No defense, and JPEG compression of the training set."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

from bench.config import require
from bench.registry import register_defense
from defenses.base import Defense


@dataclass(frozen=True)
class NoConfig:
    pass


@register_defense("none")
class NoDefense(Defense):
    """Standard training on the (poisoned) data."""

    Config = NoConfig


@dataclass(frozen=True)
class JPEGConfig:
    quality: int = 10  # JPEG quality 1..100; 10 as in ISS (Liu et al., ICML 2023)

    def __post_init__(self):
        require(1 <= self.quality <= 100, "quality", f"must be in 1..100, got {self.quality}")


@register_defense("jpeg")
class JPEG(Defense):
    """JPEG-compress the whole training set once (Liu et al., ICML 2023, ISS).

    Uses torchvision's JPEG (libjpeg, 4:2:0), applied in chunks; test images are left alone.
    """

    Config = JPEGConfig
    paper = "Liu et al., Image Shortcut Squeezing: Countering Perturbative Availability Poisons with Compression, ICML 2023"

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        device = images.device
        cpu = images.cpu()
        chunks = [TF.jpeg(cpu[i : i + 2048], quality=self.config.quality) for i in range(0, len(cpu), 2048)]
        return torch.cat(chunks).to(device)

"""Batch-level augmentations that erase or mix image regions: cutout, mixup, cutmix.

They run per batch on the device after the training loop's crop and flip, on float images in
[0, 1], with torch's global generator (seeded per cell by the runner).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from bench.config import require
from bench.registry import register_defense
from defenses.base import Defense


@dataclass(frozen=True)
class CutoutConfig:
    size: int = 16  # side of the square hole in pixels; 16 for CIFAR (DeVries & Taylor)

    def __post_init__(self):
        require(self.size >= 1, "size", f"must be at least 1 pixel, got {self.size}")


@register_defense("cutout")
class Cutout(Defense):
    """Cutout: zero one square hole per image (DeVries & Taylor, arXiv 1708.04552, 2017).

    Threat model: a poison whose shortcut is local (OPS's single pixel, patch-like noise); the
    hole removes it from some images. As in the official code (and APBench's `Cutout(16)`), the
    hole's centre is uniform over the image and the hole is clipped at the border, so a hole near
    the edge is smaller than `size` x `size`. One centre per image, drawn as a batched mask;
    torchvision's RandomErasing draws one box per call, which would put every hole of the batch
    in the same place.
    """

    Config = CutoutConfig
    paper = "DeVries & Taylor, Improved Regularization of Convolutional Neural Networks with Cutout, arXiv 2017"
    cite = "devries2017improved"

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        half = self.config.size // 2
        cy = torch.randint(0, h, (n, 1, 1), device=x.device)
        cx = torch.randint(0, w, (n, 1, 1), device=x.device)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        # [c - half, c - half + size): exactly `size` pixels where the hole lies inside the image.
        hole = ((rows >= cy - half) & (rows < cy - half + self.config.size)
                & (cols >= cx - half) & (cols < cx - half + self.config.size))
        return x * (~hole).unsqueeze(1).to(x.dtype), y


@dataclass(frozen=True)
class MixupConfig:
    alpha: float = 1.0  # Beta(alpha, alpha) concentration of the mixing weight; 1.0 = uniform (Zhang et al.)

    def __post_init__(self):
        require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")


class _LabelMixing(Defense):
    """Mixup and CutMix: a torchvision v2 batch transform that returns soft labels."""

    mixes_labels = True
    transform: ClassVar[type]  # v2.MixUp or v2.CutMix

    def __init__(self, config, num_classes: int = 10):
        super().__init__(config, num_classes)
        self._mix = self.transform(alpha=config.alpha, num_classes=num_classes)


@register_defense("mixup")
class Mixup(_LabelMixing):
    """Mixup: train on convex combinations of image pairs and of their labels (Zhang et al., ICLR 2018).

    Threat model: any poison; mixing blends two images' shortcuts and labels, so a shortcut no
    longer predicts the label alone. torchvision's `v2.MixUp`: one weight lam ~ Beta(alpha, alpha)
    per batch, each image mixed with its neighbour in the (already shuffled) batch, labels returned
    as lam * onehot(y) + (1 - lam) * onehot(y'), which the training loop's cross-entropy takes.
    """

    Config = MixupConfig
    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018"
    cite = "zhang2018mixup"
    transform = v2.MixUp

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, y)


@dataclass(frozen=True)
class CutMixConfig:
    alpha: float = 1.0  # Beta(alpha, alpha) concentration of the kept area fraction; 1.0 as Yun et al.
    p: float = 0.5  # probability that a batch is cut and mixed; 0.5 as the official CIFAR setting

    def __post_init__(self):
        require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        require(0 <= self.p <= 1, "p", f"must be a probability in [0, 1], got {self.p}")


@register_defense("cutmix")
class CutMix(_LabelMixing):
    """CutMix: paste a box from another image, labels mixed by area (Yun et al., ICCV 2019).

    Threat model: any poison; the pasted box carries another image's shortcut with its label.
    torchvision's `v2.CutMix` (one box per batch, lam ~ Beta(alpha, alpha), box clipped at the
    border and lam corrected to the pasted area), applied to a batch with probability `p` as the
    official code's `cutmix_prob`. Labels are always distributions (one-hot when not mixed).
    """

    Config = CutMixConfig
    paper = "Yun et al., CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features, ICCV 2019"
    cite = "yun2019cutmix"
    transform = v2.CutMix

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.rand(()) < self.config.p:
            return self._mix(x, y)
        return x, F.one_hot(y, self.num_classes).to(x.dtype)

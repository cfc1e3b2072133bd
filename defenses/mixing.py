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

from bench.config import added_field, require
from bench.registry import register_defense
from defenses.base import Defense


@dataclass(frozen=True)
class CutoutConfig:
    size: int = 16  # side of the square hole in pixels; 16 for CIFAR (DeVries & Taylor)

    def __post_init__(self):
        require(self.size >= 1, "size", f"must be at least 1 pixel, got {self.size}")


@register_defense("cutout", display="Cutout")
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
        cy = torch.randint(0, h, (n,), device=x.device)
        cx = torch.randint(0, w, (n,), device=x.device)
        # [c - half, c - half + size): exactly `size` pixels where the hole lies inside the image.
        hole = box_mask(cy - half, cx - half, self.config.size, self.config.size, h, w)
        return x * (~hole).unsqueeze(1).to(x.dtype), y


def box_mask(top, left, height, width, h: int, w: int) -> torch.Tensor:
    """(n, h, w) bool: rows [top, top + height) and columns [left, left + width) of each image.

    `top`, `left`, `height`, `width`: (n,) tensors (or ints for the sizes), in pixels; the box is
    clipped at the border, as comparisons clip it.
    """
    device = top.device
    shape = (-1, 1, 1)
    top, left = top.view(shape), left.view(shape)
    # Cutout's sizes are ints, which broadcast as they are: no device tensors made per batch for them.
    height, width = (v.view(shape) if torch.is_tensor(v) else v for v in (height, width))
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    return (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)


@dataclass(frozen=True)
class MixupConfig:
    alpha: float = 1.0  # Beta(alpha, alpha) concentration of the mixing weight; 1.0 = uniform (Zhang et al.)
    # One weight and one random partner per image (kornia RandomMixUpV2, as APBench runs it) instead
    # of one weight per batch (Zhang et al.); preset "apbench".
    per_image: bool = added_field(False)

    def __post_init__(self):
        require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")


class _LabelMixing(Defense):
    """Mixup and CutMix: a torchvision v2 batch transform that returns soft labels, or APBench's per-image kornia mix."""

    mixes_labels = True
    transform: ClassVar[type]  # v2.MixUp or v2.CutMix
    presets = {"apbench": {"per_image": True}}

    def __init__(self, config, num_classes: int = 10):
        super().__init__(config, num_classes)
        self._mix = self.transform(alpha=config.alpha, num_classes=num_classes)

    def _partners(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor):
        """A random permutation's partner for each image (itself included, as kornia's), and the
        labels (1 - weight) * onehot(y) + weight * onehot(partner's y), `weight` (n,) the partner's share."""
        partner = torch.randperm(len(x), device=x.device)
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)
        weight = weight.to(x.dtype).view(-1, 1)
        return partner, (1 - weight) * onehot + weight * onehot[partner]

    def _beta(self, n: int, device: torch.device) -> torch.Tensor:
        """n draws of Beta(alpha, alpha); at alpha 1 this is kornia's U(0, 1)."""
        alpha = torch.tensor(float(self.config.alpha), device=device)
        return torch.distributions.Beta(alpha, alpha).sample((n,))


@register_defense("mixup", display="Mixup")
class Mixup(_LabelMixing):
    """Mixup: train on convex combinations of image pairs and of their labels (Zhang et al., ICLR 2018).

    Threat model: any poison; mixing blends two images' shortcuts and labels, so a shortcut no
    longer predicts the label alone. Labels come back as lam * onehot(y) + (1 - lam) * onehot(y'),
    which the training loop's cross-entropy takes (the same loss as the official pair of
    cross-entropies).

    - Default, the paper's setting (facebookresearch/mixup-cifar10 `train.py` at eaff31a): one
      weight lam ~ Beta(alpha, alpha) per batch, alpha 1.0. Through torchvision's `v2.MixUp`, which
      pairs each image with its neighbour in the (already shuffled) batch where the official code
      draws a random permutation; with shuffled batches both are a uniformly random pairing.
    - `preset = "apbench"` (`per_image = true`): what APBench's `train.py --mixup` runs, kornia's
      `RandomMixUpV2()` at its defaults (kornia 0.6.12, APBench's requirements;
      `augmentation/_2d/mix/mixup.py` and `random_generator/_2d/mixup.py`): every image its
      own weight ~ U(0, 1) (Beta(alpha, alpha) here, the same at alpha 1), a partner from a random
      permutation (possibly itself), every batch (p = 1). Written with torch, without kornia.
    """

    Config = MixupConfig
    paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018"
    cite = "zhang2018mixup"
    transform = v2.MixUp

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.config.per_image:
            return self._mix(x, y)
        weight = self._beta(len(x), x.device)  # the partner's share, per image
        partner, labels = self._partners(x, y, weight)
        w = weight.to(x.dtype).view(-1, 1, 1, 1)
        return (1 - w) * x + w * x[partner], labels


@dataclass(frozen=True)
class CutMixConfig:
    alpha: float = 1.0  # Beta(alpha, alpha) concentration of the kept area fraction; 1.0 as Yun et al.
    p: float = 0.5  # probability that a batch is cut and mixed; 0.5 as the official CIFAR setting
    # A box of its own size and a random partner per image (kornia RandomCutMixV2, as APBench runs
    # it) instead of one box per batch (Yun et al.); preset "apbench", with p = 1.
    per_image: bool = added_field(False)

    def __post_init__(self):
        require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        require(0 <= self.p <= 1, "p", f"must be a probability in [0, 1], got {self.p}")


@register_defense("cutmix", display="CutMix")
class CutMix(_LabelMixing):
    """CutMix: paste a box from another image, labels mixed by area (Yun et al., ICCV 2019).

    Threat model: any poison; the pasted box carries another image's shortcut with its label.
    A batch is cut and mixed with probability `p`; labels are always distributions (one-hot when
    not mixed), weighted by the pasted area.

    - Default, the paper's setting (clovaai/CutMix-PyTorch `train.py` at 2d8eb68, CIFAR:
      `--beta 1.0 --cutmix_prob 0.5`): torchvision's `v2.CutMix`, one box per batch with
      lam ~ Beta(alpha, alpha), its centre uniform, clipped at the border, lam corrected to the
      pasted area, as the official `rand_bbox`.
    - `preset = "apbench"` (`per_image = true`, `p = 1`): what APBench's `train.py --cutmix` runs,
      kornia's `RandomCutMixV2()` at its defaults (kornia 0.6.12, `augmentation/_2d/mix/cutmix.py`
      and `random_generator/_2d/cutmix.py`, the same at kornia's HEAD): every batch, and per
      image a partner from a random permutation (possibly itself) and a box of
      floor(sqrt(1 - b) * H) x floor(sqrt(1 - b) * W) pixels, b ~ Beta(1, 1) (Beta(alpha, alpha)
      here), labels weighted by its area. kornia places the boxes with one start fraction per
      batch: start = floor(u * (W - width - 1)) with one u for the columns and one for the rows, so
      the boxes lie inside the image, off its last row and column, and move together; kept here
      as kornia does it. Written with torch, without kornia.
    """

    Config = CutMixConfig
    paper = "Yun et al., CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features, ICCV 2019"
    cite = "yun2019cutmix"
    presets = {"apbench": {"per_image": True, "p": 1.0}}
    transform = v2.CutMix

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.rand(()) < self.config.p:
            return x, F.one_hot(y, self.num_classes).to(x.dtype)
        if not self.config.per_image:
            return self._mix(x, y)
        n, _, h, w = x.shape
        rate = (1 - self._beta(n, x.device)).sqrt()
        height, width = (rate * h).floor().long(), (rate * w).floor().long()
        u = torch.rand(2, device=x.device)  # kornia: one start fraction per batch, columns then rows
        left = (u[0] * (w - width - 1)).floor().long().clamp(min=0)
        top = (u[1] * (h - height - 1)).floor().long().clamp(min=0)
        box = box_mask(top, left, height, width, h, w)
        partner, labels = self._partners(x, y, (height * width).to(x.dtype) / (h * w))
        return torch.where(box.unsqueeze(1), x[partner], x), labels

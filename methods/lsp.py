"""Linearly separable synthetic perturbations (LSP)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.config import require
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from methods.base import Attack, Poison, apply_delta

log = logging.getLogger("bench")


@dataclass(frozen=True)
class LSPConfig:
    eps: float = math.sqrt(3072) * 6 / 255  # L2 norm per image, [0, 1] units (official --eps 6: about 1.30)
    patch_size: int = 8  # each synthetic coordinate fills a patch_size x patch_size block
    class_sep: float = 10.0  # make_classification's class_sep, as in the official code

    def __post_init__(self):
        require(self.eps > 0, "eps", f"must be positive (L2 norm in [0, 1] units), got {self.eps}")
        require(self.patch_size >= 1, "patch_size", f"must be at least 1, got {self.patch_size}")


@register_attack("lsp", display="LSP")
class LinearlySeparablePerturbation(Attack):
    """Model-free, sample-wise: a synthetic point per image from a linearly separable mixture.

    Yu et al., "Availability Attacks Create Shortcuts", KDD 2022. Threat model: L2, one
    perturbation per image, no model. For 32x32x3 images and 8x8 patches each perturbation is a
    48-d point drawn by scikit-learn's `make_classification` (all features informative, one
    cluster per class), laid out as a 4x4x3 grid, each cell repeated over an 8x8 patch, and scaled
    to exactly the L2 budget. The k-th point of class c goes to the k-th image of class c (dataset
    order). As the official `cifar_train.py`, except: sklearn's `random_state` is the cell seed
    (the official script seeds NumPy's global RNG with 1), and the poison is rounded to the nearest
    uint8 level where the official code truncates (truncation shifts every pixel down by half a
    level on average and can break the budget); an image that rounding would push past the budget
    is shrunk by 0.5% and rounded again (`apply_delta`). As the perturbation is constant over each
    patch, rounding errs coherently over 64 pixels: published poisons sit 0-2% under the budget.

    Other image sizes: the grid is (H/patch_size) x (W/patch_size) x C features (8x8x3 = 192 on
    64x64 images with the default 8-pixel patches). The default `eps` is CIFAR's (6/255 per pixel
    over 32x32x3); the official generator scales the L2 budget with the image, 6/255 * sqrt(H*W*C)
    (APBench's ImageNet-100 script, which also widens patches to 32 pixels at 224x224), so on other
    sizes set `eps` to that (2.61 on 64x64x3): `generate` warns where the default meets another size.
    """

    Config = LSPConfig
    paper = "Yu et al., Availability Attacks Create Shortcuts, KDD 2022"
    cite = "yu2022availability"
    seeded = True

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        from sklearn.datasets import make_classification  # scikit-learn loads only when LSP runs

        n, channels, height, width = data.images.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"lsp.patch_size {p} must divide the image size {height}x{width}")
        grid_h, grid_w = height // p, width // p
        if (channels, height, width) != (3, 32, 32) and self.config.eps == LSPConfig.eps:
            log.warning("lsp: the default eps (%.2f) is the L2 budget of 32x32x3 images; the official scaling for "
                        "%dx%dx%d images is eps = %.2f (6/255 * sqrt(H*W*C))", self.config.eps, height, width,
                        channels, 6 / 255 * math.sqrt(channels * height * width))
        labels = data.labels.cpu().numpy()
        counts = np.bincount(labels, minlength=data.num_classes)
        per_class = int(counts.max())
        points, point_labels = make_classification(
            n_samples=per_class * data.num_classes, n_features=grid_h * grid_w * channels,
            n_informative=grid_h * grid_w * channels, n_redundant=0, n_repeated=0,
            n_classes=data.num_classes, n_clusters_per_class=1, class_sep=self.config.class_sep,
            flip_y=0.0, random_state=ctx.seed,
        )
        delta = np.zeros((n, channels, height, width), np.float32)
        for c in range(data.num_classes):
            members = np.flatnonzero(labels == c)
            grid = points[point_labels == c][: len(members)].reshape(-1, grid_h, grid_w, channels).transpose(0, 3, 1, 2)
            delta[members] = grid.repeat(p, axis=2).repeat(p, axis=3)
        delta /= np.linalg.norm(delta.reshape(n, -1), axis=1).reshape(n, 1, 1, 1)
        delta = torch.from_numpy(delta * self.config.eps).to(data.device)
        return Poison(apply_delta(data.images, delta, "l2", self.config.eps), "l2", self.config.eps)

"""Orthogonal projection: remove the directions a linear model finds in the poisoned training set.

Sandoval-Segura et al., What Can We Learn from Unlearnable Datasets?, NeurIPS 2023 (Algorithm 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from bench.config import require
from bench.registry import register_defense
from defenses.base import Defense

MILESTONES = (0.5, 0.75)  # fractions of the epochs where the learning rate is divided by 10, as the official MultiStepLR
PROJECTION_CHUNK = 4096  # images converted to float at a time: all of CIFAR-10 in float32 would be 600 MB


@dataclass(frozen=True)
class ProjectionConfig:
    epochs: int = 20  # passes of SGD over the poisoned set for the linear model (official --epochs 20)
    lr: float = 0.1  # SGD learning rate, no momentum or weight decay (official); /10 at 50% and 75% of the epochs
    batch_size: int = 1024  # images per step (official)
    init_seed: int = 0  # seed of the linear model's initial weights, fixed so the projected set is a function of the poison
    # Projected pixels in [0, 1] units that the 256 uint8 levels span, train and test alike (see the class docstring).
    pixel_range: tuple[float, float] = (-1.0, 2.0)
    # The projected value, in [0, 1] units, the victim's random crop pads with: the official 0.0 (its
    # RandomCrop pads the projected floats with 0); the range's low end pads with code 0.
    pad_value: float = 0.0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        low, high = self.pixel_range
        require(low <= 0 and high >= 1 and high > low, "pixel_range",
                f"must be (low, high) with low <= 0 and high >= 1, so that it holds every [0, 1] pixel, got {self.pixel_range}")
        require(low <= self.pad_value <= high, "pad_value",
                f"must lie in pixel_range {list(self.pixel_range)}, got {self.pad_value}")


@register_defense("orthogonal_projection", display="Orthogonal projection")
class OrthogonalProjection(Defense):
    """Orthogonal projection (Sandoval-Segura et al., NeurIPS 2023, Algorithm 1).

    Threat model: a poisoner whose perturbations are (close to) linearly separable by class, such as
    LSP's class-clustered patches and OPS's class-wise pixels. The defender fits a bias-free linear
    classifier on the flattened poisoned training images, takes its C class weight vectors as the
    perturbation directions, and projects every training image onto their orthogonal complement:
    x <- x - Q Q^T x, with Q the orthonormal basis (QR) of the normalised weight vectors. Test
    images are not projected.

    As the official code (psandovalsegura/learn-from-unlearnable at 605dea2,
    `orthogonal_projection_step_1.py`, `utils_projection.py`): the linear model sees the whole
    poisoned training set as [0, 1] pixels without normalisation or augmentation, in the dataset's
    order (its loader does not shuffle), trained by plain SGD at lr 0.1, batch 1024, 20 epochs,
    lr / 10 at 50% and 75% of them; its initial weights are torch's default for `nn.Linear`
    (uniform within 1/sqrt(3072)), drawn here from `init_seed` so that the projected set, which
    the runner caches per poison, does not depend on the cell's seed.

    Departure, and why: projection moves pixels far out of [0, 1], since the class directions
    share much of the mean image (fit as the official code on 2,000 CIFAR-10 images, 38% of the
    projected values fell outside [0, 1], from -1.6 to 1.6). The official code trains on those
    floats unclipped and tests on the untouched test images, both normalised alike. Prepared sets
    here are uint8, and clipping would flatten over a third of the values, so the projected
    training images and the test images both pass through one
    fixed affine map of `pixel_range` (default [-1, 2], which held all but 0.02% of those values)
    onto the 256 levels, rounded, the rare values outside it clipped. The victim thus sees the
    official (train, test) pair under one affine map, which a first convolution followed by batch
    normalisation cancels (as it does the official mean/std normalisation) except at zero-padded
    borders, at a coarser step: 3/255 of a pixel. The victim's random crop pads with the code of
    the projected value `pad_value` = 0.0 (`crop_fill`, 85 at the default map), as the official RandomCrop pads
    the projected float tensors with 0 (`orthogonal_projection_step_2.py`, its RandomCrop(padding=4)
    in both transform branches, applied by `CustomTensorDataset` to the projected data); where
    0.0 falls between two codes of a custom `pixel_range`, the nearer code, half a step off at most.
    Per-batch defenses composed after it act in the
    mapped units (`orthogonal_projection+at` at 8/255 is 24/255 of a pixel). The official step 2
    also trains its victim with strong augmentation (rotation, affine, colour jitter) and CutMix;
    that is the victim's recipe, not the defense, and is left out (`orthogonal_projection+cutmix`
    adds CutMix).
    """

    Config = ProjectionConfig
    paper = "Sandoval-Segura et al., What Can We Learn from Unlearnable Datasets?, NeurIPS 2023"
    cite = "sandovalsegura2023what"
    # The official fit takes 20 x 49 = 980 SGD steps on all of CIFAR-10; on the CPU grids' 2,000
    # images 20 epochs are 40 steps, too few for a linear model to find the shortcut, so the CPU
    # preset takes as many steps as the official fit.
    # tiny: a rehearsal (bench.rehearse); 4 epochs still pass both learning-rate steps (50%, 75%).
    presets = {"cpu": {"epochs": 500}, "tiny": {"epochs": 4}}

    @property
    def crop_fill(self) -> int:
        """The code of the projected value `pad_value` (0.0: as the official pads the floats with 0): the victim's crop pads with it."""
        low, high = self.config.pixel_range
        return round((self.config.pad_value - low) * 255 / (high - low))

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        basis = class_directions(self.fit_linear(images, labels))
        return self.encode(images, basis)

    def prepare_test(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)  # untouched, as the official test set, under the training images' map

    def encode(self, images: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 NCHW images, their components along `basis` (D, C) removed where given, in [0, 1]
        pixel units, mapped from `pixel_range` onto the 256 levels, rounded and clipped."""
        low, high = self.config.pixel_range
        out = torch.empty_like(images)
        for i in range(0, len(images), PROJECTION_CHUNK):
            x = images[i : i + PROJECTION_CHUNK].flatten(1).float().div_(255)
            if basis is not None:
                x -= (x @ basis) @ basis.T
            out[i : i + PROJECTION_CHUNK] = x.sub_(low).mul_(255 / (high - low)).round_().clamp_(0, 255).view_as(
                images[i : i + PROJECTION_CHUNK])
        return out

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """The projected pixels, in [0, 1] units, that `encode`'s uint8 images stand for (to one level)."""
        low, high = self.config.pixel_range
        return images.float().mul(high - low).div_(255).add_(low)

    def fit_linear(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The (C, D) weights of a bias-free linear classifier fit on the flattened [0, 1] images."""
        cfg, n = self.config, len(images)
        dim = images[0].numel()
        g = torch.Generator().manual_seed(cfg.init_seed)
        bound = dim ** -0.5  # nn.Linear's default init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        weight = ((torch.rand(self.num_classes, dim, generator=g) * 2 - 1) * bound).to(images.device).requires_grad_()
        optimizer = torch.optim.SGD([weight], lr=cfg.lr)
        pixels = images.flatten(1).float().div_(255)  # converted once: the fit passes over the set `epochs` times
        for epoch in range(cfg.epochs):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * 0.1 ** sum(epoch >= int(cfg.epochs * m) for m in MILESTONES)
            for start in range(0, n, cfg.batch_size):
                x, y = pixels[start : start + cfg.batch_size], labels[start : start + cfg.batch_size]
                loss = F.cross_entropy(x @ weight.T, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return weight.detach()


def class_directions(weight: torch.Tensor) -> torch.Tensor:
    """(D, C) orthonormal basis of the span of the C weight vectors: QR of the unit-normalised vectors."""
    unit = weight / weight.norm(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(unit.T.double())  # float64: C directions in thousands of dimensions, orthogonal to 1e-15
    return q.float()


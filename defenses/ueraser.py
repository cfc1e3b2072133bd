"""UEraser: strong batched augmentation with repeated sampling and the max-loss choice (APBench).

Both variants follow lafeat/apbench `defense/ueraser.py` at ebd1e4c (2024-05-10, the file's last
change), whose probabilities date from ca7e688 (2023-11-21), and its `train.py --ueraser`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import v2

from bench.config import require
from bench.registry import register_defense
from defenses import kornia0612
from defenses.base import Defense
from defenses.basic import jpeg_compress

AUGMENTS = ("apbench", "torchvision")


@dataclass(frozen=True)
class UEraserConfig:
    repeats: int = 5  # augmented copies per image and step, the max-loss one is trained on; 1 = UEraser-Lite
    brightness_p: float = 1.0  # probability of plasma brightness per image; 1.0 since APBench's ca7e688 (0.5 before)
    brightness_intensity: tuple[float, float] = (0.5, 1.0)  # range of the brightness map's amplitude, in [0, 1] pixel units
    contrast_p: float = 1.0  # probability of plasma contrast per image; 1.0 since APBench's ca7e688 (0.5 before)
    roughness: tuple[float, float] = (0.3, 0.7)  # range of the fractal's amplitude ratio between finer and coarser scales
    shuffle_p: float = 0.5  # probability of a random channel permutation per image
    # "apbench": kornia 0.6.12's diamond-square plasma and TrivialAugment, as APBench runs them
    # (defenses/kornia0612.py); "torchvision": octave-noise plasma and torchvision's TrivialAugmentWide.
    augment: str = "apbench"
    trivial_chunk: int = 16  # "torchvision" only: images that share one TrivialAugmentWide op and magnitude

    def __post_init__(self):
        require(self.repeats >= 1, "repeats", f"must be at least 1, got {self.repeats}")
        for name in ("brightness_p", "contrast_p", "shuffle_p"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, f"must be a probability in [0, 1], got {value}")
        for name in ("brightness_intensity", "roughness"):
            lo, hi = getattr(self, name)
            require(0 <= lo <= hi <= 1, name, f"must be a range (low, high) with 0 <= low <= high <= 1, got {(lo, hi)}")
        require(self.augment in AUGMENTS, "augment", f"must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        require(self.trivial_chunk >= 1, "trivial_chunk", f"must be at least 1, got {self.trivial_chunk}")


def plasma(shape: tuple[int, int, int, int], roughness: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Fractal noise maps in [0, 1], one per image and channel, with per-image roughness (`augment =
    "torchvision"`; "apbench" draws kornia 0.6.12's diamond-square maps).

    Octaves of uniform noise on grids of 3, 5, 9, 17, ... points, bilinearly upsampled; octave k
    is weighted roughness^k, the amplitude schedule of the diamond-square algorithm.
    """
    n, c, h, w = shape
    size = max(h, w)
    maps = torch.zeros(n, c, size + 1, size + 1, device=device)
    total = torch.zeros(n, 1, 1, 1, device=device)
    grid, k = 3, 0
    while grid <= size + 1:
        weight = roughness.view(n, 1, 1, 1) ** k
        noise = torch.rand(n, c, grid, grid, device=device)
        maps += weight * F.interpolate(noise, size=size + 1, mode="bilinear", align_corners=True)
        total += weight
        grid, k = 2 * grid - 1, k + 1
    return (maps / total)[..., :h, :w]


@register_defense("ueraser", display="UEraser")
class UEraser(Defense):
    """UEraser: erase unlearnable shortcuts by adversarial augmentation (Qin et al., 2023; APBench).

    Threat model: any perturbative poison, with no knowledge of the attack. Each step draws
    `repeats` strongly augmented copies of the batch and trains on, for each image, the copy
    with the highest loss under the current model (APBench `train.py --ueraser`, 5 repeats).
    The augmentation is APBench's `UEraser` in `defense/ueraser.py` as of ca7e688 (2023-11-21):
    plasma brightness (p 1.0, intensity 0.5..1), plasma contrast (p 1.0), channel shuffle
    (p 0.5), then TrivialAugment. Its first commits (4d60c50, 2023-06-21) applied both plasma steps
    with p 0.5; `brightness_p = 0.5, contrast_p = 0.5` is that setting. `ueraser_jpeg` is the
    variant APBench runs against TAP and AR.

    Where it differs from the official code, and why:
    - APBench computes the loss of all repeats with gradients and back-propagates the mean of the
      per-image maximum; here the repeats are scored without gradients (model in train mode, as
      there) and the step trains on the per-image argmax copies, which gives the same per-image
      loss at a fraction of the memory; batch-norm batch statistics come from the chosen mix of
      copies instead of from each repeat, and running statistics see the scoring passes too.
    - The repeats run on every epoch (APBench's default `--repeat_epoch 300`, UEraser-Max with
      200 epochs); UEraser-Lite is `repeats = 1`. The switch to one copy after `repeat_epoch`
      (50 for plain "UEraser") needs the epoch, which the defense interface does not carry.
    - The augmentations are kornia 0.6.12's, which APBench pins (`augment = "apbench"`, the default):
      its diamond-square plasma maps and its TrivialAugment (12 ops, one op per call for the whole
      batch, a magnitude per image, rotation to 30 degrees, shear to 0.3 degrees, translation to
      half the image, posterize 0..4 bits), written in defenses/kornia0612.py and tested against
      0.6.12's own outputs, because later kornia releases changed both (0.9.0). The random draws
      come in another order than kornia's, so a seed gives other (equally distributed) copies.
      `augment = "torchvision"` uses octave noise with the same roughness-per-scale amplitudes
      and torchvision's `TrivialAugmentWide` (14 ops, rotation to 135 degrees, translation to 32
      pixels), one op and magnitude per `trivial_chunk` images.
    """

    Config = UEraserConfig
    paper = "Qin et al., Learning the Unlearnable: Adversarial Augmentations Suppress Unlearnable Example Attacks, 2023"
    cite = "qin2023learning"

    def __init__(self, config, num_classes: int = 10):
        super().__init__(config, num_classes)
        self._trivial = v2.TrivialAugmentWide()

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """One strongly augmented copy of the batch (float images in [0, 1])."""
        cfg = self.config
        n, c = x.shape[:2]
        dev = x.device

        def coin(p: float) -> torch.Tensor:
            return (torch.rand(n, 1, 1, 1, device=dev) < p).to(x.dtype)

        def uniform(lo_hi: tuple[float, float]) -> torch.Tensor:
            lo, hi = lo_hi
            return torch.rand(n, device=dev) * (hi - lo) + lo

        apbench = cfg.augment == "apbench"

        def fractal(roughness: torch.Tensor) -> torch.Tensor:
            return kornia0612.diamond_square(x.shape, roughness) if apbench else plasma(x.shape, roughness, dev)

        # As kornia applies them: brightness adds (2 m - 1) * intensity, contrast scales about 0.5 by 4 m.
        bright = (2 * fractal(uniform(cfg.roughness)) - 1) * uniform(cfg.brightness_intensity).view(n, 1, 1, 1)
        x = (x + coin(cfg.brightness_p) * bright).clamp(0, 1)
        contrast = 4 * fractal(uniform(cfg.roughness))
        on = coin(cfg.contrast_p)
        x = (on * ((x - 0.5) * contrast + 0.5) + (1 - on) * x).clamp(0, 1)
        perm = torch.rand(n, c, device=dev).argsort(1)
        shuffled = x.gather(1, perm.view(n, c, 1, 1).expand_as(x))
        on = coin(cfg.shuffle_p)
        x = on * shuffled + (1 - on) * x
        return self.trivial(x)

    def trivial(self, x: torch.Tensor) -> torch.Tensor:
        """TrivialAugment on the batch: kornia 0.6.12's (one op per call), or torchvision's per chunk."""
        if self.config.augment == "apbench":
            return kornia0612.trivial_augment(x)
        return torch.cat([self._trivial(chunk) for chunk in x.split(self.config.trivial_chunk)])

    @torch.no_grad()
    def adversary(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        copies = torch.stack([self.erase(x) for _ in range(self.config.repeats)])
        if self.config.repeats == 1:
            return copies[0]
        losses = torch.stack([
            self._loss(model, copy, y) for copy in copies
        ])  # (repeats, n)
        pick = losses.argmax(0)
        return copies[pick, torch.arange(len(x), device=x.device)]

    @staticmethod
    def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # In the training step's precision: the loop calls the adversary inside its autocast.
        return F.cross_entropy(model(x), y, reduction="none").float()


@dataclass(frozen=True)
class UEraserJPEGConfig(UEraserConfig):
    brightness_p: float = 0.8  # probability of plasma brightness per image; 0.8 in APBench's UEraser_jpeg (ca7e688)
    contrast_p: float = 0.8  # probability of plasma contrast per image; 0.8 in APBench's UEraser_jpeg (ca7e688)
    jpeg_quality: tuple[int, int] = (10, 99)  # range of the JPEG quality, both ends included; one draw per copy of the batch

    def __post_init__(self):
        super().__post_init__()
        lo, hi = self.jpeg_quality
        require(1 <= lo <= hi <= 100, "jpeg_quality",
                f"must be a range (low, high) with 1 <= low <= high <= 100, got {(lo, hi)}")


@register_defense("ueraser_jpeg", display="UEraser-JPEG")
class UEraserJPEG(UEraser):
    """UEraser with a random JPEG first: APBench's `UEraser_jpeg`, its UEraser against TAP and AR.

    Threat model: as `ueraser`; the JPEG step adds compression against the error-maximising
    (TAP) and autoregressive (AR) poisons, which APBench's `train.py` meets with this variant
    (`--type tap` or `ar`). Each copy of the batch is JPEG-compressed at one quality drawn
    uniformly from 10..99 (`random.randrange(10, 100)`), always, then augmented as `ueraser` with
    both plasma steps at p 0.8 (the p 0.8 is the plasma steps'; the JPEG step has no probability).
    Before APBench's d956737 (2023-11-16) the JPEG result was computed and discarded.

    Where it differs from the official code, and why:
    - APBench encodes the whole batch as one tall image through PIL; each image is 32 rows (two
      16-row MCUs), so the blocks are each image's own, but the decoder's chroma upsampling
      blends the edge rows of vertically neighbouring images (on CIFAR-10 at quality 50, about 6%
      of the pixels, all in each image's first or last row). Here each image is encoded on its
      own (`jpeg_compress`, libjpeg through torchvision, PIL's pixels), so that an image's
      pixels do not depend on its neighbours in the batch.
    - APBench decodes pixel v to (v - 0.5) / 255, half a level below v (it undoes the +0.5 of
      its rounding on the way in); here v / 255. Pixels go in rounded half up, as there.
    - Everything else as `ueraser`.
    """

    Config = UEraserJPEGConfig

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.config.jpeg_quality
        quality = int(torch.randint(lo, hi + 1, ()))
        pixels = (x * 255 + 0.5).clamp(0, 255).to(torch.uint8)  # round half up, as APBench
        return super().erase(jpeg_compress(pixels, quality).to(x.dtype) / 255)

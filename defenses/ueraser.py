"""UEraser: strong batched augmentation with repeated sampling and the max-loss choice (APBench)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import v2

from bench.config import require
from bench.registry import register_defense
from defenses.base import Defense


@dataclass(frozen=True)
class UEraserConfig:
    repeats: int = 5  # augmented copies per image and step, the max-loss one is trained on; 1 = UEraser-Lite
    brightness_p: float = 0.5  # probability of plasma brightness per image
    brightness_intensity: tuple[float, float] = (0.5, 1.0)  # range of the brightness map's amplitude, in [0, 1] pixel units
    contrast_p: float = 0.5  # probability of plasma contrast per image
    roughness: tuple[float, float] = (0.3, 0.7)  # range of the fractal's amplitude ratio between finer and coarser scales
    shuffle_p: float = 0.5  # probability of a random channel permutation per image
    trivial_chunk: int = 16  # images that share one TrivialAugment op and magnitude (one draw per chunk)

    def __post_init__(self):
        require(self.repeats >= 1, "repeats", f"must be at least 1, got {self.repeats}")
        for name in ("brightness_p", "contrast_p", "shuffle_p"):
            value = getattr(self, name)
            require(0 <= value <= 1, name, f"must be a probability in [0, 1], got {value}")
        for name in ("brightness_intensity", "roughness"):
            lo, hi = getattr(self, name)
            require(0 <= lo <= hi <= 1, name, f"must be a range (low, high) with 0 <= low <= high <= 1, got {(lo, hi)}")
        require(self.trivial_chunk >= 1, "trivial_chunk", f"must be at least 1, got {self.trivial_chunk}")


def plasma(shape: tuple[int, int, int, int], roughness: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Fractal noise maps in [0, 1], one per image and channel, with per-image roughness.

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


@register_defense("ueraser")
class UEraser(Defense):
    """UEraser: erase unlearnable shortcuts by adversarial augmentation (Qin et al., 2023; APBench).

    Threat model: any perturbative poison, with no knowledge of the attack. Each step draws
    `repeats` strongly augmented copies of the batch and trains on, for each image, the copy
    with the highest loss under the current model (APBench `train.py --ueraser`, 5 repeats).
    The augmentation follows APBench's `defense/ueraser.py`: plasma brightness (p 0.5, intensity
    0.5..1), plasma contrast (p 0.5), channel shuffle (p 0.5), then TrivialAugment.

    Where it differs from the official code, and why:
    - APBench computes the loss of all repeats with gradients and back-propagates the mean of the
      per-image maximum; here the repeats are scored without gradients (model in train mode, as
      there) and the step trains on the per-image argmax copies, which gives the same per-image
      loss at a fraction of the memory; batch-norm batch statistics come from the chosen mix of
      copies instead of from each repeat, and running statistics see the scoring passes too.
    - The repeats run on every epoch (APBench's default `--repeat_epoch 300`, UEraser-Max with
      200 epochs); UEraser-Lite is `repeats = 1`. The switch to one copy after `repeat_epoch`
      (50 for plain "UEraser") needs the epoch, which the defense interface does not carry.
    - kornia's plasma maps come from diamond-square; ours are octave noise with the same
      roughness-per-scale amplitudes (smooth fractal maps in [0, 1]); the brightness map is
      (2 m - 1) * intensity and the contrast map 4 m, as kornia applies them.
    - TrivialAugment is torchvision's `TrivialAugmentWide` (kornia ships its own op list); one op
      and magnitude per `trivial_chunk` images, since a v2 transform draws once per call.
    - APBench's `UEraser_jpeg` (used for TAP and AR) JPEG-compresses the batch and then discards
      the result, so it equals plain UEraser; there is no JPEG step here either.
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

        bright = (2 * plasma(x.shape, uniform(cfg.roughness), dev) - 1) * uniform(cfg.brightness_intensity).view(n, 1, 1, 1)
        x = (x + coin(cfg.brightness_p) * bright).clamp(0, 1)
        contrast = 4 * plasma(x.shape, uniform(cfg.roughness), dev)
        on = coin(cfg.contrast_p)
        x = (on * ((x - 0.5) * contrast + 0.5) + (1 - on) * x).clamp(0, 1)
        perm = torch.rand(n, c, device=dev).argsort(1)
        shuffled = x.gather(1, perm.view(n, c, 1, 1).expand_as(x))
        on = coin(cfg.shuffle_p)
        x = on * shuffled + (1 - on) * x
        return torch.cat([self._trivial(chunk) for chunk in x.split(cfg.trivial_chunk)])

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

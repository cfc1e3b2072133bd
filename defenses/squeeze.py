"""Set-level defenses that squeeze perturbations out of the images: grayscale, JPEG, bit depth, blur.

Each runs once per poison on the whole uint8 training set (`prepare`), through torchvision's
functional transforms, which take uint8 batches (grayscale in PIL's own fixed point, `pil_luma`);
the runner caches the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

from bench.config import require
from bench.registry import register_defense
from defenses.base import Defense
from defenses.basic import JPEG, JPEGConfig

ISS = "Liu et al., Image Shortcut Squeezing: Countering Perturbative Availability Poisons with Compression, ICML 2023"
APBENCH = "Qin et al., APBench: A Unified Benchmark for Availability Poisoning Attacks and Defenses, 2023"


@dataclass(frozen=True)
class GrayConfig:
    both_train_test: bool = False  # convert the test images too (ISS's `--ISS_both_train_test`, default False there)


@register_defense("iss_gray", display="ISS-Gray")
class ISSGrayscale(Defense):
    """ISS grayscale: train on 3-channel grayscale images (Liu et al., ICML 2023).

    Threat model: the poisoner perturbs the training set (any norm); the defender converts every
    training image to luma, which removes colour-coded shortcuts such as OPS's corner colours and
    class-wise colour noise. As the official code (liuzrcc/ImageShortcutSqueezing, `augmentations.py`
    and `main.py` at 005d653), only the training set is converted by default; `both_train_test = true`
    converts the test set too (its `--ISS_both_train_test`), so the model is tested on the
    distribution it was trained on. APBench's `--gray` converts the training set only, as the default.

    The grey levels are those of the official `transforms.Grayscale(3)` on PIL images, i.e. PIL's
    `convert("L")`, exactly (`pil_luma`). torchvision's tensor `rgb_to_grayscale` truncates
    instead of rounding and gives about half the CIFAR-10 pixels one level less.
    """

    Config = GrayConfig
    paper = ISS
    cite = "liu2023image"

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pil_luma(images)

    def prepare_test(self, images: torch.Tensor) -> torch.Tensor:
        return pil_luma(images) if self.config.both_train_test else images

    def stages(self, point: str) -> list[Defense]:
        if point == "prepare_test" and not self.config.both_train_test:
            return []  # test images pass unchanged, so the runner neither converts nor caches them
        return super().stages(point)


def pil_luma(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW RGB -> uint8 NCHW with three equal channels, each PIL's `convert("L")` of the image.

    ITU-R 601 luma in PIL's fixed point: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, weights
    0.299, 0.587, 0.114 in units of 2^-16, rounded to the nearest level. Computed in float32, where
    every partial sum is a whole number below 2^24 and so exact (as fast as torchvision's own).
    """
    r, g, b = images.unbind(1)
    luma = r.float().mul_(19595).add_(g.float(), alpha=38470).add_(b.float(), alpha=7471)
    luma = luma.add_(1 << 15).div_(1 << 16).floor_().to(torch.uint8)
    return luma.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


@register_defense("iss_jpeg", display="ISS-JPEG")
class ISSJPEG(JPEG):
    """ISS JPEG: compress the training set once at quality 10 (Liu et al., ICML 2023).

    Threat model: a poisoner with a small L-inf or L2 budget (EM, REM, TAP, LSP); low-quality JPEG
    drops the high-frequency perturbation with the high frequencies of the image. The same code as
    `jpeg`, named for ISS's setting (quality 10, train only) so tables can say "ISS-J".
    """

    Config = JPEGConfig
    paper = ISS
    cite = "liu2023image"


@dataclass(frozen=True)
class BDRConfig:
    bits: int = 2  # bits kept per channel, 1..8 (2^bits levels); 2 as APBench's RandomPosterize(bits=2)

    def __post_init__(self):
        require(1 <= self.bits <= 8, "bits", f"must be in 1..8, got {self.bits}")


@register_defense("bdr", display="BDR")
class BitDepthReduction(Defense):
    """Bit-depth reduction of the training set (Xu et al., NDSS 2018; ISS and APBench's BDR row).

    Threat model: small-budget additive noise that lives in the low bits of each pixel. Keeps the
    top `bits` bits of every channel (torchvision's posterize, the official APBench transform),
    so at most 2^bits levels remain; test images are left alone, as in APBench.
    """

    Config = BDRConfig
    paper = "Xu et al., Feature Squeezing, NDSS 2018; " + APBENCH
    cite = "xu2018feature,qin2023apbench"

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return TF.posterize(images, self.config.bits)


@dataclass(frozen=True)
class GaussianConfig:
    kernel_size: int = 3  # side of the square kernel in pixels, odd; 3 as APBench
    sigma: float = 0.1  # standard deviation in pixels; 0.1 as APBench (see the class docstring)

    def __post_init__(self):
        require(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size",
                f"must be an odd whole number >= 1, got {self.kernel_size}")
        require(self.sigma > 0, "sigma", f"must be positive, got {self.sigma}")


@register_defense("gaussian", display="Gaussian")
class GaussianSmoothing(Defense):
    """Gaussian smoothing of the training set (APBench's Gaussian row, Qin et al., 2023).

    Threat model: high-frequency additive noise, removed by a low-pass filter at some cost in
    detail. Uses torchvision's `gaussian_blur` (reflect padding), like APBench's
    `transforms.GaussianBlur(3, sigma=0.1)`. Note that APBench's default is nearly the identity:
    at sigma 0.1 px the off-centre weights of the 3x3 kernel are exp(-50), so uint8 images come out
    unchanged; sigma >= 0.5 is where smoothing starts to act (e.g. `[config.gaussian] sigma = 1.0`).
    """

    Config = GaussianConfig
    paper = APBENCH
    cite = "qin2023apbench"

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k, s = self.config.kernel_size, self.config.sigma
        return TF.gaussian_blur(images, [k, k], [s, s])

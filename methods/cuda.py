"""Convolution-based unlearnable datasets (CUDA)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.config import require
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from methods.base import Attack, Poison

# CUDA bounds no norm of its change: it claims the whole pixel range, an L-inf budget of 1 (reports
# print it as "unbounded"), and every record carries the measured size beside the claim.
UNBOUNDED = 1.0


@dataclass(frozen=True)
class CUDAConfig:
    kernel_size: int = 3  # k: each class's filter is k x k per channel (CIFAR-10: 3)
    blur_parameter: float = 0.3  # p_b: off-centre filter entries ~ U(0, p_b) (official CIFAR-10: --blur-parameter 0.3)

    def __post_init__(self):
        require(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size",
                f"must be an odd number >= 1 (the filter is centred on its pixel), got {self.kernel_size}")
        require(self.blur_parameter >= 0, "blur_parameter", f"must be >= 0 (0 leaves the images as they are), got {self.blur_parameter}")


@register_attack("cuda")
class ConvolutionBasedUnlearnable(Attack):
    """Model-free, class-wise: every image blurred by its class's random filter, one per channel.

    Sadasivan, Soltanolkotabi & Feizi, "CUDA: Convolution-based Unlearnable Datasets", CVPR 2023.
    Threat model: no norm bound; a private key (here the cell seed) draws one k x k filter per
    class and channel. Implemented from the paper (the official code's licence forbids copying it;
    it was not read): each off-centre entry is drawn from U(0, p_b), the centre entry is 1, and
    each filter is divided by its sum, so that it is a blur that keeps a flat region's brightness
    and p_b = 0 is the identity; each channel of an image is convolved with its class's filter of
    that channel ('same' size, zero padding past the border, which darkens the outermost pixels by
    the filter's weight outside), and the result is clipped to [0, 1] and rounded to uint8.
    Defaults are the official CIFAR-10 settings (k = 3, p_b = 0.3: the README's command). The
    filter draw and normalisation are our reading of the paper; the paper's text could not be
    consulted where this plugin was written beyond its abstract, so check them against its
    section 3 before quoting our CUDA numbers beside the paper's.

    Budget: CUDA changes pixels by whatever its blur makes of them, so the poison claims L-inf 1.0
    (the whole range: any uint8 poison meets it) and reports call it unbounded; the measured worst
    change is recorded with every poison.
    """

    Config = CUDAConfig
    paper = "Sadasivan, Soltanolkotabi & Feizi, CUDA: Convolution-based Unlearnable Datasets, CVPR 2023"
    cite = "sadasivan2023cuda"
    seeded = True

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        _, channels, _, _ = data.images.shape
        filters = draw_filters(data.num_classes, channels, self.config, ctx.generator("cpu")).to(data.device)
        images = data.images.clone()
        for c in range(data.num_classes):
            members = data.labels == c
            if members.any():
                images[members] = blur(data.images[members], filters[c])
        return Poison(images, "linf", UNBOUNDED)


def draw_filters(num_classes: int, channels: int, config: CUDAConfig, g: torch.Generator) -> torch.Tensor:
    """(num_classes, channels, k, k) blur filters: entries ~ U(0, p_b), centre 1, each summing to 1."""
    k = config.kernel_size
    filters = torch.rand(num_classes, channels, k, k, generator=g) * config.blur_parameter
    filters[:, :, k // 2, k // 2] = 1
    return filters / filters.sum((2, 3), keepdim=True)


def blur(images: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) convolved channel by channel with `filters` (C, k, k), in chunks."""
    out = torch.empty_like(images)
    for start in range(0, len(images), 4096):
        x = images[start : start + 4096].float() / 255
        y = F.conv2d(x, filters.unsqueeze(1), padding=filters.shape[-1] // 2, groups=filters.shape[0])
        out[start : start + 4096] = (y.clamp(0, 1) * 255).round().to(torch.uint8)
    return out

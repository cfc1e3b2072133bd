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
PEAK = 1.0  # the one filter entry set apart from the uniform draws (official `center_parameter = 1.0`)
CHUNK = 4096  # images convolved at a time, so that the float copy of a large class stays small
FILTER_FORMS = ("official", "normalised")


@dataclass(frozen=True)
class CUDAConfig:
    kernel_size: int = 3  # k: each class's filter is k x k (official CIFAR-10: 3)
    blur_parameter: float = 0.3  # p_b: filter entries ~ U(0, p_b) before one is set to 1 (official --blur-parameter 0.3)
    # "official": the official code's filters and normalisation (the class docstring); "normalised": a
    # sum-normalised blur per channel, centre 1, clipped and rounded (kept to compare against).
    filters: str = "official"

    def __post_init__(self):
        require(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size",
                f"must be an odd number >= 1 (the filter is centred on its pixel), got {self.kernel_size}")
        require(self.blur_parameter >= 0, "blur_parameter", f"must be >= 0 (0: each filter is a single 1), got {self.blur_parameter}")
        require(self.filters in FILTER_FORMS, "filters", f"must be one of {', '.join(FILTER_FORMS)}, got {self.filters!r}")


@register_attack("cuda", display="CUDA")
class ConvolutionBasedUnlearnable(Attack):
    """Model-free, class-wise: every image convolved with its class's random filter.

    Sadasivan, Soltanolkotabi & Feizi, "CUDA: Convolution-based Unlearnable Datasets", CVPR 2023.
    Threat model: no norm bound; a private key (here the cell seed) draws one k x k filter per
    class. Written from the facts of the official code (vinusankars/Convolution-based-Unlearnability,
    `final_filter_unlearnable.py`, `get_filter_unlearnable`; its licence forbids copying it): all
    k x k entries are drawn from U(0, p_b) and then one entry, at a uniformly random position, is
    set to 1, so that most filters (8 of 9 positions at k = 3) also shift the image by a pixel; the
    filter is not normalised; the one filter of a class convolves each of the three channels alike
    (depthwise, bias 0, zero padding k // 2); each convolved image is divided by its own maximum over
    all its channels and pixels, then scaled by 255, clipped to [0, 255] and truncated to uint8.
    Only the training set is poisoned. Defaults are the official CIFAR-10 settings (k = 3, p_b = 0.3).

    Where we differ: the filters come from torch's generator seeded by the cell seed, in another
    order than the official numpy draws (same distribution, other filters for a given seed); the
    official code hard-codes k = 3 with padding 1, where ours takes any odd k with padding k // 2;
    we convolve in float32 on the run's device, the official on the GPU (cuDNN, which may use TF32),
    so a value near a whole level can truncate one level apart; an all-black image, which the
    official would divide by 0, stays black here; and the official `--mix` (a random fraction of the
    images poisoned) is the grid's `poison_ratio`.

    `filters = "normalised"` is another reading of the paper, kept to compare against: one filter
    per class and channel, its off-centre entries ~ U(0, p_b) and its centre 1, divided by its sum
    (a blur that keeps a flat region's brightness), each channel convolved with its own filter, the
    result clipped and rounded (`bench/grids/fidelity_cuda.toml` runs both; docs/attacks.md).

    Budget: CUDA changes pixels by whatever its filter makes of them, so the poison claims L-inf
    1.0 (the whole range: any uint8 poison meets it) and reports call it unbounded; the measured
    worst change is recorded with every poison.
    """

    Config = CUDAConfig
    paper = "Sadasivan, Soltanolkotabi & Feizi, CUDA: Convolution-based Unlearnable Datasets, CVPR 2023"
    cite = "sadasivan2023cuda"
    seeded = True

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        if self.config.filters == "normalised":
            return Poison(normalised_blur(data, self.config, ctx.generator("cpu")), "linf", UNBOUNDED)
        filters = draw_filters(data.num_classes, self.config, ctx.generator("cpu")).to(data.device)
        images = data.images.clone()
        for c in range(data.num_classes):
            members = data.labels == c
            if members.any():
                images[members] = convolve(data.images[members], filters[c])
        return Poison(images, "linf", UNBOUNDED)


def draw_filters(num_classes: int, config: CUDAConfig, g: torch.Generator) -> torch.Tensor:
    """(num_classes, k, k) filters: entries ~ U(0, p_b), then one at a random position set to 1."""
    k = config.kernel_size
    filters = torch.rand(num_classes, k * k, generator=g) * config.blur_parameter
    peaks = torch.randint(0, k * k, (num_classes,), generator=g)
    filters[torch.arange(num_classes), peaks] = PEAK
    return filters.view(num_classes, k, k)


def convolve(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W), every channel convolved with `kernel` (k, k), each image divided by
    its own maximum, to uint8 by truncation."""
    channels, k = images.shape[1], kernel.shape[-1]
    weight = kernel.expand(channels, 1, k, k)
    out = torch.empty_like(images)
    for start in range(0, len(images), CHUNK):
        x = images[start : start + CHUNK].float() / 255
        y = F.conv2d(x, weight, padding=k // 2, groups=channels)
        peak = y.amax((1, 2, 3), keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)  # a black image stays black
        out[start : start + CHUNK] = (y / peak * 255).clamp_(0, 255).floor_().to(torch.uint8)
    return out


def normalised_blur(data: ImageSet, config: CUDAConfig, g: torch.Generator) -> torch.Tensor:
    """`filters = "normalised"`: each class's (C, k, k) filters, entries ~ U(0, p_b) with centre 1, each
    divided by its sum, convolved channel by channel, clipped to [0, 1] and rounded to uint8."""
    k, channels = config.kernel_size, data.images.shape[1]
    filters = torch.rand(data.num_classes, channels, k, k, generator=g) * config.blur_parameter
    filters[:, :, k // 2, k // 2] = 1
    filters = (filters / filters.sum((2, 3), keepdim=True)).to(data.device)
    images = data.images.clone()
    for c in range(data.num_classes):
        rows = (data.labels == c).nonzero().flatten()
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            y = F.conv2d(data.images[chunk].float() / 255, filters[c].unsqueeze(1), padding=k // 2, groups=channels)
            images[chunk] = (y.clamp(0, 1) * 255).round().to(torch.uint8)
    return images

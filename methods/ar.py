"""Autoregressive perturbations (AR)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.config import require
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from methods.base import Attack, Poison, apply_delta

WINDOW = 3  # each value of a process is a weighted sum of the 8 values before it in its 3x3 window
SEARCH_SIZE = 32  # the official finder samples 36x36 processes and crops 4: 32x32, whatever the dataset
PROBE = 12  # the search first grows each sample's top-left 12x12 block: most divergent draws exceed max_norm there


@dataclass(frozen=True)
class ARConfig:
    eps: float = 1.0  # L2 norm per image, [0, 1] units (official CIFAR-10/100 and SVHN poisons: 1.0; STL-10: 3.0)
    crop: int = 4  # rows and columns dropped from the top and left of each sample, where it starts from noise
    # Lowest response a new process's sample must draw from every process found before it (ReLU sum of
    # its matched filter); None = the official rule: 10 for up to 10 classes, 3 for more (CIFAR-100).
    min_response: float | None = None
    max_norm: float = 50.0  # a process whose raw 32x32 sample has a larger L2 norm diverges and is redrawn
    trials: int = 3  # samples per candidate process checked against max_norm, as the official finder
    candidates: int = 1_000_000  # coefficient draws the search may try before it gives up (official: 1e6)

    def __post_init__(self):
        require(self.eps > 0, "eps", f"must be positive (L2 norm in [0, 1] units), got {self.eps}")
        require(self.crop >= WINDOW - 1, "crop", f"must be at least {WINDOW - 1} (the noise the process starts from), got {self.crop}")
        require(self.min_response is None or self.min_response >= 0, "min_response",
                f"must be >= 0, or unset for the official rule, got {self.min_response}")
        require(self.max_norm > 0, "max_norm", f"must be positive, got {self.max_norm}")
        require(self.trials >= 1, "trials", f"must be at least 1, got {self.trials}")
        require(self.candidates >= 1, "candidates", f"must be at least 1, got {self.candidates}")

    def response_threshold(self, num_classes: int) -> float:
        if self.min_response is not None:
            return self.min_response
        return 10.0 if num_classes <= 10 else 3.0  # params-classes-10-mr-10.pt and params-classes-100-mr-3.pt


@register_attack("ar", display="AR")
class AutoregressivePerturbation(Attack):
    """Model-free, sample-wise: a fresh sample of its class's autoregressive process on every image.

    Sandoval-Segura et al., "Autoregressive Perturbations for Data Poisoning", NeurIPS 2022. Threat
    model: L2, one perturbation per image, no model. Each class owns an AR process with a 3x3
    window per channel: 8 coefficients (the window's last entry is 0) drawn from a standard normal
    and divided by their sum, so that each value is a weighted sum of the 8 before it. A sample
    starts from Gaussian noise of the image size plus `crop` rows and columns, fills every value
    past the first two rows and columns by the recursion (no innovation noise), drops the first
    `crop` rows and columns and is scaled to exactly `eps` in L2; the image plus its sample is
    clipped to [0, 1] and rounded to uint8 (as the official PNG export). The processes come from
    the official greedy search (`autoregressive_param_finder.py`): a candidate is kept if none of
    its `trials` raw 32x32 samples is NaN or above `max_norm` in L2, and the last of them draws a
    response of at least `min_response` from every process kept before it. As the official code
    (`create_ar_poisons_3channel.py`), except: the search runs for every poison, seeded with the
    cell seed, where the official poisons use one set of coefficients found once (unseeded) for
    10-class datasets and one for CIFAR-100; it is batched and rejects a divergent candidate early
    (`find_processes`), which orders the random draws differently from the official loop but
    applies the same rule to every candidate; the samples are drawn from the cell seed too. Any
    class count and image size is served: the search always samples at 32x32 as the official
    one, and the found processes are sampled at the image size (as the official code reused its
    CIFAR coefficients for STL-10's 96x96 images). An image that rounding would push past the
    budget is shrunk by 0.5% and rounded again (`apply_delta`).
    """

    Config = ARConfig
    # The search with the official threshold of 10 tries about 10^5-10^6 draws for 10 classes (42-497 s
    # on one core of a loaded 2-core EPYC, seeds 0-2); at CIFAR-100's threshold of 3, 2-6 s.
    presets = {"cpu": {"min_response": 3.0}}
    paper = "Sandoval-Segura et al., Autoregressive Perturbations for Data Poisoning, NeurIPS 2022"
    cite = "sandovalsegura2022autoregressive"
    seeded = True

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        # Every draw on the CPU generator: the same poison from a seed on any device.
        g = ctx.generator("cpu")
        _, channels, height, width = data.images.shape
        coefficients = find_processes(data.num_classes, channels, self.config, g)
        delta = torch.empty(data.images.shape)
        labels = data.labels.cpu()
        for start in range(0, len(labels), 4096):  # bounded memory: 36x36x3 floats per image while it is sampled
            chunk = labels[start : start + 4096]
            noise = torch.randn(len(chunk), channels, height + self.config.crop, width + self.config.crop, generator=g)
            samples = sample_processes(coefficients[chunk], noise)
            delta[start : start + len(chunk)] = scaled(samples[:, :, self.config.crop :, self.config.crop :], self.config.eps)
        if not torch.isfinite(delta).all():
            raise ValueError(f"ar: a process diverged at {height}x{width} (non-finite sample); lower ar.max_norm")
        delta = delta.to(data.device)
        return Poison(apply_delta(data.images, delta, "l2", self.config.eps), "l2", self.config.eps)


def sample_processes(coefficients: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One sample of each process (coefficients (N, C, 3, 3), last entry 0) grown from `noise` (N, C, H, W).

    Overwrites, in raster order, every value whose 3x3 window fits (rows and columns 2 onward) with
    the window's weighted sum: the first two rows and columns stay the noise the process grows from.
    A value depends only on values above and to its left, so the top-left m x m block of a sample
    is the sample of the noise's top-left m x m block.
    """
    signal = noise.clone()
    height, width = signal.shape[2:]
    weights = coefficients.flatten(2)  # (N, C, 9); the window's own (last) value weighs 0
    for i in range(height - WINDOW + 1):
        for j in range(width - WINDOW + 1):
            window = signal[:, :, i : i + WINDOW, j : j + WINDOW].flatten(2)
            signal[:, :, i + WINDOW - 1, j + WINDOW - 1] = (window * weights).sum(2)
    return signal


def scaled(samples: torch.Tensor, norm: float) -> torch.Tensor:
    """Each sample scaled to L2 norm `norm` over all its channels and pixels."""
    return samples * (norm / samples.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)


def below(samples: torch.Tensor, bound: float) -> torch.Tensor:
    """Which samples are finite with an L2 norm of at most `bound`."""
    norms = samples.flatten(1).norm(dim=1)
    return torch.isfinite(norms) & (norms <= bound)


def draw_coefficients(count: int, channels: int, g: torch.Generator) -> torch.Tensor:
    """(count, channels, 3, 3) standard normal coefficients, the last of each window 0, each window summing to 1."""
    b = torch.randn(count, channels, WINDOW, WINDOW, generator=g)
    b[:, :, -1, -1] = 0
    return b / b.sum((2, 3), keepdim=True)


def matched_filters(coefficients: torch.Tensor) -> torch.Tensor:
    """The filter that answers 0 to its own process: its coefficients with -1 on the window's last value."""
    filters = coefficients.clone()
    filters[:, :, -1, -1] = -1
    return filters


def find_processes(num_classes: int, channels: int, config: ARConfig, g: torch.Generator) -> torch.Tensor:
    """(num_classes, channels, 3, 3) coefficients: the official greedy search, candidates drawn in batches.

    Candidates are checked in draw order, each against every process kept before it (those kept
    from the same batch included), exactly as one at a time.
    """
    threshold = config.response_threshold(num_classes)
    size = SEARCH_SIZE + config.crop
    kept: list[torch.Tensor] = []
    tried = 0
    while len(kept) < num_classes:
        if tried >= config.candidates:
            raise ValueError(f"ar: found {len(kept)} of {num_classes} processes in {config.candidates:,} candidates "
                             f"(ar.candidates); lower ar.min_response (now {threshold:g}) or raise ar.max_norm")
        batch = min(256, config.candidates - tried)
        tried += batch
        candidates = draw_coefficients(batch, channels, g)
        # Most draws diverge (about 99% at 32x32). A sample's norm past the crop is at least that of its
        # top-left block (`sample_processes`), so a block already above max_norm rules its candidate out
        # with a ninth of the work; only the others are grown to full size, and a candidate that fails
        # a trial draws no further ones. Given its samples, a candidate passes exactly when it would
        # with full samples and every trial drawn.
        for _ in range(config.trials):
            noise = torch.randn(len(candidates), channels, size, size, generator=g)
            block = sample_processes(candidates, noise[:, :, :PROBE, :PROBE])[:, :, config.crop :, config.crop :]
            probed = below(block, config.max_norm)
            candidates, noise = candidates[probed], noise[probed]
            raw = sample_processes(candidates, noise)[:, :, config.crop :, config.crop :]
            stable = below(raw, config.max_norm)
            candidates, raw = candidates[stable], raw[stable]
        if not len(candidates):
            continue
        last = scaled(raw, 1.0)  # the last trial's sample at eps 1, as the official finder's responses
        before = len(kept)
        filters = matched_filters(torch.cat([*(k.unsqueeze(0) for k in kept), candidates]))
        responses = F.conv2d(last, filters).relu().sum((2, 3))  # (batch, before + batch): candidate x filter
        chosen = list(range(before))  # the columns of `filters` whose processes are kept
        for k in range(len(candidates)):
            if not chosen or responses[k, chosen].min() >= threshold:
                kept.append(candidates[k])
                chosen.append(before + k)
                if len(kept) == num_classes:
                    break
    return torch.stack(kept)

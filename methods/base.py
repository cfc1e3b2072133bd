"""The attack interface: `generate(train set, ctx) -> Poison`, with the checks every attack needs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from bench.config import require
from bench.context import RunContext
from bench.data import ImageSet
from bench.plugin import Plugin
from bench.registry import ARCHS
from bench.train import autocast_to, precision_for

Norm = Literal["linf", "l2", "l0"]
NORMS = ("linf", "l2", "l0")
# The training-set size the official settings are counted on (CIFAR-10's), for `Attack.effort`.
OFFICIAL_TRAIN_SIZE = 50_000


class BudgetError(ValueError):
    """A poison that breaks the budget it claims."""


@dataclass(frozen=True)
class Poison:
    """Poisoned training images as a data owner would publish them, and the budget they claim.

    `budget` is in [0, 1] pixel units for `linf` and `l2` (per image), and in pixels per image for
    `l0` (a pixel counts once however many of its channels change).
    """

    images: torch.Tensor  # uint8 (N, C, H, W), same order as the clean training set
    norm: Norm
    budget: float


def check_claim(norm: str, budget: float, image_shape: tuple[int, ...]) -> None:
    """BudgetError unless `budget` is a claim `norm` can make about images of `image_shape` (C, H, W).

    Without this a NaN budget would pass every comparison and an infinite one any poison.
    """
    if norm not in NORMS:
        raise BudgetError(f"poison norm {norm!r} is not one of {', '.join(NORMS)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 0:
        raise BudgetError(f"poison budget must be a finite number >= 0, got {budget!r}")
    channels, height, width = image_shape
    if norm == "linf" and budget > 1:
        raise BudgetError(f"linf budget {budget:g} > 1: budgets are in [0, 1] pixel units (8/255 = {8 / 255:.4f})")
    if norm == "l2" and budget > math.sqrt(channels * height * width):
        raise BudgetError(f"l2 budget {budget:g} is more than any two {channels}x{height}x{width} images can differ "
                          f"({math.sqrt(channels * height * width):.2f} in [0, 1] units)")
    if norm == "l0" and (budget != int(budget) or budget > height * width):
        raise BudgetError(f"l0 budget {budget:g} must be a whole number of pixels from 0 to {height * width}")


def check_budget(clean: torch.Tensor, poison: Poison) -> float:
    """The largest per-image perturbation in the poison's norm; BudgetError if it exceeds its budget."""
    check_claim(poison.norm, poison.budget, tuple(clean.shape[1:]))
    if poison.images.dtype != torch.uint8 or poison.images.shape != clean.shape:
        raise BudgetError(
            f"poison must be uint8 of shape {tuple(clean.shape)}, got {poison.images.dtype} {tuple(poison.images.shape)}"
        )
    worst = largest_perturbation(clean, poison.images, poison.norm)
    # 1e-6 absorbs float32 summation error only; quantisation must be the attack's own business.
    if worst > poison.budget + 1e-6:
        unit = "pixels" if poison.norm == "l0" else "in [0,1] units"
        raise BudgetError(f"poison breaks its {poison.norm} budget: {worst:.6g} > {poison.budget:.6g} ({unit})")
    return worst


def perturbation_size(clean: torch.Tensor, poisoned: torch.Tensor, norm: Norm,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-image size of poisoned - clean in `norm` ((N,) of `dtype`; float64 states 8/255 as 8/255)."""
    delta = (poisoned.to(torch.int16) - clean.to(torch.int16)).flatten(1) if norm != "l0" else None
    if norm == "linf":
        return delta.abs().amax(1).to(dtype) / 255
    if norm == "l2":
        return (delta.to(dtype) / 255).norm(dim=1)
    return (poisoned != clean).any(dim=1).flatten(1).sum(1).to(dtype)


def largest_perturbation(clean: torch.Tensor, poisoned: torch.Tensor, norm: Norm,
                         dtype: torch.dtype = torch.float32) -> float:
    """The largest per-image `perturbation_size`, in chunks of 4,096 images (bounded memory)."""
    return max((perturbation_size(clean[i : i + 4096], poisoned[i : i + 4096], norm, dtype).max().item()
                for i in range(0, len(clean), 4096)), default=0.0)


def apply_delta(clean: torch.Tensor, delta: torch.Tensor, norm: Literal["linf", "l2"], budget: float) -> torch.Tensor:
    """Add a float perturbation (in [0, 1] units) to uint8 images, clip to [0, 255] and quantise.

    Rounding to the nearest level can push an image just past its budget (L2: rounding noise adds
    about 0.002 to a norm of 1.3); such images are shrunk by 0.5% steps and rounded again, and
    quantised toward the clean image as a last resort, so the uint8 poison always keeps its claim.
    """
    clean_f = clean.float()
    if norm == "linf":
        levels = math.floor(budget * 255 + 1e-6)
        steps = ((clean_f + delta * 255).clamp(0, 255) - clean_f).round().clamp(-levels, levels)
    else:
        steps = ((clean_f + delta * 255).clamp(0, 255) - clean_f).round()
        scale = 1.0
        over = (steps.flatten(1) / 255).norm(dim=1) > budget
        for _ in range(20):
            if not over.any():
                break
            scale *= 0.995
            steps[over] = ((clean_f[over] + delta[over] * 255 * scale).clamp(0, 255) - clean_f[over]).round()
            over = (steps.flatten(1) / 255).norm(dim=1) > budget
        steps[over] = ((clean_f[over] + delta[over] * 255).clamp(0, 255) - clean_f[over]).trunc()
    return (clean.to(torch.int16) + steps.to(torch.int16)).clamp(0, 255).to(torch.uint8)


class Attack(Plugin):
    """Base of every unlearnable-example attack.

    Subclasses set `Config` (a frozen dataclass), `paper` and `cite` (see `Plugin`), and implement
    `generate`. Calling an attack seeds torch, runs `generate` and checks the result's dtype, shape
    and budget, so no attack can forget those steps.
    """

    # Whether a poison may be stored in the results folder's cache and reused by every cell with the
    # same data, config and seed (and by later runs). An attack whose output is not a function of
    # those alone sets False: its poison is then made by each cell that needs it.
    cacheable: ClassVar[bool] = True
    # Whether the poison depends on the seed (random draws, a randomly initialised surrogate); the
    # contract test then checks that another seed gives another poison. False where the output is a
    # function of the data and config alone (clean, OPS, a file read by external).
    seeded: ClassVar[bool] = False
    # Whether the attack perturbs anything. False for the clean baseline, whose cell at any poison
    # ratio is the clean cell itself, so a grid's ratios do not multiply it.
    perturbs: ClassVar[bool] = True

    # True where a stop rule, not the config, decides how many rounds run (EM): `effort` then
    # counts one round, since the official settings' round count on the same data is not known.
    effort_per_round: ClassVar[bool] = False

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        raise NotImplementedError

    def check_inputs(self, train: ImageSet) -> None:
        """Checks of what the attack reads (files) against the clean training set, cheap ones only, run
        once per grid before any cell (`bench.runner.preflight`); ConfigError naming the field. None here."""

    def gradient_evaluations(self, n_images: int) -> float | None:
        """Forward-and-backward passes of a model per training image that `generate` makes on a set of
        `n_images` (surrogate training and noise steps alike; one round where `effort_per_round`);
        None for an attack that runs no model. A cached clean surrogate (TAP, HYPO, SEP) is counted
        as if it were trained: the count is of the method, not of this run's cache."""
        return None

    def effort(self, n_images: int) -> dict | None:
        """`gradient_evaluations` on `n_images` beside the official settings' (the config's defaults)
        on CIFAR-10's 50,000 training images, and our share of them; None for a model-free attack.
        Stored with every poison (`record.poison.effort`) for the report's effort figure."""
        ours = self.gradient_evaluations(n_images)
        if ours is None:
            return None
        official = type(self)(self.Config()).gradient_evaluations(OFFICIAL_TRAIN_SIZE)
        return {"gradient_evaluations": ours, "official_gradient_evaluations": official,
                "official_share": ours / official, "per": "round" if self.effort_per_round else "poison"}

    def input_fingerprint(self) -> str | None:
        """What the files this attack reads besides the dataset hold (external's poison file), so that
        a record made with one file is not counted done for another put at the same path; None
        where it reads none."""
        return None

    def precision(self, device: torch.device) -> str:
        """What the attack's model passes run in on `device`: 'bf16' where its config asks for it
        (`SurrogateConfig.bf16`) and the device computes it natively; model-free attacks: fp32."""
        return precision_for(getattr(self.config, "bf16", False), device)

    def __call__(self, data: ImageSet, ctx: RunContext) -> Poison:
        torch.manual_seed(ctx.seed)
        # Every surrogate forward and backward of `generate` runs under this autocast, as victim
        # training does: 3-5x faster per step on this project's bf16-native CPUs, and bf16 on CUDA. It has no
        # weight cache (see `autocast_to`): a plugin must not open its own cached autocast inside.
        with autocast_to(self.precision(ctx.device), ctx.device):
            poison = self.generate(data, ctx)
        check_budget(data.images, poison)
        return poison


@dataclass(frozen=True)
class LinfConfig:
    """Shared by sample-wise L-inf attacks."""

    eps: float = 8 / 255  # L-inf budget in [0, 1] pixel units

    def __post_init__(self):
        require(0 < self.eps <= 1, "eps", f"must be in (0, 1] (pixel units; 8/255 = {8 / 255:.4f}), got {self.eps}")


@dataclass(frozen=True)
class SurrogateConfig:
    """The model a model-based attack (EM, TAP, REM, MI-UE, HYPO, SEP) optimises its noise against.

    Every such attack's `Config` subclasses this and calls `super().__post_init__()` from its own.
    All their official codes (APBench's for HYPO) use a CIFAR ResNet-18 in fp32.
    """

    surrogate: str = "resnet18"  # a registered architecture
    surrogate_width: int = 0  # the surrogate arch's `width` argument (0 = the arch's default)
    # bf16 autocast for the surrogate where the device computes bf16 natively (official: fp32); see
    # Attack.precision and docs/attacks.md for the measured effect.
    bf16: bool = True

    def __post_init__(self):
        require(self.surrogate in ARCHS, "surrogate",
                f"unknown arch {self.surrogate!r}; known archs: {', '.join(ARCHS.names())}")
        require(self.surrogate_width >= 0, "surrogate_width",
                f"must be >= 0 (0 = the arch's default), got {self.surrogate_width}")


def require_sgd(config) -> None:
    """Checks for the SGD fields `lr`, `momentum` and `weight_decay` of a surrogate-training config."""
    require(config.lr > 0, "lr", f"must be positive, got {config.lr}")
    require(0 <= config.momentum < 1, "momentum", f"must be in [0, 1), got {config.momentum}")
    require(config.weight_decay >= 0, "weight_decay", f"must be >= 0, got {config.weight_decay}")

"""Baselines every table needs: the clean data and uniform random noise at the same budget."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from methods.base import Attack, LinfConfig, Poison, apply_delta


@dataclass(frozen=True)
class CleanConfig:
    pass


@register_attack("clean", display="Clean")
class Clean(Attack):
    """The unpoisoned training set: the baseline row of every table."""

    Config = CleanConfig
    paper = ""
    perturbs = False

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        return Poison(data.images.clone(), "linf", 0.0)


@register_attack("random_noise", display="Random noise")
class RandomNoise(Attack):
    """Uniform L-inf noise, a fresh draw per image: the control for 'is it just noise?'.

    Huang et al. (ICLR 2021) report that such noise at 8/255 barely changes clean accuracy,
    which is what separates unlearnable examples from plain corruption.
    """

    Config = LinfConfig
    paper = "Huang et al., Unlearnable Examples: Making Personal Data Unexploitable, ICLR 2021 (random-noise control)"
    cite = "huang2021unlearnable"
    seeded = True

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        g = ctx.generator(data.device)
        noise = torch.rand(data.images.shape, generator=g, device=data.device) * 2 - 1
        return Poison(apply_delta(data.images, noise * self.config.eps, "linf", self.config.eps), "linf", self.config.eps)

from dataclasses import dataclass

import torch

from bench.registry import register_attack
from methods.base import Attack, Poison, apply_delta


@dataclass(frozen=True)
class ClasswiseNoiseConfig:
    eps: float = 8 / 255  # L-inf budget in [0, 1] pixel units


@register_attack("classwise_noise", display="Class-wise noise")
class ClasswiseNoise(Attack):
    """One uniform L-inf noise pattern per class, shared by all images of the class."""

    Config = ClasswiseNoiseConfig
    paper = "Huang et al., Unlearnable Examples, ICLR 2021 (class-wise noise)"

    def generate(self, data, ctx):
        g = ctx.generator(data.device)
        shape = (data.num_classes, *data.images.shape[1:])
        noise = (torch.rand(shape, generator=g, device=data.device) * 2 - 1) * self.config.eps
        delta = noise[data.labels]  # each image gets its class's pattern
        return Poison(apply_delta(data.images, delta, "linf", self.config.eps), "linf", self.config.eps)

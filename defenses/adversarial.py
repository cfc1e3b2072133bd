"""Adversarial training: the defender trains on worst-case inputs within an L-inf ball."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.config import require
from bench.registry import register_defense
from bench.robust import pgd_linf
from defenses.base import Defense


@dataclass(frozen=True)
class ATConfig:
    eps: float = 8 / 255  # L-inf radius in [0, 1] pixel units; 8/255 standard, 4/255 in REM/MI-UE evaluations
    step_size: float = 2 / 255  # PGD step in [0, 1] pixel units; 2/255 = eps/4
    steps: int = 10  # PGD iterations per training step (PGD-10)
    random_start: bool = True  # start from a uniform point of the ball, as Madry et al.

    def __post_init__(self):
        require(0 < self.eps <= 1, "eps", f"must be in (0, 1], got {self.eps}")
        require(0 < self.step_size <= 1, "step_size", f"must be in (0, 1], got {self.step_size}")
        require(self.steps >= 1, "steps", f"must be at least 1, got {self.steps}")


@register_defense("at", display="AT")
class AdversarialTraining(Defense):
    """PGD adversarial training (Madry et al., ICLR 2018).

    Threat model: a poisoner whose perturbation fits in an L-inf ball of radius `eps`; training on
    the loss-maximising point of the ball around each (augmented) training image denies it the
    shortcut. Defaults are the standard CIFAR-10 PGD-10 (eps 8/255, step 2/255, uniform random
    start). As in APBench's `MadrysLoss`, the inner maximisation runs with the model in eval mode
    (batch-norm running statistics, no update of them by attack steps) and the training step then
    sees only the adversarial batch. APBench starts from Gaussian noise of scale step_size; we use
    Madry's uniform start. The training loop calls the adversary inside its autocast, so the attack
    steps run in the training step's precision (`bench.train.precision`). The PGD loop is
    `bench.robust.pgd_linf`, which the robust-accuracy analysis runs too.
    """

    Config = ATConfig
    paper = "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018"
    cite = "madry2018towards"
    # A cheap setting for the CPU smoke grid: PGD-2 with eps/2 steps reaches the ball's corners.
    presets = {"cpu_smoke": {"steps": 2, "step_size": 4 / 255}}

    def adversary(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        return pgd_linf(model, x, y, eps=c.eps, step_size=c.step_size, steps=c.steps, random_start=c.random_start)

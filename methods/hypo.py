"""Hypocritical perturbations (HYPO)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.config import require
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from methods.base import Attack, Poison, apply_delta
from methods.bilevel import Checkpoint, DeltaStore, batches, cross_entropy, frozen, signed_steps, to_unit
from methods.clean_surrogate import CleanSurrogateConfig, clean_surrogate
from methods.tap import clean_recipe


@dataclass(frozen=True)
class HYPOConfig(CleanSurrogateConfig):
    eps: float = 8 / 255  # L-inf budget, [0, 1] pixel units
    step_size: float = 0.8 / 255  # signed-gradient descent step (APBench's --step_size default; Tao et al.'s code: eps / 5)
    steps: int = 100  # descent steps per image (APBench: range(100))
    batch_size: int = 512  # images per step; each image's steps are its own (model in eval mode)
    # The clean model: CleanSurrogateConfig's defaults are TAP's, so a grid with tap and hypo trains it once.

    def __post_init__(self):
        super().__post_init__()
        require(0 < self.eps <= 1, "eps", f"must be in (0, 1] pixel units, got {self.eps}")
        require(self.step_size > 0, "step_size", f"must be positive, got {self.step_size}")
        for field in ("steps", "batch_size"):
            require(getattr(self, field) >= 1, field, f"must be at least 1, got {getattr(self, field)}")


@register_attack("hypo", display="HYPO")
class HypocriticalPerturbations(Attack):
    """Perturbations that make a fixed clean model even more right about each training image.

    Tao et al., "Better Safe Than Sorry: Preventing Delusive Adversaries with Adversarial
    Training", NeurIPS 2021 (attack P2, "hypocritical"); settings of APBench's HYPO row
    (lafeat/apbench attack/hypo_poisons.py, poisons_generate.py). Threat model: L-inf 8/255 per
    image. From the clean image, 100 signed-gradient *descent* steps of 0.8/255 on the
    cross-entropy of the true label under a clean model in eval mode, projected to the 8/255 ball
    and to [0, 1]; no random start and no augmentation, as there. The model is simple to fit
    through the perturbations, so a victim learns them instead of the images.

    Step size: the default is APBench's 0.8/255 (`poisons_generate.py`, `--step_size`). Tao et
    al.'s own code (TLMichael/Delusive-Adversary `poison.py`) takes 100 steps of eps / 5, 1.6/255
    at 8/255, twice ours (`step_size = 1.6 / 255` gives it).

    Differences: the clean model is TAP's cached clean surrogate (ResNet-18, TAP's official
    40-epoch recipe, fp32; `methods.clean_surrogate`), trained on the data being poisoned, where
    APBench loads a ResNet-18 it ships (`attack/data/hypo_checkpoint.pth`, recipe not stated) and
    Tao et al.'s code a VGG-16 trained 150 epochs; our models take inputs in [0, 1] without a
    normalising layer, as APBench's ResNet-18. Images go 512 to a batch instead of 128: each image's
    steps depend on it alone (eval mode), so only speed changes.
    """

    Config = HYPOConfig
    paper = "Tao et al., Better Safe Than Sorry: Preventing Delusive Adversaries with Adversarial Training, NeurIPS 2021"
    cite = "tao2021better"
    # The surrogate settings are TAP's CPU preset's, so that the CPU grids share its cached model.
    presets = {"cpu": {"surrogate": "tiny_cnn", "surrogate_width": 32, "surrogate_epochs": 15, "steps": 20},
               "one_round": {"surrogate_epochs": 1},
               "one_step": {"surrogate_epochs": 1, "steps": 1}}
    seeded = True  # the clean model's initialisation and training

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        c = self.config
        images, labels, device = data.images, data.labels, data.device
        model, _ = clean_surrogate(c, data, ctx, clean_recipe(c), "hypo")
        checkpoint = Checkpoint(ctx.work_dir, ctx.checkpoint_every_s, ctx.stamp)
        state = checkpoint.load(device, ("delta", "batch"))
        delta, next_batch = DeltaStore(images.shape, c.eps, device), 0
        if state is not None:
            delta.q, next_batch = state["delta"], int(state["batch"])
        chunks = batches(len(images), c.batch_size, device)
        bar = ctx.bar(len(chunks), "hypo batches", initial=next_batch)
        with frozen(model):
            for b in range(next_batch, len(chunks)):
                idx = chunks[b]
                x = to_unit(images[idx])
                delta[idx] = signed_steps(model, x, torch.zeros_like(x), labels[idx], cross_entropy, c.steps,
                                          c.step_size, c.eps, descent=True)
                bar.update(1)
                checkpoint.save({"delta": delta.q, "batch": b + 1})
        bar.close()
        return Poison(apply_delta(images, delta.all(), "linf", c.eps), "linf", c.eps)

    def gradient_evaluations(self, n_images: int) -> float:
        return self.config.surrogate_epochs + self.config.steps

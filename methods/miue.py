"""MI-UE: unlearnable examples that lower mutual information via intra-class feature collapse."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from bench.archs import IMAGENET_MEAN, IMAGENET_STD
from bench.config import require
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from methods.base import Attack, Poison, SurrogateConfig, apply_delta, require_sgd
from methods.bilevel import (SNAPSHOT_KEYS, Checkpoint, DeltaStore, batches, cosine_lr, frozen, make_surrogate, restore,
                             signed_steps, snapshot, to_unit)
from methods.miue_loss import supcon_loss


@dataclass(frozen=True)
class MIUEConfig(SurrogateConfig):
    eps: float = 8 / 255  # L-inf budget, [0, 1] pixel units
    epochs: int = 100  # rounds: one surrogate epoch, then one pass of noise steps
    steps: int = 10  # noise descent steps per batch and round
    step_size_start: float = 0.2 / 255  # noise step in the first round ...
    step_size_end: float = 0.4 / 255  # ... growing linearly toward this one (reached after the last)
    temperature: float = 0.1  # of the supervised contrastive loss on cosine similarities
    ce_weight: float = 0.0  # optional cross-entropy term in the noise objective (official: none)
    batch_size: int = 128  # surrogate training batch
    perturb_batch_size: int = 512  # the contrastive loss is computed within batches of this size
    lr: float = 0.1  # surrogate SGD, cosine from lr to final_lr over the epochs
    final_lr: float = 1e-6  # surrogate learning rate at the last epoch of the cosine schedule
    momentum: float = 0.9  # surrogate SGD momentum
    weight_decay: float = 1e-4  # surrogate SGD L2 penalty
    post_aug: bool = True  # add the noise to a randomly flipped view of each clean image
    normalize: bool = True  # ImageNet mean/std inside the surrogate, as the official model

    def __post_init__(self):
        super().__post_init__()
        require(0 < self.eps <= 1, "eps", f"must be in (0, 1] pixel units, got {self.eps}")
        for field in ("epochs", "steps", "batch_size", "perturb_batch_size"):
            require(getattr(self, field) >= 1, field, f"must be at least 1, got {getattr(self, field)}")
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require(self.ce_weight >= 0, "ce_weight", f"must be >= 0, got {self.ce_weight}")
        require(self.step_size_start > 0 and self.step_size_end > 0, "step_size_start", "step sizes must be positive")
        require(0 <= self.final_lr <= self.lr, "final_lr", f"must be in [0, lr], got {self.final_lr}")
        require_sgd(self)


@register_attack("miue")
class MutualInformationUE(Attack):
    """Noise that collapses each class's features, lowering I(clean features; poisoned features).

    Zhu, Miao, Dong, Gao, "Why Do Unlearnable Examples Work: A Novel Perspective of Mutual
    Information", ICLR 2026. Threat model: L-inf 8/255 per image. As the official `gen_miue.py`:
    100 rounds; each trains the surrogate (CIFAR ResNet-18 normalising by ImageNet statistics
    inside) one epoch of cross-entropy on the poisoned data (SGD 0.1, momentum 0.9, wd 1e-4,
    cosine to 1e-6, batch 128), then, with the surrogate in eval mode, takes 10 signed descent
    steps on every image of the supervised contrastive loss of penultimate features, computed
    within shuffled batches of 512 (temperature 0.1, self-pairs in both sums); the step grows
    from 0.2/255 to 0.4/255 as `alpha_e = (E-e+1)/E * (0.2 - 0.4)/255 + 0.4/255`. Noise starts at
    zero. With `post_aug` the noise is fitted to a randomly flipped view of each clean image: the
    official transform is RandomResizedCrop(scale=(1, 1)) + flip, and that crop always returns the
    whole 32x32 image under torchvision's sampling rule, so the flip is all of it. Differences:
    the surrogate is this project's CIFAR ResNet-18 with PyTorch's default initialisation (the
    official torchvision-style one draws its convolutions He-normal over fan-out), and its training
    inputs are clamped to [0, 1] (the official loop adds the noise unclamped, which only matters
    where a flip moved the noise off the pixels it was fitted to); and the surrogate runs in bf16
    autocast with channels_last weights where the device computes bf16 natively (`bf16 = false`
    runs fp32, as the official code; docs/attacks.md has the measured effect).
    """

    Config = MIUEConfig
    paper = ("Zhu, Miao, Dong, Gao, Why Do Unlearnable Examples Work: A Novel Perspective of Mutual "
             "Information, ICLR 2026")
    cite = "zhu2026why"
    presets = {"cpu": {"surrogate": "tiny_cnn", "surrogate_width": 16, "epochs": 12, "steps": 10,
                       "step_size_start": 0.8 / 255, "step_size_end": 1.6 / 255, "perturb_batch_size": 256},
               "one_round": {"epochs": 1}, "one_step": {"epochs": 1, "steps": 1}}
    seeded = True

    def objective(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = model.features(x)
        loss = supcon_loss(features, y, self.config.temperature)
        if self.config.ce_weight:
            loss = loss + self.config.ce_weight * F.cross_entropy(model.classifier(features), y)
        return loss

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        c = self.config
        images, labels, device = data.images, data.labels, data.device
        model = make_surrogate(c, data.num_classes, device, ctx.seed)
        if c.normalize:
            model.normalize_inputs(IMAGENET_MEAN, IMAGENET_STD)
        opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        deltas = DeltaStore(images.shape, c.eps, device)
        g = ctx.generator(device)
        checkpoint = Checkpoint(ctx.work_dir, ctx.checkpoint_every_s)
        state = checkpoint.load(device, (*SNAPSHOT_KEYS, "delta", "epoch"))
        start = 0
        if state is not None:
            restore(state, model, opt, g)
            deltas.q, start = state["delta"], int(state["epoch"])
            ctx.log(f"miue: resuming after epoch {start}")

        def view(idx: torch.Tensor) -> torch.Tensor:
            x = to_unit(images[idx])
            if c.post_aug:
                flip = torch.rand(len(idx), 1, 1, 1, generator=g, device=device) < 0.5
                x = torch.where(flip, x.flip(3), x)
            return x

        bar = ctx.bar(c.epochs, "miue epochs", initial=start)
        for epoch in range(start, c.epochs):
            for group in opt.param_groups:  # the official LambdaLR, stepped once per epoch
                group["lr"] = cosine_lr(c.lr, c.final_lr, epoch, c.epochs)
            model.train()
            train_loss = torch.zeros((), device=device)  # summed on the device: no synchronisation per step
            for idx in batches(len(images), c.batch_size, device, g):
                loss = F.cross_entropy(model((view(idx) + deltas[idx]).clamp(0, 1)), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                train_loss += loss.detach() * len(idx)
            e, train_loss = epoch + 1, train_loss.item()
            alpha = (c.epochs - e + 1) / c.epochs * (c.step_size_start - c.step_size_end) + c.step_size_end
            with frozen(model):
                for idx in batches(len(images), c.perturb_batch_size, device, g):
                    deltas[idx] = signed_steps(model, view(idx), deltas[idx], labels[idx], self.objective, c.steps, alpha, c.eps)
            checkpoint.save(snapshot(model, opt, g, delta=deltas.q, epoch=e))
            bar.update(1); bar.set_postfix(ce=f"{train_loss / len(images):.3f}")
            ctx.log(f"miue epoch {e}/{c.epochs}: surrogate CE on poisoned data {train_loss / len(images):.3f}, step {alpha * 255:.3f}/255")
        bar.close()
        return Poison(apply_delta(images, deltas.all(), "linf", c.eps), "linf", c.eps)

    def gradient_evaluations(self, n_images: int) -> float:
        return self.config.epochs * (1 + self.config.steps)  # each round: one surrogate epoch, then the noise steps

"""MI-UE: unlearnable examples that lower mutual information via intra-class feature collapse."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bench.archs import IMAGENET_MEAN, IMAGENET_STD
from bench.config import added_field, require
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from methods.base import Attack, Poison, SurrogateConfig, apply_delta, require_sgd
from methods.bilevel import (SNAPSHOT_KEYS, Checkpoint, DeltaStore, batches, cosine_lr, frozen, make_surrogate, restore,
                             signed_steps, snapshot, to_unit)
from methods.miue_loss import supcon_loss


def he_fan_out_but_stem(model: nn.Module) -> nn.Module:
    """The official surrogate's initialisation: every convolution but the first He-normal over fan-out.

    The official ResNet (`models/resnet.py`, `ResNet.__init__`) draws every `Conv2d` with
    `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, sets BatchNorm to weight 1, bias 0 (as
    PyTorch does) and leaves its `Linear` head at PyTorch's default; `gen_miue.py` then replaces
    `conv1` with a fresh `nn.Conv2d(3, 64, 3, 1, 1)`, so the stem keeps PyTorch's default
    (kaiming_uniform, a=sqrt(5)). Here "the first" is the first `Conv2d` in module order, the one
    that sees the input in every registered arch: the CIFAR stem of a ResNet, a VGG's first
    convolution, `tiny_cnn`'s first block. The official code has no rule for other archs; this one
    is the ResNet rule applied to whatever surrogate a grid picks. Biases, BatchNorm and linear
    layers keep PyTorch's defaults.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs[1:]:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return model


# How the surrogate's weights are drawn after the arch builds it with PyTorch's defaults.
SURROGATE_INITS = {"official": he_fan_out_but_stem, "torch_default": lambda model: model}


def round_to_levels(clean: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Our publication: the nearest uint8 level (`apply_delta`)."""
    return apply_delta(clean, delta, "linf", eps)


def floor_to_levels(clean: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The official evaluation loader's images (`datasets/cifar.py`, `CIFAR10Index`):
    `np.clip(x.astype(float32) + 255 * delta, 0, 255).astype(uint8)`, a float32 sum, clipped, then
    truncated (floor, the sum being >= 0). The clamp to the budget's levels only guards against a
    float32 sum that lands a hair under a level (it keeps the poison's claim)."""
    levels = math.floor(eps * 255 + 1e-6)
    clean_f = clean.float()
    steps = ((clean_f + delta * 255).clamp(0, 255).trunc() - clean_f).clamp(-levels, levels)
    return (clean_f + steps).to(torch.uint8)


# How the float noise becomes the uint8 images that are published and trained on.
QUANTISERS = {"round": round_to_levels, "floor": floor_to_levels}


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
    # "official": He-normal over fan-out for every conv but the stem (`he_fan_out_but_stem`);
    # "torch_default": PyTorch's default init throughout (this plugin's behaviour before).
    surrogate_init: str = "official"
    # "round": noise to the nearest uint8 level; "floor": the official evaluation loader's truncation.
    quantise: str = added_field("round")

    def __post_init__(self):
        super().__post_init__()
        require(self.surrogate_init in SURROGATE_INITS, "surrogate_init",
                f"must be one of {', '.join(SURROGATE_INITS)}, got {self.surrogate_init!r}")
        require(self.quantise in QUANTISERS, "quantise", f"must be one of {', '.join(QUANTISERS)}, got {self.quantise!r}")
        require(0 < self.eps <= 1, "eps", f"must be in (0, 1] pixel units, got {self.eps}")
        for field in ("epochs", "steps", "batch_size", "perturb_batch_size"):
            require(getattr(self, field) >= 1, field, f"must be at least 1, got {getattr(self, field)}")
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require(self.ce_weight >= 0, "ce_weight", f"must be >= 0, got {self.ce_weight}")
        require(self.step_size_start > 0 and self.step_size_end > 0, "step_size_start", "step sizes must be positive")
        require(0 <= self.final_lr <= self.lr, "final_lr", f"must be in [0, lr], got {self.final_lr}")
        require_sgd(self)


@register_attack("miue", display="MI-UE")
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
    whole 32x32 image under torchvision's sampling rule, so the flip is all of it. The surrogate
    is this project's CIFAR ResNet-18 initialised as the official one (`surrogate_init =
    "official"`: He-normal over fan-out for every convolution but the stem, which `gen_miue.py`
    replaces with a default-initialised one; for another surrogate arch, every conv but its first,
    see `he_fan_out_but_stem`); `"torch_default"` leaves PyTorch's default init. The noise is
    published rounded to the nearest uint8 level; `quantise = "floor"` truncates as the official
    evaluation loader does. Differences: the surrogate's training inputs are clamped to [0, 1]
    (the official loop adds the noise unclamped, which only matters where a flip moved the noise
    off the pixels it was fitted to); the noise lives in steps of eps/127 between rounds
    (`DeltaStore`); and the surrogate runs in bf16 autocast with channels_last weights where the
    device computes bf16 natively (`bf16 = false` runs fp32, as the official code; docs/attacks.md
    has the measured effect of each). The released code ships no mutual-information estimator:
    `bench.mi`'s analysis has no official counterpart.
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

    def surrogate(self, num_classes: int, device: torch.device, seed: int) -> nn.Module:
        """The fresh surrogate `generate` trains: the arch, drawn by `surrogate_init`, normalising inside."""
        model = SURROGATE_INITS[self.config.surrogate_init](make_surrogate(self.config, num_classes, device, seed))
        return model.normalize_inputs(IMAGENET_MEAN, IMAGENET_STD) if self.config.normalize else model

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        c = self.config
        images, labels, device = data.images, data.labels, data.device
        model = self.surrogate(data.num_classes, device, ctx.seed)
        opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        deltas = DeltaStore(images.shape, c.eps, device)
        g = ctx.generator(device)
        checkpoint = Checkpoint(ctx.work_dir, ctx.checkpoint_every_s, ctx.stamp)
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
        return Poison(QUANTISERS[c.quantise](images, deltas.all(), c.eps), "linf", c.eps)

    def gradient_evaluations(self, n_images: int) -> float:
        return self.config.epochs * (1 + self.config.steps)  # each round: one surrogate epoch, then the noise steps

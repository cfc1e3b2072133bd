"""Self-ensemble protection (SEP): the checkpoints of one clean training run as the ensemble."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.config import require
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from bench.train import Recipe
from methods.base import Attack, Poison, apply_delta
from methods.bilevel import Checkpoint, DeltaStore, batches, make_surrogate, to_unit
from methods.clean_surrogate import CleanSurrogateConfig, clean_surrogate


@dataclass(frozen=True)
class SEPConfig(CleanSurrogateConfig):
    eps: float = 8 / 255  # L-inf budget, [0, 1] pixel units
    step_size: float = 1 / 255  # signed step on the image (official --alpha 1, in 1/255 units)
    steps: int = 30  # outer steps per image (official --epoch 30)
    models: int = 15  # checkpoints ensembled, evenly spaced over the run, ending at its last epoch (--num_model)
    variance_reduction: bool = True  # SEP-FA-VR: SVRE-style inner loop (ens_feature_svre.py); False: SEP-FA
    vr_steps: int = 15  # inner steps per outer step, one random checkpoint each (--msvrg)
    batch_size: int = 512  # images per batch; a batch shares its inner loop's random checkpoint draws
    # The protecting model's clean training (vanilla.py): SGD 0.1, momentum 0.9, wd 5e-4, batch 128,
    # crop + flip, lr x0.1 at epochs 75 and 90 of 120.
    surrogate_epochs: int = 120

    def __post_init__(self):
        super().__post_init__()
        require(0 < self.eps <= 1, "eps", f"must be in (0, 1] pixel units, got {self.eps}")
        require(self.step_size > 0, "step_size", f"must be positive, got {self.step_size}")
        for field in ("steps", "models", "vr_steps", "batch_size"):
            require(getattr(self, field) >= 1, field, f"must be at least 1, got {getattr(self, field)}")
        require(self.models <= self.surrogate_epochs, "models",
                f"must be at most surrogate_epochs ({self.surrogate_epochs}): one checkpoint per epoch at most, got {self.models}")


def ensemble_epochs(epochs: int, models: int) -> tuple[int, ...]:
    """`models` epochs evenly spaced over `epochs`, the last one included (120, 15: 8, 16, ..., 120)."""
    return tuple(epochs * k // models for k in range(1, models + 1))


@torch.no_grad()
def class_means(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                batch_size: int = 1024) -> torch.Tensor:
    """(num_classes, D) mean penultimate features of the clean images of each class (eval mode)."""
    sums, counts = None, torch.bincount(labels, minlength=num_classes).float()
    for i in range(0, len(images), batch_size):
        features = model.features(to_unit(images[i : i + batch_size])).float()
        if sums is None:
            sums = torch.zeros(num_classes, features.shape[1], device=features.device)
        sums.index_add_(0, labels[i : i + batch_size], features)
    return sums / counts.clamp(min=1)[:, None]


def alignment_gradient(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient in `delta` of the squared distance of the features of x + delta to `target` (N, D).

    Summed rather than averaged (the official MSE): only its sign per pixel and the sums of such
    gradients are used, which one common scale does not change, and sums keep bf16 gradients away
    from underflow.
    """
    delta = delta.detach().requires_grad_(True)
    loss = (model.features((x + delta).clamp(0, 1)).float() - target).square().sum()
    (grad,) = torch.autograd.grad(loss, delta)
    return grad


@register_attack("sep", display="SEP")
class SelfEnsembleProtection(Attack):
    """Targeted feature alignment against the checkpoints of one clean training run.

    Chen et al., "Self-Ensemble Protection: Training Checkpoints Are Good Data
    Protectors", ICLR 2023; settings of the official SEP-FA-VR (Sizhe-Chen/SEP ens_feature_svre.py,
    as its yield_task_parameters runs it: 15 models, 15 inner steps, eps 8). Threat model: L-inf
    8/255 per image. A ResNet-18 is trained on the clean data (vanilla.py, above); 15 of its epoch
    checkpoints, evenly spaced and ending at the last, form the ensemble. For each checkpoint, the
    mean penultimate feature of each class over the clean training set; each image is pushed toward
    the mean feature of class (y + C/2) mod C ((y + 5) mod 10 on CIFAR-10, +50 on CIFAR-100) by 30
    signed descent steps of 1/255 from the clean image, on the squared feature distance, projected
    to the 8/255 ball and [0, 1]. Each step (variance reduction, SVRE) takes the gradient of every
    checkpoint at the current point and their mean, then 15 inner steps from that point, each on a
    random checkpoint k, accumulating grad_k(inner point) - grad_k(current point) + mean and moving
    the inner point by the sign of that sum; the outer step moves by the sign of the final sum.
    `variance_reduction = false` is SEP-FA (ens_feature.py): each step moves by the sign of the
    mean gradient.

    Differences: the official run keeps a checkpoint only when *test* accuracy improves and spaces
    the ensemble over those; an attack here sees no test set, so the ensemble is spaced over epochs.
    Its first training epoch warms the learning rate up from 0.001, which our training loop does
    not. Its inner loop aligns every checkpoint's features to the class means of the *last*
    checkpoint of its outer loop (`fs[j]` after that loop), apparently a slip: here each checkpoint
    aligns to its own class means, as in the correction term of the same sum. The official class
    means of the *first* checkpoint are taken with BatchNorm in train mode (batch statistics of
    5,000 images, the running statistics updated on the way): `get_mean_feature` never sets a mode,
    the freshly built model is in train mode, and only `valid_test`, which runs after it, switches
    to eval, where the later checkpoints' means are taken; that pass also moves the first
    checkpoint's running statistics for its gradient in the first outer step. Here every
    checkpoint's means are taken in eval mode (`class_means`). Its models normalise
    inputs by the CIFAR-10 mean/std inside; ours take [0, 1] inputs. It crafts 5,000 images to a
    batch (one random draw per inner step for all of them); here 512 (memory), which changes only
    which images share a draw. Poisons are rounded to the nearest level; the official loader
    truncates (`(x * 255).astype(uint8)`).
    """

    Config = SEPConfig
    paper = "Chen et al., Self-Ensemble Protection: Training Checkpoints Are Good Data Protectors, ICLR 2023"
    cite = "chen2023self"
    presets = {"cpu": {"surrogate": "tiny_cnn", "surrogate_width": 16, "surrogate_epochs": 10, "models": 5,
                       "steps": 10, "vr_steps": 5},
               "one_round": {"surrogate_epochs": 1, "models": 1, "steps": 1},
               "one_step": {"surrogate_epochs": 1, "models": 1, "steps": 1, "vr_steps": 1}}
    seeded = True

    def clean_recipe(self) -> Recipe:
        c = self.config
        return Recipe(epochs=c.surrogate_epochs, batch_size=c.surrogate_batch_size, lr=c.surrogate_lr, momentum=0.9,
                      weight_decay=5e-4, schedule="multistep", milestones=(75 / 120, 90 / 120), gamma=0.1, bf16=c.bf16)

    def ensemble(self, data: ImageSet, ctx: RunContext) -> list[nn.Module]:
        """The checkpoints of one clean run at `ensemble_epochs`, each frozen in eval mode."""
        c = self.config
        epochs = ensemble_epochs(c.surrogate_epochs, c.models)
        _, states = clean_surrogate(c, data, ctx, self.clean_recipe(), "sep", keep_epochs=epochs)
        members = []
        for epoch in epochs:
            member = make_surrogate(c, data.num_classes, data.device, ctx.seed)
            member.load_state_dict(states[epoch])
            members.append(member.eval().requires_grad_(False))
        return members

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        c = self.config
        images, labels, device, num_classes = data.images, data.labels, data.device, data.num_classes
        targets = (labels + num_classes // 2) % num_classes
        missing = sorted(set(targets.unique().tolist()) - set(labels.unique().tolist()))
        if missing:
            raise ValueError(f"sep: target classes {missing} have no training image whose features to align to "
                             f"(each class y aims at (y + {num_classes // 2}) mod {num_classes})")
        members = self.ensemble(data, ctx)
        means = [class_means(m, images, labels, num_classes) for m in members]
        g = ctx.generator(device)
        checkpoint = Checkpoint(ctx.work_dir, ctx.checkpoint_every_s, ctx.stamp)
        state = checkpoint.load(device, ("delta", "batch", "rng"))
        delta, next_batch = DeltaStore(images.shape, c.eps, device), 0
        if state is not None:
            delta.q, next_batch = state["delta"], int(state["batch"])
            g.set_state(state["rng"].to(g.get_state().device))
        chunks = batches(len(images), c.batch_size, device)
        bar = ctx.bar(len(chunks), "sep batches", initial=next_batch)
        for b in range(next_batch, len(chunks)):
            idx = chunks[b]
            delta[idx] = self.align(members, [m[targets[idx]] for m in means], to_unit(images[idx]), g)
            bar.update(1)
            checkpoint.save({"delta": delta.q, "batch": b + 1, "rng": g.get_state()})
        bar.close()
        return Poison(apply_delta(images, delta.all(), "linf", c.eps), "linf", c.eps)

    def gradient_evaluations(self, n_images: int) -> float:
        c = self.config
        # Each outer step: every member's gradient, then (SEP-FA-VR) one member's per inner step.
        per_step = c.models + (c.vr_steps if c.variance_reduction else 0)
        return c.surrogate_epochs + c.steps * per_step

    def align(self, members: list[nn.Module], targets: list[torch.Tensor], x: torch.Tensor,
              g: torch.Generator) -> torch.Tensor:
        """The perturbation of one batch `x`: `steps` outer steps, each with its inner loop where on."""
        c = self.config

        def step(d: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
            d = (d - c.step_size * direction.sign()).clamp(-c.eps, c.eps)
            return (x + d).clamp(0, 1) - x

        delta = torch.zeros_like(x)
        for _ in range(c.steps):
            grads = [alignment_gradient(m, x, delta, t) for m, t in zip(members, targets)]
            mean = sum(grads) / len(grads)
            if not c.variance_reduction:
                delta = step(delta, mean)
                continue
            inner, total = delta, torch.zeros_like(x)
            corrections = [mean - grad for grad in grads]  # SVRE's control variates, once per outer step
            for _ in range(c.vr_steps):
                k = int(torch.randint(len(members), (1,), generator=g, device=g.device).item())
                total = total + alignment_gradient(members[k], x, inner, targets[k]) + corrections[k]
                inner = step(inner, total)
            delta = step(delta, total)
        return delta

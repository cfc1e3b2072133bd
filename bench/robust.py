"""PGD under an L-inf budget: the adversary of adversarial training and the robust-accuracy analysis.

`pgd_linf` is projected gradient descent on the cross-entropy (Madry et al., Towards Deep Learning
Models Resistant to Adversarial Attacks, ICLR 2018), one loop for both users: `defenses.adversarial`
(AT's inner maximisation, each training batch) and `robust_accuracy` (the grid's `analysis =
["robust"]`: a trained victim's accuracy under PGD on the test images it was evaluated on).

Threat model of the analysis: a test-time attacker with white-box access to the trained victim, who
may change each test image within an L-inf ball of radius `eps` (pixel units in [0, 1]). It measures
whether a defense against unlearnable examples (AT above all) also buys robustness, beside the clean
accuracy the tables show.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bench.config import ConfigError, require
from bench.data import ImageSet, balanced_subset
from bench.train import to_float

SUBSET_SEED = 0  # test_size draws the same class-balanced images for every cell of the same data


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
             random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """The loss-maximising point PGD finds within the L-inf ball of radius `eps` around `x`.

    `x` (N, C, H, W) float in [0, 1]; `y` hard labels (N,) or soft ones (N, K); `steps` signed-gradient
    steps of `step_size`, each projected back onto the ball and onto [0, 1]. With `random_start` the
    walk starts at a uniform point of the ball (Madry et al.), drawn from `generator` (the global
    random state when None). The model runs in eval mode (batch-norm running statistics, none updated
    by attack steps) and is left in the mode it was found in; parameters' `.grad` are not touched.
    The caller's autocast applies: AT's steps run in the training step's precision.
    """
    was_training = model.training
    model.eval()
    x_adv = x.detach().clone()
    if random_start:
        x_adv = (x_adv + torch.empty_like(x_adv).uniform_(-eps, eps, generator=generator)).clamp_(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        # Gradient with respect to the input only: the parameters' .grad stay untouched.
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    model.train(was_training)
    return x_adv.detach()


@dataclass(frozen=True)
class RobustConfig:
    """The robust-accuracy analysis: PGD-20 at L-inf 8/255 from a random start, the standard CIFAR-10
    evaluation (Madry et al. 2018; the PGD-20 of TRADES, Zhang et al. ICML 2019, and of RobustBench's
    PGD baselines)."""

    eps: float = 8 / 255  # L-inf radius in [0, 1] pixel units
    step_size: float = 2 / 255  # PGD step in [0, 1] pixel units; 2/255 = eps/4
    steps: int = 20  # PGD iterations per test batch
    random_start: bool = True  # start from a uniform point of the ball, as Madry et al.
    test_size: int | None = None  # a class-balanced subset of the cell's test images to attack; None = all of them

    def __post_init__(self):
        require(0 < self.eps <= 1, "eps", f"must be in (0, 1] pixel units, got {self.eps}")
        require(0 < self.step_size <= 1, "step_size", f"must be in (0, 1] pixel units, got {self.step_size}")
        require(self.steps >= 1, "steps", f"must be at least 1, got {self.steps}")
        require(self.test_size is None or self.test_size >= 1, "test_size",
                f"must be at least 1 image, or unset for the whole test set, got {self.test_size}")


def robust_accuracy(model: nn.Module, test: ImageSet, config: RobustConfig, *, seed: int, batch_size: int = 1024,
                    channels_last: bool = True, device: torch.device | None = None) -> dict:
    """`model`'s accuracy on `test` under `pgd_linf` with `config`, as the record's analysis keys.

    An image counts as robust when the model classifies it correctly both as it is and after the
    attack (the clean image is in the ball; as AutoAttack counts), so `robust_acc` <= `robust_clean_acc`,
    the clean accuracy of the same images under the same arithmetic. In fp32, whatever the recipe
    trained in: sign gradients from bf16 can point elsewhere and make a weaker attack, which would
    overstate robustness. The random start is drawn from a generator seeded with `seed` (the cell's).
    Batches move to `device` (default: where the images are), so a split held on the host works too.
    """
    device = torch.device(device) if device is not None else test.device
    if config.test_size is not None:
        if config.test_size > len(test):
            raise ConfigError(f"robust.test_size: {config.test_size} is more than the cell's {len(test)} test images")
        rows = balanced_subset(test.labels.cpu().numpy(), config.test_size, test.num_classes, SUBSET_SEED)
        test = test.take(torch.from_numpy(rows).to(test.device))
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    clean = robust = torch.zeros((), dtype=torch.long, device=device)
    model.eval()
    with torch.autocast(device.type, enabled=False):  # fp32 even inside a caller's autocast
        for i in range(0, len(test), batch_size):
            x = to_float(test.images[i : i + batch_size].to(device, non_blocking=True), channels_last)
            y = test.labels[i : i + batch_size].to(device, non_blocking=True)
            x_adv = pgd_linf(model, x, y, eps=config.eps, step_size=config.step_size, steps=config.steps,
                             random_start=config.random_start, generator=generator)
            with torch.no_grad():
                right = model(x).argmax(1) == y
                clean = clean + right.sum()
                robust = robust + (right & (model(x_adv).argmax(1) == y)).sum()
    n = max(len(test), 1)
    return {"robust_acc": robust.item() / n, "robust_clean_acc": clean.item() / n, "robust_eps": config.eps,
            "robust_step_size": config.step_size, "robust_steps": config.steps,
            "robust_random_start": config.random_start, "robust_images": len(test), "robust_precision": "fp32"}

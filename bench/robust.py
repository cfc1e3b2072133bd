"""Robust accuracy under an L-inf budget: PGD (the adversary of adversarial training and the quick
analysis) and AutoAttack (the standard evaluation).

`pgd_linf` is projected gradient descent on the cross-entropy (Madry et al., Towards Deep Learning
Models Resistant to Adversarial Attacks, ICLR 2018), one loop for both users: `defenses.adversarial`
(AT's inner maximisation, each training batch) and `robust_accuracy` (the grid's `analysis =
["robust"]`: a trained victim's accuracy under PGD on the test images it was evaluated on).
`autoattack_accuracy` (`analysis = ["autoattack"]`) runs the standard AutoAttack (Croce & Hein,
Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse Parameter-free Attacks,
ICML 2020) through the authors' code as packaged on PyPI (`pyautoattack`, the AutoAttack RobustBench
installs), an optional dependency: `pip install "unlearnable-bench[autoattack]"`.

Threat model of both analyses: a test-time attacker with white-box access to the trained victim, who
may change each test image within an L-inf ball of radius `eps` (pixel units in [0, 1]). They measure
whether a defense against unlearnable examples (AT above all) also buys robustness, beside the clean
accuracy the tables show. An attack can only show that an image is not robust, so each robust accuracy
is an upper bound of the true one; PGD-20 is the looser bound, AutoAttack the tighter one, expected at
or below PGD-20 on the same images (a large gap is the sign of gradient masking that AutoAttack was
made to catch).
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
    """The robust-accuracy analysis: PGD-20 at L-inf 8/255 in steps of 2/255 from a uniform random start,
    one restart, on the cross-entropy: the 20-step PGD of Madry et al.'s CIFAR-10 challenge
    (MadryLab/cifar10_challenge, config.json: epsilon 8, step_size 2, random_start). TRADES's
    evaluation (Zhang et al., ICML 2019; yaodongyu/TRADES, pgd_attack_cifar10.py) is another PGD-20:
    eps 0.031 in steps of 0.003 (0.77/255), also from a random start. A quick upper bound of the robust
    accuracy; `AutoAttackConfig` is the standard evaluation, expected at or below it."""

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
    test = _attack_subset(test, config.test_size, "robust")
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


# AutoAttack's standard version (Croce & Hein, ICML 2020), as its authors' AutoAttack._set_version
# ("standard", L-inf) fixes it; recorded with each result, never configurable, so that the number is
# the one the field reports.
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
AUTOATTACK_TARGETS = 9  # APGD-T and FAB-T each target the 9 most likely wrong classes: 10 classes at least
AUTOATTACK_PACKAGE = "pyautoattack"
AUTOATTACK_INSTALL = 'pip install "unlearnable-bench[autoattack]" (or pip install pyautoattack)'


@dataclass(frozen=True)
class AutoAttackConfig:
    """The AutoAttack analysis: the standard version (APGD-CE, APGD-T, FAB-T, Square: 100 iterations
    each for the first three, 5,000 queries for Square, one restart, 9 target classes) at L-inf
    `eps`, on a class-balanced subset of `test_size` test images: 1,000 by default, as the official
    evaluation script (fra31/auto-attack, autoattack/examples/eval.py, `--n_ex 1000`), since the full
    test set costs hours per cell on a CPU."""

    eps: float = 8 / 255  # L-inf radius in [0, 1] pixel units
    test_size: int | None = 1000  # a class-balanced subset of the cell's test images; None = all of them

    def __post_init__(self):
        require(0 < self.eps <= 1, "eps", f"must be in (0, 1] pixel units, got {self.eps}")
        require(self.test_size is None or self.test_size >= 1, "test_size",
                f"must be at least 1 image, or unset for the whole test set, got {self.test_size}")


def require_autoattack() -> None:
    """Raise a ConfigError that says how to install AutoAttack where it is not installed."""
    import importlib.util

    if importlib.util.find_spec(AUTOATTACK_PACKAGE) is None:
        raise ConfigError(f"analysis autoattack needs the {AUTOATTACK_PACKAGE} package (the authors' AutoAttack): "
                          f"{AUTOATTACK_INSTALL}")


def require_autoattack_classes(num_classes: int, dataset: str) -> None:
    """AutoAttack's standard version needs more classes than it has targets (`AUTOATTACK_TARGETS`)."""
    if num_classes <= AUTOATTACK_TARGETS:
        raise ConfigError(f"analysis autoattack: the standard version targets the {AUTOATTACK_TARGETS} most likely "
                          f"wrong classes and needs at least {AUTOATTACK_TARGETS + 1}; {dataset} has {num_classes}")


def _attack_subset(test: ImageSet, test_size: int | None, table: str) -> ImageSet:
    """`test`, or its class-balanced subset of `test_size` images (the same for every cell of the same data
    and for both analyses at the same size)."""
    if test_size is None:
        return test
    if test_size > len(test):
        raise ConfigError(f"{table}.test_size: {test_size} is more than the cell's {len(test)} test images")
    rows = balanced_subset(test.labels.cpu().numpy(), test_size, test.num_classes, SUBSET_SEED)
    return test.take(torch.from_numpy(rows).to(test.device))


def autoattack_accuracy(model: nn.Module, test: ImageSet, config: AutoAttackConfig, *, seed: int,
                        batch_size: int = 250, device: torch.device | None = None) -> dict:
    """`model`'s accuracy on `test` under the standard AutoAttack with `config`, as the record's analysis keys.

    Runs the authors' `AutoAttack(version="standard").run_standard_evaluation` (pyautoattack 0.2.0,
    whose attack code is fra31/auto-attack's unchanged): each attack only on the images every earlier
    one failed on, an image counting as robust when it is classified correctly as it is and survives
    all four (as `robust_accuracy` counts). The model takes float images in [0, 1] (a normalisation
    it needs is inside it, `bench.archs.Classifier`), runs in eval mode and is left in the mode it was
    found in. In fp32, whatever the recipe trained in: gradients from bf16 make weaker attacks, which
    would overstate robustness. AutoAttack's random starts are seeded with `seed` (the cell's); it
    seeds torch's global generators, which are restored afterwards. The images stay on the host and
    AutoAttack moves batches of `batch_size` to `device` (default: where the images are).
    torchattacks' AutoAttack is not used: its "standard" version runs APGD-CE, APGD-T and FAB-T for
    10 iterations, not the paper's 100, and Square on another step-size schedule (torchattacks 3.5.1).
    """
    require_autoattack()
    from pyautoattack import AutoAttack  # loaded only where a grid asks for it

    device = torch.device(device) if device is not None else test.device
    require_autoattack_classes(test.num_classes, "the cell's data")
    test = _attack_subset(test, config.test_size, "autoattack")
    x = to_float(test.images.cpu(), channels_last=False)
    y = test.labels.cpu()
    was_training = model.training
    model.eval()
    # Its attacks call torch.manual_seed, which seeds every CUDA device too: fork them all.
    forked = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.autocast(device.type, enabled=False), torch.random.fork_rng(devices=forked):
        adversary = AutoAttack(model, norm="Linf", eps=config.eps, version="standard", seed=seed, device=device)
        if tuple(adversary.attacks_to_run) != AUTOATTACK_ATTACKS:  # a future release that changed "standard"
            raise RuntimeError(f"pyautoattack's standard version runs {adversary.attacks_to_run}, "
                               f"not {list(AUTOATTACK_ATTACKS)}")
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        if (x_adv - x).abs().max().item() > config.eps + 1e-5 or x_adv.min() < 0 or x_adv.max() > 1:
            raise RuntimeError("AutoAttack returned images outside the L-inf ball or the [0, 1] range")
        clean = robust = 0
        with torch.no_grad():  # the verdict, recomputed from the images: the clean and the attacked predictions
            for i in range(0, len(test), batch_size):
                xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
                right = model(xb).argmax(1) == yb
                clean += right.sum().item()
                robust += (right & (model(x_adv[i : i + batch_size].to(device)).argmax(1) == yb)).sum().item()
    model.train(was_training)
    n = max(len(test), 1)
    return {"autoattack_acc": robust / n, "autoattack_clean_acc": clean / n, "autoattack_eps": config.eps,
            "autoattack_version": "standard", "autoattack_attacks": list(AUTOATTACK_ATTACKS),
            "autoattack_images": len(test), "autoattack_precision": "fp32",
            "autoattack_package": f"{AUTOATTACK_PACKAGE} {_version(AUTOATTACK_PACKAGE)}"}


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"

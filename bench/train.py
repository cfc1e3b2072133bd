"""One training loop for every cell: the data on the device, augmentation as batched tensor work.

In the spirit of airbench (Jordan, 2024): the uint8 training set sits on the device, each epoch
is a permutation of it, and random crop and flip are a gather over the whole batch, with no
PIL and no per-image Python. A set too large for the device stays on the host (a folder
dataset's memory-mapped cache: `bench.data.fits_on`), and each batch is gathered there and moved
to the device (`.to(device, non_blocking=True)`): the same code and the same random draws. On CUDA the loop uses bf16 autocast, channels_last and the fused SGD
step. On the CPU it is the same code, in bf16 autocast where the CPU computes bf16 natively (AMX or
AVX512_BF16: `cpu_computes_bf16`) and in fp32 elsewhere; every record says which (`precision`),
and `recipe.bf16 = false` asks for fp32 everywhere.
"""
from __future__ import annotations

import functools
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn
from torch.nn import functional as F

from bench.config import ConfigError, build_config, require
from bench.data import ImageSet


@dataclass(frozen=True)
class Recipe:
    """How a victim model is trained. Presets in `RECIPES`; every field can be overridden."""

    epochs: int = 60  # passes over the training set
    batch_size: int = 128  # images per SGD step
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 penalty on every parameter, as in the EM/ISS/APBench code
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"  # cosine: per step, down to 0
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of training where lr *= gamma
    gamma: float = 0.1  # multistep decay factor
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    crop_padding: int = 4  # random crop after zero padding by this many pixels; 0 = no crop
    flip: bool = True  # random horizontal flip
    eval_batch_size: int = 1024  # images per batch when testing (no gradients: larger fits)
    bf16: bool = True  # bf16 autocast on CUDA and on CPUs with AMX or AVX512_BF16 (see `precision`); fp32 otherwise
    channels_last: bool = True  # memory format; faster for conv nets on CUDA and on the CPU (1.3x for tiny_cnn here)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(all(0 < m < 1 for m in self.milestones), "milestones", "must be fractions of training in (0, 1)")
        require(0 < self.gamma <= 1, "gamma", f"must be a decay factor in (0, 1], got {self.gamma}")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"must be positive or unset, got {self.grad_clip}")
        require(self.crop_padding >= 0, "crop_padding", f"must be >= 0, got {self.crop_padding}")


# Cosine is annealed per step here; the official code steps it per epoch (a negligible difference).
RECIPES: dict[str, Recipe] = {
    # EM's official CIFAR-10 evaluation (configs/cifar10/resnet18.yaml): it clips gradients at 5.
    "em60": Recipe(epochs=60, batch_size=128, lr=0.1, weight_decay=5e-4, schedule="cosine", grad_clip=5.0),
    # The ISS paper's evaluation (liuzrcc/ImageShortcutSqueezing main.py): the same without clipping
    # (its AT cells train 100 epochs; a grid sets that per defense only by a separate recipe).
    "iss60": Recipe(epochs=60, batch_size=128, lr=0.1, weight_decay=5e-4, schedule="cosine"),
    # APBench train.py: 200 epochs, batch 256, MultiStepLR([100, 200, 300], gamma 0.5) = halve at epoch 100.
    "apbench200": Recipe(epochs=200, batch_size=256, lr=0.1, weight_decay=5e-4, schedule="multistep",
                         milestones=(0.5,), gamma=0.5),
    # APBench's linear probe of a SimCLR victim (util_us.py train_val_linear): 100 epochs, batch 128,
    # SGD 0.5 without weight decay; its lr falls only from 0.50 to 0.45 (a schedule computed over the
    # 500 pre-training epochs), which constant 0.5 approximates. bench/contrastive.py.
    "simclr_probe": Recipe(epochs=100, batch_size=128, lr=0.5, weight_decay=0.0, schedule="constant"),
    # The CPU smoke grid: tiny_cnn on a few thousand images in well under a minute per cell.
    "cpu_smoke": Recipe(epochs=12, batch_size=128, lr=0.05, weight_decay=5e-4, schedule="cosine"),
}


def make_recipe(spec: str | dict | None) -> Recipe:
    """A recipe from a preset name, or a table {preset = NAME, field = value, ...}."""
    if spec is None:
        spec = "em60"
    if isinstance(spec, str):
        spec = {"preset": spec}
    spec = dict(spec)
    preset = spec.pop("preset", "em60")
    if preset not in RECIPES:
        raise ConfigError(f"recipe.preset: unknown preset {preset!r}; known presets: {', '.join(RECIPES)}")
    base = RECIPES[preset]
    merged = {f: getattr(base, f) for f in base.__dataclass_fields__} | spec
    return build_config(Recipe, merged, "recipe")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    test_acc_last: float  # clean test accuracy after the last epoch, in [0, 1]
    test_acc_best: float  # best clean test accuracy over epochs
    best_epoch: int
    train_acc: float  # accuracy on the (poisoned, defended) training set without augmentation
    seconds: float  # wall time of the epochs, evaluation and compilation included
    # Steady-state training throughput: the epochs after the first (all of them when there is one),
    # training steps only, so that compilation and warm-up do not hide the loop's speed.
    images_per_second: float
    # The first epoch's training time beyond a steady epoch's: the compile cost with compile=True,
    # the ordinary warm-up without; None with a single epoch (nothing steady to compare with).
    compile_seconds: float | None = None
    history: list[dict] = field(default_factory=list)
    precision: str = "fp32"  # what the forward and backward passes ran in: "bf16" (autocast) or "fp32"


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, g: torch.Generator, fill: int = 0) -> torch.Tensor:
    """Random crop after padding with the uint8 code `fill` (0: zero padding), then random horizontal
    flip, for a whole uint8 batch at once."""
    n, c, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding,) * 4, value=fill)
        dy = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), generator=g, device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), generator=g, device=x.device)
        # Two gathers: each image's own rows, then its own columns, of the padded batch.
        rows = (dy + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(n, c, h, w + 2 * padding)
        cols = (dx + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(n, c, h, w)
        x = padded.gather(2, rows).gather(3, cols)
    if flip:
        mask = torch.rand(n, 1, 1, 1, generator=g, device=x.device) < 0.5
        x = torch.where(mask, x.flip(3), x)
    return x


def lr_at(recipe: Recipe, step: int, total_steps: int) -> float:
    progress = step / max(total_steps, 1)
    if recipe.schedule == "cosine":
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if recipe.schedule == "multistep":
        return recipe.lr * recipe.gamma ** sum(progress >= m for m in recipe.milestones)
    return recipe.lr


def to_float(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 images to float in [0, 1], converted and laid out in one copy."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype=torch.float32, memory_format=layout).div_(255)


def _cpu_has(probe: str) -> bool:
    """A torch.cpu capability probe; private, so absent or failing means "don't know": no."""
    try:
        return bool(getattr(torch.cpu, probe, lambda: False)())
    except Exception:
        return False


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 in AMX tiles (Intel Sapphire Rapids and later)."""
    return _cpu_has("_is_amx_tile_supported")


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has AVX512_BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake and later)."""
    return _cpu_has("_is_avx512_bf16_supported")


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bf16 natively, the hardware the precision rule asks for: AMX tiles or
    AVX512_BF16 dot products. Measured on this project's 2-core CPUs: a tiny_cnn (width 16) training
    step 2.7x faster in bf16 than in fp32 on an AMD EPYC with AVX512_BF16 and no AMX, 2.3x (width 32)
    on a Xeon with AMX (docs/performance.md). Without either, oneDNN emulates bf16 and it is slower
    than fp32, so the rule runs fp32 there."""
    return cpu_has_amx() or cpu_has_avx512_bf16()


def precision_for(wanted_bf16: bool, device: torch.device) -> str:
    """'bf16' where bf16 is wanted and the device computes it natively, else 'fp32'.

    The one rule for every forward and backward pass of the suite: victim training (`Recipe.bf16`),
    the adversary of adversarial training, and the surrogates of the model-based attacks (their
    configs' `bf16`).
    """
    native = device.type == "cuda" or (device.type == "cpu" and cpu_computes_bf16())
    return "bf16" if wanted_bf16 and native else "fp32"


def precision(recipe: Recipe, device: torch.device) -> str:
    """What `recipe` trains in on `device`: see `precision_for`."""
    return precision_for(recipe.bf16, device)


def autocast_to(precision_name: str, device: torch.device):
    """bf16 autocast on `device` when `precision_name` is 'bf16', a no-op context otherwise.

    Without autocast's weight cache: the cache keeps the bf16 copy of each parameter until the
    outermost autocast region exits, so a region that spans optimizer steps (an attack's whole
    `generate`, or a training loop called inside one, as TAP trains its surrogate) would go on
    computing with the weights of its first step. Casting afresh costs one copy of the weights
    per forward pass.
    """
    return torch.autocast(device.type, torch.bfloat16, enabled=precision_name == "bf16", cache_enabled=False)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, recipe: Recipe, device: torch.device | None = None) -> float:
    """Accuracy of `model` on `data` (no augmentation), in [0, 1], computed on `device` (default: where `data` lies)."""
    device = data.device if device is None else torch.device(device)
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)  # one synchronisation at the end, not per batch
    labels = data.labels.to(device)
    for i in range(0, len(data), recipe.eval_batch_size):
        x = to_float(data.images[i : i + recipe.eval_batch_size].to(device, non_blocking=True), recipe.channels_last)
        with autocast_to(precision(recipe, device), device):
            logits = model(x)
        correct += (logits.argmax(1) == labels[i : i + recipe.eval_batch_size]).sum()
    return correct.item() / max(len(data), 1)


EpochCallback = Callable[[dict], None]


class Trainer:
    """The training steps of `train_model`: the model on the device, its optimizer and random state.

    `epoch()` runs one pass over `train` in a fresh random order and synchronises with the device
    once, at its end. `train_model` adds the test after each epoch and the record; `bench.perf`
    times `epoch()` alone. Arguments as for `train_model`.
    """

    def __init__(self, model: nn.Module, train: ImageSet, recipe: Recipe, *, seed: int = 0,
                 augment: Callable | None = None, adversary: Callable | None = None, compile: bool = False,
                 device: torch.device | None = None, crop_fill: int = 0):
        self.device = device = train.device if device is None else torch.device(device)
        self.labels = train.labels.to(device)
        self.train, self.recipe, self.augment, self.adversary = train, recipe, augment, adversary
        self.crop_fill = crop_fill
        layout = torch.channels_last if recipe.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=layout)
        self.forward = compiled(model, device) if compile else model
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay, **({"fused": True} if device.type == "cuda" else {}),
        )
        self.precision = precision(recipe, device)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.total_steps = recipe.epochs * math.ceil(len(train) / recipe.batch_size)
        self.step = 0

    def epoch(self) -> tuple[float, float, float]:
        """One epoch: (mean training loss, running training accuracy, seconds of the epoch's steps)."""
        model, train, recipe, g, device = self.model, self.train, self.recipe, self.generator, self.device
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(train), generator=g, device=device)
        rows = order.to(train.device)  # where the images lie: `order` itself when they are on the device
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for i in range(0, len(train), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            batch = train.images[rows[i : i + recipe.batch_size]].to(device, non_blocking=True)
            x = to_float(random_crop_flip(batch, recipe.crop_padding, recipe.flip, g, self.crop_fill), recipe.channels_last)
            y = self.labels[idx]
            if self.augment is not None:
                x, y = self.augment(x, y)
            with autocast_to(self.precision, device):  # the adversary's attack steps run in the training step's precision
                if self.adversary is not None:
                    x = self.adversary(model, x, y)
                logits = self.forward(x)
                loss = F.cross_entropy(logits, y)
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(recipe, self.step, self.total_steps)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            self.optimizer.step()
            self.step += 1
            loss_sum += loss.detach() * len(idx)
            hard = y.argmax(1) if y.ndim == 2 else y
            correct += (logits.argmax(1) == hard).sum()
        # The epoch's one synchronisation: .tolist() waits for the device, so the clock below is true.
        totals = torch.stack([loss_sum, correct]).tolist()
        seconds = time.perf_counter() - start
        return totals[0] / len(train), totals[1] / len(train), seconds


def train_model(
    model: nn.Module,
    train: ImageSet,
    test: ImageSet,
    recipe: Recipe,
    *,
    seed: int = 0,
    augment: Callable | None = None,
    adversary: Callable | None = None,
    on_epoch: EpochCallback | None = None,
    compile: bool = False,
    device: torch.device | None = None,
    val: ImageSet | None = None,
    crop_fill: int = 0,
) -> TrainResult:
    """Train `model` on `train` with `recipe`, testing on `test` after every epoch (and validating
    on `val`, where given: the history's `val_acc`).

    `augment(x, y) -> (x, y)` runs per batch after crop and flip (float images in [0, 1]; soft
    labels allowed); `adversary(model, x, y) -> x` replaces the batch by an adversarial one.
    `compile=True` runs the training forward and backward through `torch.compile` (evaluation and
    the adversary stay eager, so that no eval-mode graph is compiled); where it cannot compile on
    this machine it warns and trains without it. Off by default: on this project's CPU it does not
    pay for tiny_cnn (docs/performance.md), and on CUDA it is not measured yet. `device` is where
    the model trains (default: where `train` lies); images lying elsewhere move there in batches.
    `crop_fill` is the uint8 code the random crop pads with (`Defense.crop_fill`).
    """
    trainer = Trainer(model, train, recipe, seed=seed, augment=augment, adversary=adversary, compile=compile,
                      device=device, crop_fill=crop_fill)
    device = trainer.device
    history: list[dict] = []
    best, best_epoch = -1.0, 0
    start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        epoch_start = time.perf_counter()
        epoch_loss, running_acc, train_seconds = trainer.epoch()
        if not math.isfinite(epoch_loss):
            raise TrainingDiverged(f"training loss became {epoch_loss} in epoch {epoch}")
        test_acc = evaluate(model, test, recipe, device)
        if test_acc > best:
            best, best_epoch = test_acc, epoch
        record = {
            "epoch": epoch, "loss": epoch_loss, "train_acc_running": running_acc,
            "test_acc": test_acc, **({"val_acc": evaluate(model, val, recipe, device)} if val is not None else {}),
            "lr": lr_at(recipe, trainer.step - 1, trainer.total_steps),
            "train_seconds": train_seconds, "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    seconds = time.perf_counter() - start
    first, *steady = [h["train_seconds"] for h in history]
    return TrainResult(
        test_acc_last=history[-1]["test_acc"], test_acc_best=best, best_epoch=best_epoch,
        train_acc=evaluate(model, train, recipe, device), seconds=seconds,
        images_per_second=len(train) * len(steady or [first]) / sum(steady or [first]),
        compile_seconds=max(first - statistics.median(steady), 0.0) if steady else None, history=history,
        precision=trainer.precision,
    )


@functools.cache
def compile_failure(device_type: str) -> str | None:
    """Why `torch.compile` cannot build code for this device type here (no C++ compiler, no Triton ...), or None."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(8, device=device_type))
    except Exception as err:  # inductor raises many kinds; any of them means no compiled training here
        lines = str(err).strip().splitlines()
        return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return None


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """`torch.compile(model)`, or `model` itself with a warning where compilation fails on this machine.

    Static shapes: the full batches and the epoch's last, shorter batch each get a graph of their
    own, both built in the first epoch. With dynamo's default (`dynamic=None`) the second shape
    would build a batch-size-generic graph that then serves every full batch too, for the rest of
    training, and the specialised one built first would go unused.
    """
    failure = compile_failure(device.type)
    if failure is not None:
        warnings.warn(f"torch.compile does not work on this {device.type} machine ({failure}); training without it",
                      RuntimeWarning, stacklevel=4)
        return model
    return torch.compile(model, dynamic=False)

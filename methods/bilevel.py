"""Shared machinery of the model-based attacks (EM, REM, TAP, MI-UE).

- `DeltaStore`: the perturbation of the whole training set as int8 on the device, in units of
  eps/127 (1/16 of a pixel level at 8/255), so 0.2/255 steps survive storage and 50,000 CIFAR
  images take 150 MB.
- `signed_steps`: batched projected signed-gradient steps, descent or ascent, on any loss.
- `Checkpoint`: round-by-round state, written atomically, loaded without pickle, so a long
  generation that is interrupted resumes from its last completed round.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from bench.registry import ARCHS
from bench.store import atomic_write_bytes

log = logging.getLogger("bench")

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def make_surrogate(config, num_classes: int, device: torch.device, seed: int) -> nn.Module:
    """A fresh surrogate from an attack config's `surrogate` arch (and `surrogate_width`, its `width` argument: tiny_cnn, resnet*, vgg*).

    Its weights are channels_last, so its convolutions run channels_last whatever the input's layout
    (1.2-1.4x per step on this project's CPU, and the layout tensor cores want on CUDA).
    """
    torch.manual_seed(seed)
    kwargs = {"width": config.surrogate_width} if config.surrogate_width else {}
    model = ARCHS.create(config.surrogate, kwargs, num_classes=num_classes)
    return model.to(device, memory_format=torch.channels_last)


class DeltaStore:
    """Per-image L-inf perturbations as int8 in units of eps/127."""

    def __init__(self, shape: tuple[int, ...], eps: float, device: torch.device):
        self.eps = eps
        self.scale = eps / 127
        self.q = torch.zeros(shape, dtype=torch.int8, device=device)

    def __getitem__(self, idx) -> torch.Tensor:
        return self.q[idx].float() * self.scale

    def __setitem__(self, idx, delta: torch.Tensor) -> None:
        self.q[idx] = (delta / self.scale).round().clamp(-127, 127).to(torch.int8)

    def uniform_(self, g: torch.Generator) -> "DeltaStore":
        """Uniform in [-eps, eps], the usual random start."""
        self.q = torch.randint(-127, 128, self.q.shape, generator=g, device=self.q.device, dtype=torch.int8)
        return self

    def all(self) -> torch.Tensor:
        return self[slice(None)]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255


def signed_steps(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
    steps: int, step_size: float, eps: float, *, descent: bool = True,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """`steps` projected signed-gradient steps on `delta` (L-inf `eps`, x + delta kept in [0, 1]).

    Descent minimises `loss_fn` (error-minimising noise); ascent maximises it (adversarial
    examples). `transform` is applied to x + delta before the model (differentiable augmentation).
    """
    sign = -1.0 if descent else 1.0
    delta = delta.detach().clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        inputs = (x + delta).clamp(0, 1)
        loss = loss_fn(model, transform(inputs) if transform else inputs, y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + sign * step_size * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    return delta.detach()


@torch.no_grad()
def poisoned_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      deltas: DeltaStore | Callable, batch_size: int = 1024) -> float:
    """Accuracy of `model` (eval mode) on images + delta: the stop rule of EM."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)  # one synchronisation, at the end
    for i in range(0, len(images), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(images)), device=images.device)
        x = (to_unit(images[idx]) + deltas[idx]).clamp(0, 1)
        correct += (model(x).argmax(1) == labels[idx]).sum()
    return correct.item() / max(len(images), 1)


def batches(n: int, batch_size: int, device: torch.device, g: torch.Generator | None = None):
    """Index tensors covering range(n) in batches, shuffled when a generator is given."""
    order = torch.randperm(n, generator=g, device=device) if g is not None else torch.arange(n, device=device)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


class Checkpoint:
    """Round-by-round generation state in `work_dir/state.pt`, atomically written.

    The file is the SHA-256 of the state (64 hex digits and a newline) followed by the state, in one
    atomic write, so a crash can never leave a state and a hash that disagree. The state holds
    tensors, numbers and state dicts only and is read with `torch.load(weights_only=True)`, which
    refuses anything that would need pickle to run code. A state that fails either check is
    reported and generation starts over, as does a state whose `stamp` (`RunContext.stamp`: the data's
    fingerprint, the attack's config and seed) is not this run's: a dataset replaced at the same path
    is never resumed on.

    `save` writes at most once every `every_s` seconds (0: every call); a kill loses at most that
    much work, and frequent cheap rounds do not pay for a write each.
    """

    def __init__(self, work_dir: Path | None, every_s: float = 0.0, stamp: str = ""):
        self.path = Path(work_dir) / "state.pt" if work_dir is not None else None
        self.every_s = every_s
        self.stamp = stamp
        self._last_write = -math.inf

    def load(self, device: torch.device, keys: Iterable[str] = ()) -> dict | None:
        """The stored state, or None (with a warning) where there is none, it fails its hash or the
        weights-only load, or it lacks one of `keys` (a state written by another version of the attack)."""
        if self.path is None or not self.path.exists():
            return None
        try:
            stored = self.path.read_bytes()
            expected, separator, payload = stored[:64].decode("ascii", "replace"), stored[64:65], stored[65:]
            if separator != b"\n" or hashlib.sha256(payload).hexdigest() != expected:
                raise ValueError("it does not match its SHA-256 (altered or truncated)")
            state = torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
            missing = sorted(set(keys) - set(state))
            if missing:
                raise ValueError(f"it lacks {', '.join(missing)} (written by another version)")
            if state.pop("stamp", "") != self.stamp:
                raise ValueError("it was made from other data or settings (its stamp is not this run's)")
            return state
        except Exception as err:  # altered, truncated, not weights-only, or another layout: start over
            log.warning("checkpoint %s is not usable (%s); generating from the start", self.path, err)
            return None

    def due(self) -> bool:
        """Whether `save` would write now: for callers whose state costs something to build."""
        return self.path is not None and time.monotonic() - self._last_write >= self.every_s

    def save(self, state: dict) -> None:
        if not self.due():
            return
        self._last_write = time.monotonic()
        buffer = io.BytesIO()
        torch.save({**state, "stamp": self.stamp}, buffer)
        payload = buffer.getvalue()
        atomic_write_bytes(self.path, hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, g: torch.Generator, **progress) -> dict:
    """What a round leaves behind for `Checkpoint.save`: model, optimizer, random state, progress."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": g.get_state(), **progress}


SNAPSHOT_KEYS = ("model", "optimizer", "rng")  # what `snapshot` writes besides an attack's progress


def restore(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, g: torch.Generator) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    g.set_state(state["rng"].to(g.get_state().device))


class frozen:
    """Eval mode and no parameter gradients while the noise moves; training mode again after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.train()


def cosine_lr(base: float, final: float, step: int, total: int) -> float:
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))

"""A surrogate trained on the clean data, cached and hash-checked: TAP's, HYPO's and SEP's model.

`clean_surrogate` trains a model once per (data, arch, width, recipe, seed) and keeps it under
`ctx.cache_dir / "models" / <key>.pt` with a `.json` beside it holding its SHA-256, so every
attack with the same settings reads the same model (a grid with `tap` and `hypo` trains it once).
`keep_epochs` also keeps the weights after those epochs of the same run (`<key>-epoch<n>.pt`),
the checkpoints SEP ensembles; asking for them never changes the key, so a run cached without
them is trained again only where one is missing.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from dataclasses import dataclass

import torch
from torch import nn

from bench.config import require
from bench.context import RunContext
from bench.data import ImageSet
from bench.store import atomic_write_bytes, canonical_hash
from bench.train import Recipe, train_model
from methods.base import SurrogateConfig
from methods.bilevel import make_surrogate


@dataclass(frozen=True)
class CleanSurrogateConfig(SurrogateConfig):
    """The clean training of the surrogate an attack on a fixed model uses (TAP, HYPO, SEP); each
    attack's recipe (`Attack.clean_recipe`) reads these three fields, and its config may set other defaults."""

    surrogate_epochs: int = 40  # clean training epochs (TAP's official 40)
    surrogate_lr: float = 0.1  # the clean surrogate's SGD learning rate
    surrogate_batch_size: int = 128  # images per step of the clean surrogate's training
    # fp32 by default, as every official code: a bf16 surrogate made TAP weaker by more than the seed
    # spread (35.9 ± 0.8% against 34.8 ± 0.6% clean test accuracy, 3 seeds; docs/attacks.md).
    bf16: bool = False

    def __post_init__(self):
        super().__post_init__()
        for field in ("surrogate_epochs", "surrogate_batch_size"):
            require(getattr(self, field) >= 1, field, f"must be at least 1, got {getattr(self, field)}")
        require(self.surrogate_lr > 0, "surrogate_lr", f"must be positive, got {self.surrogate_lr}")


def model_key(data: ImageSet, config, recipe: Recipe, seed: int) -> str:
    """The cache key of a clean run; TAP's since it first cached one (its pinned models keep it)."""
    data_hash = hashlib.sha256(data.images.cpu().numpy().tobytes() + data.labels.cpu().numpy().tobytes()).hexdigest()
    return canonical_hash({"data": data_hash, "arch": config.surrogate, "width": config.surrogate_width,
                           "recipe": recipe.__dict__, "seed": seed})


def _read(path: Path, device: torch.device) -> dict | None:
    """The state dict at `path` if it and its `.json` exist and its SHA-256 matches, else None."""
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        return None
    payload = path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != json.loads(meta.read_text())["sha256"]:
        return None
    return torch.load(io.BytesIO(payload), map_location=device, weights_only=True)


def _write(path: Path, state: dict, **info) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(
        {"sha256": hashlib.sha256(buffer.getvalue()).hexdigest(), **info}).encode())


def clean_surrogate(config, data: ImageSet, ctx: RunContext, recipe: Recipe, who: str,
                    keep_epochs: tuple[int, ...] = ()) -> tuple[nn.Module, dict[int, dict]]:
    """The surrogate of `config` (`surrogate`, `surrogate_width`) trained on clean `data` by `recipe`,
    in eval mode, and its weights after each epoch of `keep_epochs` (epoch -> state dict).

    Read from the cache where every file needed passes its hash check; trained (and cached, where
    `ctx.cache_dir` is set) otherwise. `who` names the attack in the log lines.
    """
    model = make_surrogate(config, data.num_classes, data.device, ctx.seed)
    key = model_key(data, config, recipe, ctx.seed)
    folder = ctx.cache_dir / "models" if ctx.cache_dir else None
    paths = {epoch: folder / (f"{key}.pt" if epoch == recipe.epochs else f"{key}-epoch{epoch}.pt")
             for epoch in {*keep_epochs, recipe.epochs}} if folder else {}
    if paths:
        states = {epoch: _read(path, data.device) for epoch, path in paths.items()}
        if all(state is not None for state in states.values()):
            model.load_state_dict(states[recipe.epochs])
            ctx.log(f"{who}: clean surrogate {key} from the cache")
            return model.eval(), {epoch: states[epoch] for epoch in keep_epochs}
        if any(path.exists() for path in paths.values()):
            ctx.log(f"{who}: cached surrogate {key} is incomplete or does not match its hash; training it again")
    ctx.log(f"{who}: training the clean surrogate ({config.surrogate}, {recipe.epochs} epochs)")
    kept: dict[int, dict] = {}

    def keep(record: dict) -> None:
        if record["epoch"] in keep_epochs:
            kept[record["epoch"]] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    result = train_model(model, data, data, recipe, seed=ctx.seed, on_epoch=keep)
    ctx.log(f"{who}: clean surrogate reaches {result.train_acc:.2%} on its training data")
    for epoch, path in paths.items():
        state = model.state_dict() if epoch == recipe.epochs else kept[epoch]
        _write(path, state, **({"train_acc": result.train_acc} if epoch == recipe.epochs else {"epoch": epoch}))
    return model.eval(), kept

"""Evaluate a poison made elsewhere, as researchers share them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from bench.config import ConfigError, require
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from methods.base import NORMS, Attack, BudgetError, Poison, check_budget


@dataclass(frozen=True)
class ExternalConfig:
    path: str = ""  # an .npz with x_train (uint8 NHWC, dataset order) or a folder of <index>.png
    norm: Literal["linf", "l2", "l0"] = "linf"  # the norm the poison's authors claim
    eps: float = 8 / 255  # the claimed budget: [0, 1] pixel units for linf/l2, pixels for l0

    def __post_init__(self):
        require(bool(self.path), "path", "set the poison's path (an .npz with x_train, or a folder of 0.png ... N-1.png)")
        require(self.norm in NORMS, "norm", f"must be one of {', '.join(NORMS)}")
        require(math.isfinite(self.eps) and self.eps >= 0, "eps", f"must be a finite number >= 0, got {self.eps}")


@register_attack("external")
class External(Attack):
    """Poisoned training images from a file: an .npz (`x_train`) or a folder of PNGs by index.

    The folder layout is that of the official TAP release (`0.png` ... `49999.png`). The count,
    image shape and order are checked against the clean training set, and the claimed budget on
    every image of the file (the runner checks the subset a grid uses, as for any attack), so a
    mis-sized, shuffled or partly over-budget file is refused. Not cacheable: the file is read and
    checked again by every run, so a file replaced at the same path is never served from the cache.
    """

    Config = ExternalConfig
    paper = ""
    cacheable = False

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        path = Path(self.config.path).expanduser()
        full = load_external(path, data.split_size)
        expected = tuple(data.images.shape[1:])
        got = (full.shape[3], full.shape[1], full.shape[2])
        if got != expected:
            raise ConfigError(f"external poison {path}: images are {got[1]}x{got[2]}x{got[0]}, the dataset's are {expected[1]}x{expected[2]}x{expected[0]}")
        images = torch.from_numpy(np.ascontiguousarray(full[data.index.cpu().numpy()].transpose(0, 3, 1, 2))).to(data.device)
        check_order(data.images, images, path)
        if ctx.full_train is not None and len(data) < len(full):
            # The grid poisons a subset; the file is one poison, so its other images must keep the claim too.
            clean = ctx.full_train().images.cpu()
            whole = Poison(torch.from_numpy(np.ascontiguousarray(full.transpose(0, 3, 1, 2))), self.config.norm, self.config.eps)
            try:
                check_budget(clean, whole)
            except BudgetError as err:
                raise BudgetError(f"external poison {path}, all {len(full)} images: {err}") from None
        return Poison(images, self.config.norm, self.config.eps)


def load_external(path: Path, expected_count: int) -> np.ndarray:
    if path.suffix == ".npz":
        if not path.is_file():
            raise ConfigError(f"attack external.path: {path} does not exist")
        with np.load(path, allow_pickle=False) as f:
            if "x_train" not in f:
                raise ConfigError(f"external poison {path}: no x_train array (found {', '.join(f.files)})")
            x = f["x_train"]
    elif path.is_dir():
        x = _read_png_folder(path, expected_count)
    else:
        raise ConfigError(f"attack external.path: {path} is neither an .npz file nor a folder of PNGs")
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ConfigError(f"external poison {path}: x_train must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
    if len(x) != expected_count:
        raise ConfigError(f"external poison {path}: {len(x)} images, but the clean training set has {expected_count}")
    return x


def _read_png_folder(folder: Path, expected_count: int) -> np.ndarray:
    from PIL import Image

    names = {p.name for p in folder.glob("*.png")}
    missing = [f"{i}.png" for i in range(expected_count) if f"{i}.png" not in names]
    if missing or len(names) != expected_count:
        raise ConfigError(
            f"external poison {folder}: expected {expected_count} files 0.png ... {expected_count - 1}.png, "
            f"found {len(names)}" + (f"; missing {missing[0]} and {len(missing) - 1} more" if missing else "")
        )
    return np.stack([np.asarray(Image.open(folder / f"{i}.png").convert("RGB")) for i in range(expected_count)])


def check_order(clean: torch.Tensor, poisoned: torch.Tensor, path: Path) -> None:
    """A poison in the dataset's order sits much closer to its own clean image than to another's."""
    n = min(len(clean), 512)
    if n < 2:
        return
    c, p = clean[:n].float(), poisoned[:n].float()
    matched = (p - c).abs().mean().item()
    shifted = (p - c.roll(1, dims=0)).abs().mean().item()
    if matched > 0.5 * shifted:
        raise ConfigError(
            f"external poison {path}: images do not follow the dataset's order (mean |poison - clean| is "
            f"{matched:.1f}/255 against {shifted:.1f}/255 for mismatched pairs)"
        )

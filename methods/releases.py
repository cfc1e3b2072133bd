"""Readers for the files methods' authors publish their poisons in, for `bench poison convert`.

- `png-folder`: one PNG per training image named by its index, `0.png` ... `49999.png`, at the top
  or inside `data/`: the TAP release (lhfowl/adversarial_poisons) and the AR release
  (psandovalsegura/autoregressive-poisoning, `poison_datasets.AdversarialPoison`).
- `npz`: `x_train`, uint8 (N, H, W, C) in the dataset's order.
- `em-pt`: EM's `perturbation.pt` (HanxunH/Unlearnable-Examples), a float tensor of noise in [0, 1]
  pixel units, (N, C, H, W) sample-wise or (classes, C, H, W) class-wise. It is loaded with
  `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
  `em_noise = "official"` makes the images EM's own loader trains on (`dataset.PoisonCIFAR10`:
  `noise.mul(255).clamp_(0, 255)`, added to the uint8 image, clipped to [0, 255] and truncated to
  uint8), which keeps only the positive half of the noise; `"full"` keeps both signs
  (`clamp_(-255, 255)`, as AR's `UnlearnablePoison` loader does).

Files that are pickles of arbitrary objects (`.pkl`, `.pickle`, or a `.pt` that holds more than
tensors) are refused: unpickling one runs whatever code it names.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from bench.config import ConfigError
from bench.data import ImageSet
from methods.external import load_external

RELEASE_FORMATS = ("png-folder", "npz", "em-pt")
EM_NOISE = ("official", "full")
PICKLE_SUFFIXES = (".pkl", ".pickle")


def release_format(path: Path) -> str:
    """The format a path's name and kind imply (`auto`); pickles are refused here."""
    if path.suffix in PICKLE_SUFFIXES:
        raise ConfigError(f"{path}: a pickle is refused (unpickling runs whatever code it names); "
                          "ask for the images as PNGs, an .npz of uint8 arrays or a tensor-only .pt")
    if path.is_dir():
        return "png-folder"
    if path.suffix == ".npz":
        return "npz"
    if path.suffix in (".pt", ".pth"):
        return "em-pt"
    raise ConfigError(f"{path}: cannot tell its format from its name; say --format ({', '.join(RELEASE_FORMATS)})")


def read_release(path: Path, fmt: str, clean: ImageSet, em_noise: str = "official") -> np.ndarray:
    """The poisoned training split (uint8 (N, H, W, C), the dataset's order) a release file holds."""
    if fmt == "auto":
        fmt = release_format(path)
    elif path.suffix in PICKLE_SUFFIXES:
        release_format(path)  # refuses it
    if fmt not in RELEASE_FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}; known formats: auto, {', '.join(RELEASE_FORMATS)}")
    if fmt == "em-pt":
        return _em_images(path, clean, em_noise)
    if fmt == "npz" and path.suffix != ".npz":
        raise ConfigError(f"{path}: the npz format needs an .npz file")
    if fmt == "png-folder" and not path.is_dir():
        raise ConfigError(f"{path}: the png-folder format needs a folder")
    return load_external(path, clean.split_size)


def load_tensor(path: Path) -> torch.Tensor:
    """The one tensor a `.pt` file holds (alone or as the only value of a dict); pickles of other objects refused."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only raises for anything but tensors and containers
        raise ConfigError(f"{path}: refused, not a tensor-only file: loading it would unpickle arbitrary objects "
                          f"({_first_line(err)})") from None
    except (RuntimeError, OSError, EOFError) as err:
        raise ConfigError(f"{path}: unreadable as a torch file, truncated or of another kind ({_first_line(err)})") from None
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1 or len(obj) != 1:
            raise ConfigError(f"{path}: a dict of {', '.join(map(str, obj)) or 'nothing'}; expected one noise tensor")
        obj = tensors[0]
    if not isinstance(obj, torch.Tensor):
        raise ConfigError(f"{path}: holds a {type(obj).__name__}, not a noise tensor")
    return obj


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _em_images(path: Path, clean: ImageSet, em_noise: str) -> np.ndarray:
    if em_noise not in EM_NOISE:
        raise ConfigError(f"--em-noise: must be one of {', '.join(EM_NOISE)}, got {em_noise!r}")
    noise = load_tensor(path)
    shape = tuple(clean.images.shape[1:])
    if noise.ndim != 4 or tuple(noise.shape[1:]) != shape or not noise.is_floating_point():
        raise ConfigError(f"{path}: EM noise must be float (N, C, H, W) with (C, H, W) = {shape}, "
                          f"got {noise.dtype} {tuple(noise.shape)}")
    labels = clean.labels.cpu()
    if len(noise) == clean.split_size:
        per_image = noise[clean.index.cpu()]
    elif len(noise) == clean.num_classes:
        per_image = noise[labels]  # class-wise: one noise per class
    else:
        raise ConfigError(f"{path}: {len(noise)} noises; expected {clean.split_size} (sample-wise) or "
                          f"{clean.num_classes} (class-wise)")
    if not torch.isfinite(per_image).all():
        raise ConfigError(f"{path}: the noise holds NaN or infinite values")
    low = 0.0 if em_noise == "official" else -255.0
    steps = per_image.float().mul(255).clamp(low, 255).permute(0, 2, 3, 1).numpy()
    images = clean.images.cpu().permute(0, 2, 3, 1).numpy().astype(np.float32) + steps
    return np.clip(images, 0, 255).astype(np.uint8)  # truncation, as the official loader's astype does

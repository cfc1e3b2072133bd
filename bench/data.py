"""Datasets as uint8 tensors, and class-balanced seeded subsets.

Every split is held as one uint8 tensor (N, C, H, W) on the training device; augmentation and
attacks work on it in batches. CIFAR-10 comes through torchvision where the machine can download
it, or from any `.npz` holding `x_train, y_train, x_test, y_test` (uint8 NHWC images), named by
path or by the environment variable `BENCH_CIFAR10`.
"""
from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench.config import ConfigError, require

DATA_ROOT_ENV = "BENCH_DATA_ROOT"
NPZ_ENV = {"cifar10": "BENCH_CIFAR10"}
TORCHVISION_SETS = ("cifar10",)
DOWNLOAD_TIMEOUT_S = 30  # a blocked network must fail, not hang


class DataUnavailable(RuntimeError):
    """The dataset is neither on disk nor downloadable; the message says how to provide it."""


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of one split, in the order of the full split they were taken from."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    index: torch.Tensor  # int64 (N,): position of each image in the full split
    num_classes: int
    split_size: int  # number of images in the full split the subset was drawn from

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "ImageSet":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device), index=self.index.to(device))

    def with_images(self, images: torch.Tensor) -> "ImageSet":
        if images.shape != self.images.shape or images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images of shape {tuple(self.images.shape)}, got {images.dtype} {tuple(images.shape)}")
        return replace(self, images=images)


@dataclass(frozen=True)
class DataSpec:
    """Which data a cell trains and tests on."""

    name: str = "cifar10"  # a registered dataset name or a path to an .npz
    train_size: int | None = None  # class-balanced subset of the training split; None = all
    test_size: int | None = None  # class-balanced subset of the test split; None = all
    subset_seed: int = 0  # the subset is fixed across cells, whatever the cell's seed

    def __post_init__(self):
        for field in ("train_size", "test_size"):
            value = getattr(self, field)
            require(value is None or value >= 1, f"data.{field}", f"must be at least 1, got {value}")


@dataclass(frozen=True)
class Dataset:
    name: str
    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]


def load_dataset(spec: DataSpec, device: torch.device | str = "cpu") -> Dataset:
    x_train, y_train, x_test, y_test, classes = _load_arrays(spec.name)
    num_classes = len(classes)
    train = _to_imageset(x_train, y_train, num_classes, spec.train_size, spec.subset_seed, "train")
    test = _to_imageset(x_test, y_test, num_classes, spec.test_size, spec.subset_seed, "test")
    return Dataset(spec.name, train.to(device), test.to(device), classes)


def balanced_subset(labels: np.ndarray, size: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` examples, as equal per class as `size` allows, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    per_class = np.full(num_classes, size // num_classes)
    per_class[rng.permutation(num_classes)[: size % num_classes]] += 1
    chosen = []
    for c, k in enumerate(per_class):
        members = np.flatnonzero(labels == c)
        if k > len(members):
            raise ConfigError(f"data: asked for {k} images of class {c}, but the split has only {len(members)}")
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def _to_imageset(x: np.ndarray, y: np.ndarray, num_classes: int, size: int | None, seed: int, split: str) -> ImageSet:
    if size is not None and size > len(y):
        raise ConfigError(f"data.{split}_size: {size} is larger than the {split} split ({len(y)} images)")
    index = np.arange(len(y)) if size is None or size == len(y) else balanced_subset(y, size, num_classes, seed)
    images = torch.from_numpy(np.ascontiguousarray(x[index].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(y[index].astype(np.int64))
    return ImageSet(images, labels, torch.from_numpy(index), num_classes, len(y))


@functools.lru_cache(maxsize=2)
def _load_arrays(name: str):
    if name.endswith(".npz"):
        return load_npz(Path(name))
    if name not in TORCHVISION_SETS:
        raise ConfigError(f"data.name: unknown dataset {name!r}; use one of {', '.join(TORCHVISION_SETS)} or a path to an .npz")
    env = NPZ_ENV.get(name)
    if env and os.environ.get(env):
        return load_npz(Path(os.environ[env]))
    return _load_torchvision(name)


def load_npz(path: Path):
    """x_train, y_train, x_test, y_test (and optional `classes`) from an .npz, checked."""
    if not path.is_file():
        raise DataUnavailable(f"dataset file {path} does not exist")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
        if missing:
            raise ConfigError(f"{path}: missing arrays {missing}; an .npz dataset needs x_train, y_train, x_test, y_test")
        arrays = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
        classes = tuple(str(c) for c in f["classes"]) if "classes" in f else None
    for key, x in (("x_train", arrays[0]), ("x_test", arrays[2])):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ConfigError(f"{path}: {key} must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
    num_classes = int(max(arrays[1].max(), arrays[3].max())) + 1
    return arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64), classes or tuple(map(str, range(num_classes)))


def data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV, Path.home() / ".cache" / "unlearnable-bench" / "data"))


def _load_torchvision(name: str):
    from torchvision.datasets import CIFAR10

    root = data_root()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        train = CIFAR10(root, train=True, download=True)
        test = CIFAR10(root, train=False, download=True)
    except Exception as err:
        raise DataUnavailable(
            f"CIFAR-10 is not in {root} and could not be downloaded ({type(err).__name__}: {err}).\n"
            f"Either put the torchvision copy (cifar-10-batches-py/) under {root} or set {DATA_ROOT_ENV} to its parent,\n"
            f"or set {NPZ_ENV[name]}=/path/to/cifar10.npz (uint8 x_train, y_train, x_test, y_test)."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return (train.data, np.asarray(train.targets), test.data, np.asarray(test.targets), tuple(train.classes))

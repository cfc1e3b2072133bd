"""Datasets as uint8 tensors, and class-balanced seeded subsets.

Every split is held as one uint8 tensor (N, C, H, W) on the training device; augmentation and
attacks work on it in batches. CIFAR-10 comes through torchvision where the machine can download
it, or from any `.npz` holding `x_train, y_train, x_test, y_test` (uint8 NHWC images), named by
path or by the environment variable `BENCH_CIFAR10`.
"""
from __future__ import annotations

import functools
import hashlib
import os
import socket
import zipfile
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

    def take(self, rows: torch.Tensor | slice) -> "ImageSet":
        """The images at `rows` of this set, their labels and positions with them."""
        return replace(self, images=self.images[rows], labels=self.labels[rows], index=self.index[rows])

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
    # What the data holds, not what it is called: records and poisons carry it, so a store never
    # counts another file's cells as done or serves another file's poisons under the same name.
    fingerprint: str = ""


def load_dataset(spec: DataSpec, device: torch.device | str = "cpu") -> Dataset:
    x_train, y_train, x_test, y_test, classes = _load_arrays(spec.name)
    num_classes = len(classes)
    train = _to_imageset(x_train, y_train, num_classes, spec.train_size, spec.subset_seed, "train")
    test = _to_imageset(x_test, y_test, num_classes, spec.test_size, spec.subset_seed, "test")
    return Dataset(spec.name, train.to(device), test.to(device), classes, fingerprint(train, test))


def fingerprint(*splits: ImageSet) -> str:
    """SHA-256 (16 hex digits) of the images and labels of `splits` as used (a dataset's: train and
    test; a poison bundle's clean images: the one split it perturbs): about 0.3 s for all of CIFAR-10."""
    digest = hashlib.sha256()
    for split in splits:
        for tensor in (split.images, split.labels):
            array = np.ascontiguousarray(tensor.cpu().numpy())
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


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


def poisoned_subset(labels: np.ndarray, ratio: float, classes: tuple[int, ...], seed: int) -> np.ndarray:
    """Sorted positions of the training images a partial poisoning perturbs: `ratio` of the images of
    `classes` (of every class where empty), stratified by class and drawn with `seed`.

    The total is floor(ratio x the images eligible), as EM's code takes int(len x poison_rate); each
    class gives its share of it, the rounding left over going to the classes with the largest
    remainders (the lower class first on a tie). EM's code draws uniformly over the whole set
    instead; stratified, a class's share of the poison does not vary with the draw.
    """
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    for c in classes:
        require(0 <= c < num_classes and (labels == c).any(), "poison_classes",
                f"class {c} has no training images; allowed: 0 to {num_classes - 1}")
    eligible = np.array(sorted(classes) if classes else np.unique(labels))
    members = [np.flatnonzero(labels == c) for c in eligible]
    exact = ratio * np.array([len(m) for m in members], dtype=np.float64)
    total = int(np.floor(ratio * sum(len(m) for m in members) + 1e-9))  # 1e-9: 0.29 x 100 is 28.999...
    per_class = np.floor(exact + 1e-9).astype(np.int64)
    leftover = total - int(per_class.sum())
    per_class[np.argsort(-(exact - per_class), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    chosen = [m[rng.permutation(len(m))[:k]] for m, k in zip(members, per_class)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _to_imageset(x: np.ndarray, y: np.ndarray, num_classes: int, size: int | None, seed: int, split: str) -> ImageSet:
    if size is not None and size > len(y):
        raise ConfigError(f"data.{split}_size: {size} is larger than the {split} split ({len(y)} images)")
    index = np.arange(len(y)) if size is None or size == len(y) else balanced_subset(y, size, num_classes, seed)
    images = torch.from_numpy(np.ascontiguousarray(x[index].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(y[index].astype(np.int64))
    return ImageSet(images, labels, torch.from_numpy(index), num_classes, len(y))


def _load_arrays(name: str):
    if name.endswith(".npz"):
        return _load_npz_cached(*_file_state(Path(name)))
    if name not in TORCHVISION_SETS:
        raise ConfigError(f"data.name: unknown dataset {name!r}; use one of {', '.join(TORCHVISION_SETS)} or a path to an .npz")
    env = NPZ_ENV.get(name)
    if env and os.environ.get(env):
        return _load_npz_cached(*_file_state(Path(os.environ[env])))
    return _load_torchvision_cached(name)


def _file_state(path: Path) -> tuple[str, int, int]:
    """(path, modification time, size): the cache key of a file's arrays, so a file replaced at the
    same path is read again by a process that had read the old one."""
    try:
        stat = path.stat()
        return str(path), stat.st_mtime_ns, stat.st_size
    except OSError:
        return str(path), 0, -1  # load_npz names the problem


@functools.lru_cache(maxsize=2)
def _load_npz_cached(path: str, mtime_ns: int, size: int):
    return load_npz(Path(path))


@functools.lru_cache(maxsize=2)
def _load_torchvision_cached(name: str):
    return _load_torchvision(name)


def clear_cache() -> None:
    """Forget the arrays read so far (tests that change the environment between loads)."""
    _load_npz_cached.cache_clear()
    _load_torchvision_cached.cache_clear()


MIN_IMAGE_SIZE = 8  # the smallest side every registered architecture and the padded random crop take


def load_npz(path: Path):
    """x_train, y_train, x_test, y_test (and optional `classes`) from an .npz, checked (`check_arrays`)."""
    if path.is_dir():
        raise ConfigError(f"dataset {path}: is a folder, not an .npz file")
    if not path.is_file():
        raise DataUnavailable(f"dataset file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
            if missing:
                raise ConfigError(f"dataset {path}: missing arrays {missing}; an .npz dataset needs x_train, y_train, "
                                  "x_test, y_test")
            arrays = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
            classes = tuple(str(c) for c in f["classes"]) if "classes" in f else None
    except ConfigError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # not a zip, truncated, an array that would need pickle
        raise ConfigError(f"dataset {path}: not a readable .npz ({err})") from None
    return check_arrays(*arrays, classes, f"dataset {path}")


def check_arrays(x_train, y_train, x_test, y_test, classes: tuple[str, ...] | None, where: str):
    """The arrays of a dataset, checked once on load so that no cell starts on data it cannot use:
    uint8 (N, H, W, C) images with 1 or 3 channels and sides of at least MIN_IMAGE_SIZE, whole-number
    labels from 0 to the class count - 1, one label per image, no empty split. Labels come back int64."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ConfigError(f"{where}: x_{split} must be uint8 (N, H, W, C) with 1 or 3 channels, got {x.dtype} {x.shape}")
        if min(x.shape[1:3]) < MIN_IMAGE_SIZE:
            raise ConfigError(f"{where}: x_{split} images are {x.shape[1]}x{x.shape[2]}; the architectures and the "
                              f"random crop need at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
        if not len(x):
            raise ConfigError(f"{where}: the {split} split is empty")
        if y.ndim != 1 or len(y) != len(x):
            raise ConfigError(f"{where}: y_{split} must hold one label per image ({len(x)}), got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"{where}: y_{split} must hold whole-number class labels, got {y.dtype}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(f"{where}: train images are {x_train.shape[1:]}, test images {x_test.shape[1:]}")
    num_classes = len(classes) if classes else int(max(y_train.max(), y_test.max())) + 1
    for split, y in (("train", y_train), ("test", y_test)):
        if y.min() < 0 or y.max() >= num_classes:
            raise ConfigError(f"{where}: y_{split} labels run from {y.min()} to {y.max()}; they must be 0 to "
                              f"{num_classes - 1}" + (f" (the file names {num_classes} classes)" if classes else ""))
    if num_classes < 2:
        raise ConfigError(f"{where}: labels name {num_classes} class; a classification benchmark needs two or more")
    return (x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64),
            classes or tuple(map(str, range(num_classes))))


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
    return check_arrays(train.data, np.asarray(train.targets), test.data, np.asarray(test.targets), tuple(train.classes),
                        f"dataset {name} in {root}")

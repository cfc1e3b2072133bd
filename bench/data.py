"""Datasets as uint8 tensors, and class-balanced seeded subsets.

Every split is held as one uint8 tensor (N, C, H, W), on the training device where it fits (and
on the host, memory-mapped, where it does not: the training loop then moves it in batches);
augmentation and attacks work on it in batches. A dataset is named by `DataSpec.name`:

- `cifar10`, `cifar100` (the 100 fine labels), `svhn` (the train and test splits, digit 0 as
  label 0): an `.npz` named by `BENCH_CIFAR10` / `BENCH_CIFAR100` / `BENCH_SVHN`, else
  torchvision's files under the data root (read by the readers here, not by torchvision's
  classes, which would also check their md5), else downloaded there through torchvision;
- a path to an `.npz` holding `x_train, y_train, x_test, y_test` (uint8 NHWC images);
- `folder:/path` with `image_size`: `train/<class>/**/*.png|jpg|jpeg` and `test/` (or `val/`)
  with the same class folders, decoded once into a uint8 cache under the data root (`FolderSet`).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import socket
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.config import ConfigError, added_field, require
from bench.imagefolder import FolderSet
from bench.readers import check_npz

log = logging.getLogger(__name__)

DATA_ROOT_ENV = "BENCH_DATA_ROOT"
DOWNLOAD_TIMEOUT_S = 30  # a blocked network must fail, not hang
FOLDER_PREFIX = "folder:"  # `name = "folder:/path/to/imagenet100"`
MAX_SUBSET_SEED = 2**32 - 1  # as a grid's seeds (bench.grid.MAX_SEED)


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

    name: str = "cifar10"  # cifar10, cifar100, svhn, a path to an .npz, or folder:/path
    train_size: int | None = None  # class-balanced subset of the training split; None = all
    test_size: int | None = None  # class-balanced subset of the test split; None = all
    subset_seed: int = 0  # the subset is fixed across cells, whatever the cell's seed
    # Side in pixels a folder dataset's images are resized and centre-cropped to (folder datasets
    # only: the others come at their own size). Added after cells had ids: left out of them unset.
    image_size: int | None = added_field(None)

    def __post_init__(self):
        for field in ("train_size", "test_size"):
            value = getattr(self, field)
            require(value is None or value >= 1, f"data.{field}", f"must be at least 1, got {value}")
        folder = self.name.startswith(FOLDER_PREFIX)
        require(not folder or self.image_size is not None, "data.image_size",
                f"a folder dataset needs the side its images are resized to (e.g. 32 or 64), for {self.name!r}")
        require(folder or self.image_size is None, "data.image_size",
                f"only folder datasets are resized; {self.name!r} comes at its own size (leave image_size unset)")
        require(self.image_size is None or self.image_size >= MIN_IMAGE_SIZE, "data.image_size",
                f"must be at least {MIN_IMAGE_SIZE} pixels, got {self.image_size}")
        # numpy's seeded generators take 0 to 2**32 - 1 as every seed of a grid; found here, at load.
        require(0 <= self.subset_seed <= MAX_SUBSET_SEED, "data.subset_seed",
                f"must be a whole number from 0 to {MAX_SUBSET_SEED}, got {self.subset_seed}")


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
    """The dataset `spec` names, each split on `device` where it fits (`fits_on`), else on the host."""
    x_train, y_train, x_test, y_test, classes = _load_arrays(spec)
    num_classes = len(classes)
    train = _to_imageset(x_train, y_train, num_classes, spec.train_size, spec.subset_seed, "train")
    test = _to_imageset(x_test, y_test, num_classes, spec.test_size, spec.subset_seed, "test")
    return Dataset(spec.name, _place(train, device, spec), _place(test, device, spec), classes, fingerprint(train, test))


DEVICE_SHARE = 0.25  # of a GPU's free memory one split may take; the rest: poison, defended copy, model


def fits_on(device: torch.device | str, nbytes: int) -> bool:
    """Whether `nbytes` of images may sit on `device` (the host always takes them: they stay memory-mapped)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_SHARE * free


def _place(split: ImageSet, device: torch.device | str, spec: DataSpec) -> ImageSet:
    nbytes = split.images.numel()
    if fits_on(device, nbytes):
        return split.to(device)
    log.warning("%s: %.1f GB of images stay on the host, memory-mapped; training moves them to %s in batches",
                spec.name, nbytes / 1e9, device)
    return split


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


def require_poisons_one(ratio: float, eligible: int, where: str) -> None:
    """ConfigError where `ratio` of `eligible` training images (`poisoned_subset`'s floor) is no image
    at all: such a cell would be a clean one recorded under its attack's name."""
    if eligible and int(np.floor(ratio * eligible + 1e-9)) < 1:
        raise ConfigError(f"{where}: poison_ratio {ratio:g} of the {eligible} training images that may be poisoned "
                          f"poisons none; the smallest ratio that poisons one image is 1/{eligible} = {1 / eligible:.6g}")


def _to_imageset(x: np.ndarray, y: np.ndarray, num_classes: int, size: int | None, seed: int, split: str) -> ImageSet:
    if size is not None and size > len(y):
        raise ConfigError(f"data.{split}_size: {size} is larger than the {split} split ({len(y)} images)")
    whole = size is None or size == len(y)
    index = np.arange(len(y)) if whole else balanced_subset(y, size, num_classes, seed)
    # The whole of a memory-mapped NCHW cache (a folder's) stays the mapped file: no copy into memory.
    images = torch.from_numpy(np.ascontiguousarray((x if whole else x[index]).transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(y[index].astype(np.int64))
    return ImageSet(images, labels, torch.from_numpy(index), num_classes, len(y))


def _load_arrays(spec: DataSpec):
    name = spec.name
    if name.startswith(FOLDER_PREFIX):
        folder = FolderSet(Path(name[len(FOLDER_PREFIX):]).expanduser(), spec.image_size, data_root() / "folders")
        return check_arrays(*folder.load(), folder.where)
    if name.endswith(".npz"):
        return _load_npz_cached(*_file_state(Path(name)))
    if name not in TORCHVISION_SETS:
        raise ConfigError(f"data.name: unknown dataset {name!r}; use one of {', '.join(TORCHVISION_SETS)}, "
                          f"a path to an .npz, or {FOLDER_PREFIX}/path/to/folder")
    env = TORCHVISION_SETS[name].env
    if os.environ.get(env):
        return _load_npz_cached(*_file_state(Path(os.environ[env])))
    return _load_torchvision_cached(name)


def _file_state(path: Path) -> tuple[str, int, int, int, int]:
    """(path, modification time, size, inode, change time): the cache key of a file's arrays, so a
    file replaced at the same path is read again by a process that had read the old one, one of the
    same size and modification time (`cp -p`) too: its change time is new, and no program sets it."""
    try:
        stat = path.stat()
        return str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns
    except OSError:
        return str(path), 0, -1, 0, 0  # load_npz names the problem


@functools.lru_cache(maxsize=2)
def _load_npz_cached(path: str, mtime_ns: int, size: int, inode: int, ctime_ns: int):
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
    check_npz(path, f"dataset {path}")  # a corrupt zip, or a header declaring terabytes, before anything is read
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
    # Before anything is sized by the class count (subsets, the model's last layer): a label of
    # 10**9 would ask for 10**9 classes.
    if num_classes > len(y_train):
        named = f"the file names {num_classes} classes" if classes else \
            f"labels up to {num_classes - 1} make {num_classes} classes"
        raise ConfigError(f"{where}: {named}, more than the {len(y_train)} training images; labels must run from 0 "
                          "to the class count - 1, with at most one class per training image")
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


# --- torchvision's datasets: its on-disk files read here, torchvision only to download them ---

class _ArraysOnly(pickle.Unpickler):
    """An unpickler for the CIFAR python files that builds dicts, lists and numpy arrays and nothing
    else: a file under the data root cannot run code by being read."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how Python 3 writes an array's bytes in the files' protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR file holds only arrays and lists")
        return super().find_class(module, name)


class UnreadableFile(ValueError):
    """One file of a dataset's on-disk layout could not be read; `path` is the file."""

    def __init__(self, path: Path, err: BaseException):
        super().__init__(f"{type(err).__name__}: {err}")
        self.path = path


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()  # latin1: the files were pickled by Python 2, as torchvision reads them
    # EOFError: an empty or truncated file (click would print only "Aborted!" for it).
    except (OSError, EOFError, ValueError, IndexError, TypeError, pickle.UnpicklingError) as err:
        raise UnreadableFile(path, err) from None


def _read_cifar(folder: Path, train: list[str], test: list[str], label_key: str, meta: str, names_key: str):
    """The CIFAR python version (`cifar-10-batches-py/`, `cifar-100-python/`): pickled dicts of
    `data` (N, 3072 uint8, channel-major rows) and labels, class names in the meta file."""
    def split(files: list[str]):
        batches = [_unpickle(folder / f) for f in files]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x), np.concatenate([np.asarray(b[label_key]) for b in batches])

    x_train, y_train = split(train)
    x_test, y_test = split(test)
    return x_train, y_train, x_test, y_test, tuple(_unpickle(folder / meta)[names_key])


def _read_svhn(root: Path):
    """SVHN's cropped digits (`train_32x32.mat`, `test_32x32.mat`; the `extra` split is not used):
    X is (32, 32, 3, N); label 10 is the digit 0, as torchvision maps it."""
    from scipy.io import loadmat  # scipy loads only for SVHN

    def split(name: str):
        path = root / f"{name}_32x32.mat"
        try:
            mat = loadmat(path)
        except (OSError, ValueError, TypeError, _mat_read_error()) as err:  # empty, truncated, not a .mat
            raise UnreadableFile(path, err) from None
        y = mat["y"].astype(np.int64).reshape(-1)
        return np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2)), np.where(y == 10, 0, y)

    return (*split("train"), *split("test"), tuple(map(str, range(10))))


def _mat_read_error() -> type:
    """scipy's MatReadError, imported only when a read has failed (scipy loads only for SVHN)."""
    from scipy.io.matlab import MatReadError

    return MatReadError


@dataclass(frozen=True)
class TorchvisionSet:
    """A dataset torchvision can download: where its files lie under the data root and how to read them."""

    title: str  # as people write it, for messages
    env: str  # the environment variable naming an offline .npz copy
    files: tuple[str, ...]  # what torchvision leaves under the data root, relative to it
    read: Callable[[Path], tuple]  # data root -> x_train, y_train, x_test, y_test, classes
    download: Callable[[Path], None]


def _torchvision_download(cls_name: str, **splits) -> Callable[[Path], None]:
    def download(root: Path) -> None:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, cls_name)
        for split in splits.values():
            cls(root, download=True, **split)
    return download


_CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TORCHVISION_SETS = {
    "cifar10": TorchvisionSet(
        "CIFAR-10", "BENCH_CIFAR10",
        tuple(f"cifar-10-batches-py/{f}" for f in (*_CIFAR10_BATCHES, "test_batch", "batches.meta")),
        lambda root: _read_cifar(root / "cifar-10-batches-py", _CIFAR10_BATCHES, ["test_batch"], "labels",
                                 "batches.meta", "label_names"),
        _torchvision_download("CIFAR10", train={"train": True}, test={"train": False})),
    "cifar100": TorchvisionSet(
        "CIFAR-100", "BENCH_CIFAR100", ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        lambda root: _read_cifar(root / "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                                 "fine_label_names"),
        _torchvision_download("CIFAR100", train={"train": True}, test={"train": False})),
    "svhn": TorchvisionSet(
        "SVHN", "BENCH_SVHN", ("train_32x32.mat", "test_32x32.mat"), _read_svhn,
        _torchvision_download("SVHN", train={"split": "train"}, test={"split": "test"})),
}


def _load_torchvision(name: str):
    """`name`'s files under the data root, downloaded there first where they are missing."""
    dataset, root = TORCHVISION_SETS[name], data_root()
    if not all((root / f).is_file() for f in dataset.files):
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            dataset.download(root)
        except Exception as err:
            raise DataUnavailable(
                f"{dataset.title} is not in {root} and could not be downloaded ({type(err).__name__}: {err}).\n"
                f"Either put torchvision's copy ({', '.join(sorted({f.split('/')[0] for f in dataset.files}))}) under "
                f"{root} or set {DATA_ROOT_ENV} to its parent,\n"
                f"or set {dataset.env}=/path/to/{name}.npz (uint8 x_train, y_train, x_test, y_test)."
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    try:
        arrays = dataset.read(root)
    except UnreadableFile as err:
        raise ConfigError(f"dataset {name} in {root}: its files are not {dataset.title}'s torchvision layout "
                          f"({err.path} is unreadable, {err}); remove it to download it again, or set "
                          f"{dataset.env}=/path/to/{name}.npz") from None
    except (OSError, KeyError, ValueError, IndexError, TypeError) as err:  # readable files of another structure
        raise ConfigError(f"dataset {name} in {root}: its files are not {dataset.title}'s torchvision layout "
                          f"({type(err).__name__}: {err})") from None
    return check_arrays(*arrays, f"dataset {name} in {root}")

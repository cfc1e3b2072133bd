"""Evaluate a poison made elsewhere, as researchers share them."""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from bench.bundles import MANIFEST, Manifest, is_bundle, read_bundle, read_manifest
from bench.config import ConfigError, on_255_grid, require
from bench.context import RunContext
from bench.data import ImageSet, fingerprint
from bench.readers import bombs_refused, check_npz, read_rgb
from bench.registry import register_attack
from bench.store import content_sha256
from methods.base import NORMS, Attack, BudgetError, Poison, check_budget


@dataclass(frozen=True)
class ExternalConfig:
    path: str = ""  # a bundle (`bench poison export`), an .npz with x_train (uint8 NHWC, dataset order) or a folder of <index>.png
    norm: Literal["linf", "l2", "l0"] = "linf"  # the norm the poison's authors claim
    eps: float = 8 / 255  # the claimed budget: [0, 1] pixel units for linf/l2, pixels for l0

    def __post_init__(self):
        require(bool(self.path), "path", "set the poison's path (an .npz with x_train, or a folder of 0.png ... N-1.png)")
        require(self.norm in NORMS, "norm", f"must be one of {', '.join(NORMS)}")
        require(math.isfinite(self.eps) and self.eps >= 0, "eps", f"must be a finite number >= 0, got {self.eps}")


@register_attack("external", display="External")
class External(Attack):
    """Poisoned training images from a file: a bundle, an .npz (`x_train`) or a folder of PNGs by index.

    A bundle (`bench poison export` / `convert`, see bench.bundles) is checked against its manifest:
    its hash, the fingerprint of the clean images it was made from, and its own claimed budget; it
    may hold a subset of the training split, which must cover the grid's. The folder layout is
    that of the official TAP and AR releases (`0.png` ... `49999.png`, or the same inside `data/`).
    The count, image shape and order are checked against the clean training set, and the claimed
    budget on every image of the file (the runner checks the subset a grid uses, as for any
    attack), so a mis-sized, shuffled or partly over-budget file is refused. Not cacheable: the file is read and
    checked again by every run, so a file replaced at the same path is never served from the cache,
    and its content (`input_fingerprint`) goes with each record, so its cells run again.
    """

    Config = ExternalConfig
    paper = ""
    cacheable = False

    def input_fingerprint(self) -> str | None:
        path = Path(self.config.path).expanduser()
        return content_sha256(path)[:16] if path.exists() else None  # a missing file fails the cell itself

    def check_inputs(self, train: ImageSet) -> None:
        """A bundle's manifest against the grid before any work: the claimed norm and budget against
        `norm` and `eps`, the training split it indexes and the image shape against the data's, and
        enough images for the grid's subset. One line naming the field, both values and the file."""
        path = Path(self.config.path).expanduser()
        if not is_bundle(path):
            return  # an .npz or a PNG folder says nothing of itself: generate checks its images
        m = read_manifest(path)
        height, width = train.images.shape[2:]
        shape = [height, width, train.images.shape[1]]
        where = path / MANIFEST
        checks = [  # (holds, what differs)
            (m.norm == self.config.norm, f"norm is {m.norm}, the grid's external.norm is {self.config.norm}"),
            (math.isclose(m.budget, self.config.eps, rel_tol=1e-6, abs_tol=1e-9),
             f"budget is {_shown(m.budget)}, the grid's external.eps is {_shown(self.config.eps)}"),
            (m.split_size == train.split_size,
             f"split_size is {m.split_size}, the data's training split has {train.split_size} images"),
            (list(m.image_shape) == shape, f"image_shape is {list(m.image_shape)}, the data's images are {shape} (H, W, C)"),
            (m.count >= len(train), f"count is {m.count}, fewer than the grid's {len(train)} training images"),
        ]
        for holds, differs in checks:
            if not holds:
                raise ConfigError(f"attack external: the bundle's {differs} ({where})")

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        path = Path(self.config.path).expanduser()
        source = read_poison_file(path, data.split_size)
        if source.manifest is not None and source.manifest.norm != self.config.norm:
            raise ConfigError(f"external poison {path}: the bundle claims {source.manifest.norm} "
                              f"{source.manifest.budget:.6g}; set external.norm = {source.manifest.norm!r} and external.eps")
        expected = tuple(data.images.shape[1:])
        got = (source.images.shape[3], source.images.shape[1], source.images.shape[2])
        if got != expected:
            raise ConfigError(f"external poison {path}: images are {got[1]}x{got[2]}x{got[0]}, the dataset's are {expected[1]}x{expected[2]}x{expected[0]}")
        rows = rows_of(source.index, data.index.cpu().numpy(), data.split_size, path)
        images = torch.from_numpy(np.ascontiguousarray(source.images[rows].transpose(0, 3, 1, 2))).to(data.device)
        check_order(data.images, images, path)
        if source.manifest is not None or len(data) < len(source.images):
            # The file is one poison: its images outside the grid's subset must keep the claim too, and
            # a bundle must have been made from these clean images.
            clean = _clean_at(source.index, data, ctx)
            if clean is not None:
                check_poison_file(path, source, clean, self.config.norm, self.config.eps)
        return Poison(images, self.config.norm, self.config.eps)


def _shown(value) -> str:
    """A manifest's value as people write it: 0.0313725 (8/255)."""
    if isinstance(value, float):
        levels = on_255_grid(value)
        return f"{value:.6g}" + (f" ({levels}/255)" if levels is not None else "")
    return str(value)


@dataclass(frozen=True)
class PoisonFile:
    """The images of a poison file (uint8 NHWC), the training-split position of each, and the
    manifest where the file is a bundle."""

    images: np.ndarray
    index: np.ndarray
    manifest: Manifest | None = None


def read_poison_file(path: Path, split_size: int) -> PoisonFile:
    """A bundle (bench.bundles), an .npz with `x_train`, or a folder of PNGs by index."""
    if is_bundle(path):
        bundle = read_bundle(path)
        if bundle.manifest.split_size != split_size:
            raise ConfigError(f"external poison {path}: the bundle indexes a training split of "
                              f"{bundle.manifest.split_size} images; this dataset's has {split_size}")
        return PoisonFile(bundle.images, bundle.index, bundle.manifest)
    return PoisonFile(load_external(path, split_size), np.arange(split_size))


def rows_of(index: np.ndarray, positions: np.ndarray, split_size: int, path: Path) -> np.ndarray:
    """Which rows of a poison file hold the images at `positions` of the training split."""
    row = np.full(split_size, -1)
    row[index] = np.arange(len(index))
    rows = row[positions]
    if (rows < 0).any():
        lacking = positions[rows < 0]
        raise ConfigError(f"external poison {path}: holds {len(index)} of the {split_size} training images, not "
                          f"image {lacking[0]} (and {len(lacking) - 1} more) that the grid uses; export the poison of "
                          "the whole training set, or use the subset the bundle was made on")
    return rows


def _clean_at(index: np.ndarray, data: ImageSet, ctx: RunContext) -> ImageSet | None:
    """The clean images and labels at `index`: from the grid's set where it holds them all, else from
    the full split; None where that is not at hand (a direct call outside a run)."""
    if len(data) == len(index) and np.array_equal(data.index.cpu().numpy(), index):
        return data
    if ctx.full_train is None:
        return None
    return ctx.full_train().to("cpu").take(torch.from_numpy(index))  # the full split: row i is position i


def check_poison_file(path: Path, source: PoisonFile, clean: ImageSet, norm: str, eps: float) -> float:
    """Every image of a poison file against the clean images it claims to perturb: a bundle's
    clean fingerprint, its own claimed budget, then `norm`/`eps` (what the grid evaluates it at).
    Returns the largest perturbation in `norm`."""
    images = torch.from_numpy(np.ascontiguousarray(source.images.transpose(0, 3, 1, 2)))
    clean_images = clean.images.cpu()
    if source.manifest is not None:
        found = fingerprint(clean)
        if found != source.manifest.clean_fingerprint:
            raise ConfigError(f"external poison {path}: the bundle was made from other clean images (its "
                              f"fingerprint {source.manifest.clean_fingerprint}, this dataset's {found})")
        try:
            check_budget(clean_images, Poison(images, source.manifest.norm, source.manifest.budget))
        except BudgetError as err:
            raise BudgetError(f"external poison {path}: breaks its manifest's claim: {err}") from None
    try:
        return check_budget(clean_images, Poison(images, norm, eps))
    except BudgetError as err:
        raise BudgetError(f"external poison {path}, all {len(images)} images: {err}") from None


def load_external(path: Path, expected_count: int) -> np.ndarray:
    if path.suffix == ".npz":
        if not path.is_file():
            raise ConfigError(f"attack external.path: {path} does not exist")
        where = f"external poison {path}"
        check_npz(path, where)  # a corrupt zip, or a header declaring terabytes, before anything is read
        try:
            with np.load(path, allow_pickle=False) as f:
                names, x = f.files, f["x_train"] if "x_train" in f else None
        except (OSError, ValueError, zipfile.BadZipFile) as err:  # truncated data, an array that would need pickle
            raise ConfigError(f"{where}: not a readable .npz ({err})") from None
        if x is None:
            raise ConfigError(f"{where}: no x_train array (found {', '.join(names)})")
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
    if not any(folder.glob("*.png")) and (folder / "data").is_dir():
        folder = folder / "data"  # the TAP and AR releases keep the images in data/
    names = {p.name for p in folder.glob("*.png")}
    missing = [f"{i}.png" for i in range(expected_count) if f"{i}.png" not in names]
    if missing or len(names) != expected_count:
        raise ConfigError(
            f"external poison {folder}: expected {expected_count} files 0.png ... {expected_count - 1}.png, "
            f"found {len(names)}" + (f"; missing {missing[0]} and {len(missing) - 1} more" if missing else "")
        )
    with bombs_refused():
        images = [np.asarray(read_rgb(folder / f"{i}.png", f"external poison {folder}")) for i in range(expected_count)]
    if len({image.shape for image in images}) > 1:
        raise ConfigError(f"external poison {folder}: its images differ in size ({images[0].shape[1]}x"
                          f"{images[0].shape[0]} and others); a poison's images are all the dataset's size")
    return np.stack(images)


ORDER_BLOCK = 512  # consecutive images judged together by check_order
ORDER_CHUNK = 4096  # images compared at a time: memory stays bounded on a set of any size


def check_order(clean: torch.Tensor, poisoned: torch.Tensor, path: Path) -> None:
    """A poison in the dataset's order sits much closer to its own clean image than to another's:
    judged over every block of ORDER_BLOCK consecutive images of the file, so a part shuffled
    anywhere in it is refused, not only one in its first images."""
    n = len(clean)
    if n < 2:
        return
    matched, shifted = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    for start in range(0, n, ORDER_CHUNK):  # per image: mean |poison - own clean| and |poison - previous clean|
        rows = torch.arange(start, min(start + ORDER_CHUNK, n), device=clean.device)
        p, c, prev = poisoned[rows].to(torch.int16), clean[rows].to(torch.int16), clean[rows - 1].to(torch.int16)
        matched[start : start + len(rows)] = (p - c).abs().flatten(1).double().mean(1).cpu()
        shifted[start : start + len(rows)] = (p - prev).abs().flatten(1).double().mean(1).cpu()
    blocks = [(a, min(a + ORDER_BLOCK, n)) for a in range(0, n, ORDER_BLOCK)]
    if len(blocks) > 1 and blocks[-1][1] - blocks[-1][0] < 2:
        blocks[-2:] = [(blocks[-2][0], n)]  # a last block of one image joins the one before it
    for a, b in blocks:
        m, sh = matched[a:b].mean().item(), shifted[a:b].mean().item()
        if m > 0.5 * sh:
            raise ConfigError(
                f"external poison {path}: images {a} to {b - 1} do not follow the dataset's order (mean |poison - "
                f"clean| is {m:.1f}/255 against {sh:.1f}/255 for mismatched pairs)"
            )

"""Poison bundles: a poisoned training set packaged to be published, shared and checked.

A bundle is a folder of two files:

- `images.npz`: `x_train`, uint8 (N, H, W, C), and `index`, int64 (N,), each image's position in
  the clean training split (all of it, or the subset a grid poisoned), read with
  `allow_pickle=False`;
- `manifest.json`: what the images are (`Manifest`): the attack, its config and seed, the dataset's
  name and the fingerprint of the clean images the poison was made from, the claimed budget and the
  measured one, the SHA-256 of `images.npz`, and where the bundle came from (the cache of a results
  folder, or a file in a release format) with the versions that made it.

`read_bundle` trusts nothing it cannot check on its own (format, version, hash, shapes); whether the
images fit a dataset, keep their budget and follow its order is `methods.external.check_bundle`'s.
The format is npz rather than safetensors: numpy reads it without pickle and without another
dependency.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import ConfigError
from bench.store import atomic_write_bytes, atomic_write_json

FORMAT = "unlearnable-bench poison bundle"
VERSION = 1
IMAGES = "images.npz"
MANIFEST = "manifest.json"


class BundleError(ConfigError):
    """A folder that is not a bundle, or a bundle whose files do not match their manifest."""


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and where it came from; `manifest.json` is its JSON."""

    attack: str  # the attack's registered name, or what the release calls it
    attack_config: dict  # its config as the cell recorded it ({} for a release)
    seed: int | None  # None where the release does not say
    dataset: str  # the dataset's name: "cifar10", or the path of an .npz
    clean_fingerprint: str  # bench.data.fingerprint of the clean images at `index` and their labels
    count: int  # images in the bundle
    split_size: int  # images in the clean training split `index` points into
    image_shape: list  # (H, W, C)
    norm: str  # the claimed norm: linf, l2 or l0
    budget: float  # the claimed budget: [0, 1] pixel units for linf/l2, pixels for l0
    measured: dict  # the largest per-image perturbation in each norm: {"linf": ..., "l2": ..., "l0": ...}
    sha256: str  # of images.npz
    source: dict  # {"kind": "cache", "key": ..., ...} or {"kind": "release", "format": ..., "sha256": ...}
    provenance: dict  # bench.environment.provenance of the export, and when
    data_fingerprint: str | None = None  # bench.data fingerprint of the data a cached poison was made on
    format: str = FORMAT
    version: int = VERSION
    extra: dict = field(default_factory=dict)  # keys a newer version wrote, kept as they were

    def to_json(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **d}

    @classmethod
    def from_json(cls, d: Any, where: Path) -> Manifest:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"{where}: not a poison bundle manifest (its format is not {FORMAT!r})")
        if not isinstance(d.get("version"), int) or d["version"] > VERSION:
            raise BundleError(f"{where}: bundle version {d.get('version')!r}; this version of bench reads up to {VERSION}")
        names = {f.name for f in fields(cls)} - {"extra"}
        missing = sorted(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                         and f.name not in d)
        if missing:
            raise BundleError(f"{where}: manifest lacks {', '.join(missing)}")
        return cls(**{n: d[n] for n in names if n in d}, extra={k: v for k, v in d.items() if k not in names})


@dataclass(frozen=True)
class Bundle:
    folder: Path
    images: np.ndarray  # uint8 (N, H, W, C)
    index: np.ndarray  # int64 (N,)
    manifest: Manifest


def write_bundle(folder: Path, images: np.ndarray, index: np.ndarray, manifest: dict) -> Manifest:
    """Write `images` (uint8 NHWC) and `index` as a bundle; `manifest` holds every `Manifest` field
    but the ones computed here (count, image shape, sha256). The manifest goes last, so a folder
    whose export was interrupted has no manifest and is never read as a bundle."""
    images = np.ascontiguousarray(images)
    index = np.ascontiguousarray(index, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(index):
        raise BundleError(f"bundle images must be uint8 (N, H, W, C) with one index each, got {images.dtype} "
                          f"{images.shape} and {len(index)} indices")
    buffer = io.BytesIO()
    np.savez(buffer, x_train=images, index=index)
    payload = buffer.getvalue()
    full = Manifest(**manifest, count=len(images), image_shape=list(images.shape[1:]),
                    sha256=hashlib.sha256(payload).hexdigest())
    folder = Path(folder)
    (folder / MANIFEST).unlink(missing_ok=True)
    atomic_write_bytes(folder / IMAGES, payload)
    atomic_write_json(folder / MANIFEST, full.to_json())
    return full


def is_bundle(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the bundle in `folder`, without reading its images; BundleError where unreadable."""
    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{folder}: not a poison bundle (no {MANIFEST})")
    try:
        return Manifest.from_json(json.loads(manifest_path.read_text(encoding="utf-8")), manifest_path)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
        raise BundleError(f"{manifest_path}: unreadable manifest ({err})") from None


def read_bundle(folder: Path) -> Bundle:
    """A bundle whose images match the hash, count and shape of its manifest; BundleError otherwise."""
    folder = Path(folder)
    images_path = folder / IMAGES
    manifest = read_manifest(folder)
    if not images_path.is_file():
        raise BundleError(f"{folder}: the manifest has no {IMAGES} beside it")
    payload = images_path.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != manifest.sha256:
        raise BundleError(f"{images_path}: SHA-256 {digest[:16]}... does not match the manifest's "
                          f"{manifest.sha256[:16]}... (altered or truncated)")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as f:
            images, index = f["x_train"], f["index"]
    except (KeyError, ValueError, OSError) as err:
        raise BundleError(f"{images_path}: not the arrays of a bundle ({err})") from None
    shape = [manifest.count, *manifest.image_shape]
    if images.dtype != np.uint8 or list(images.shape) != shape or index.shape != (manifest.count,) \
            or index.dtype != np.int64:
        raise BundleError(f"{images_path}: arrays {images.dtype} {images.shape} / {index.dtype} {index.shape} "
                          f"do not match the manifest's {manifest.count} images of {manifest.image_shape}")
    if len(index) and (index.min() < 0 or index.max() >= manifest.split_size or len(np.unique(index)) != len(index)):
        raise BundleError(f"{images_path}: index must be distinct positions in 0..{manifest.split_size - 1}")
    return Bundle(folder, images, index, manifest)

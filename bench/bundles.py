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
import math
import os
import re
import shutil
import zipfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import ConfigError
from bench.readers import check_npz
from bench.store import atomic_write_bytes, atomic_write_json, process_alive, umask

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
        for name, value in d.items():
            _check_field(name, value, where)
        return cls(**{n: d[n] for n in names if n in d}, extra={k: v for k, v in d.items() if k not in names})


def _whole(value: Any, least: int) -> bool:
    return type(value) is int and value >= least  # type(): True is an int to isinstance


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


# Each manifest field -> (what it must be, in words; the test). A wrong type is refused on reading,
# so that `verify` never passes a manifest whose fields another reader would choke on.
FIELD_KINDS = {
    "attack": ("text", lambda v: isinstance(v, str)),
    "attack_config": ("a JSON object", lambda v: isinstance(v, dict)),
    "seed": ("a whole number from 0, or null", lambda v: v is None or _whole(v, 0)),
    "dataset": ("text", lambda v: isinstance(v, str)),
    "clean_fingerprint": ("text", lambda v: isinstance(v, str)),
    "count": ("a whole number from 0", lambda v: _whole(v, 0)),
    "split_size": ("a whole number from 1", lambda v: _whole(v, 1)),
    "image_shape": ("a list of 3 whole numbers from 1 (H, W, C)",
                    lambda v: isinstance(v, list) and len(v) == 3 and all(_whole(x, 1) for x in v)),
    "norm": ("text (linf, l2 or l0)", lambda v: isinstance(v, str)),
    "budget": ("a finite number >= 0", _number),
    "measured": ("a JSON object of finite numbers >= 0", lambda v: isinstance(v, dict) and all(map(_number, v.values()))),
    "sha256": ("64 hex digits", lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)),
    "source": ("a JSON object", lambda v: isinstance(v, dict)),
    "provenance": ("a JSON object", lambda v: isinstance(v, dict)),
    "data_fingerprint": ("text, or null", lambda v: v is None or isinstance(v, str)),
}
MAX_DEPTH = 32  # nesting of lists and objects any field may have: a config is a few levels deep


def _check_field(name: str, value: Any, where: Path) -> None:
    kind = FIELD_KINDS.get(name)
    if kind is not None and not kind[1](value):
        raise BundleError(f"{where}: manifest field {name} must be {kind[0]}, got {_shown(value)}")
    if _depth(value) > MAX_DEPTH:
        raise BundleError(f"{where}: manifest field {name} is nested more than {MAX_DEPTH} levels deep")


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value`, without recursion (a deep value cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH and isinstance(item, (dict, list)):
            stack += [(child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest


def _shown(value: Any) -> str:
    text = "an object" if isinstance(value, dict) else "a list" if isinstance(value, list) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Bundle:
    folder: Path
    images: np.ndarray  # uint8 (N, H, W, C)
    index: np.ndarray  # int64 (N,)
    manifest: Manifest


def write_bundle(folder: Path, images: np.ndarray, index: np.ndarray, manifest: dict, force: bool = False) -> Manifest:
    """Write `images` (uint8 NHWC) and `index` as a bundle; `manifest` holds every `Manifest` field
    but the ones computed here (count, image shape, sha256).

    The bundle is written whole in a folder beside `folder` and renamed into place, so an interrupted
    export (a kill, a full disk) leaves what was there before. A `folder` that holds anything but this
    same poison (another bundle, other files) is refused unless `force`."""
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
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder)  # first: a bundle a killed export was replacing comes back, and is checked
    _check_replaceable(folder, full.sha256, force)
    staged = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        staged.mkdir()
        atomic_write_bytes(staged / IMAGES, payload)
        atomic_write_json(staged / MANIFEST, full.to_json())
        staged.chmod(0o777 & ~umask())  # mkdir's mode under the umask, as a folder the user makes
        if folder.exists():
            previous = folder.parent / f".{folder.name}.replaced-{os.getpid()}"
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
            staged.rename(folder)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staged.rename(folder)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return full


def _check_replaceable(folder: Path, sha256: str, force: bool) -> None:
    """Refuse to replace anything but the same poison at `folder`, unless `force`."""
    if force or not folder.exists():
        return
    if not folder.is_dir():
        raise BundleError(f"{folder} is a file, not a bundle folder; pass --force to replace it")
    held = [p.name for p in folder.iterdir()]
    if not held:
        return
    try:
        there = read_manifest(folder)
    except BundleError:
        raise BundleError(f"{folder} is not empty ({', '.join(sorted(held)[:3])}{', ...' if len(held) > 3 else ''}) "
                          f"and holds no bundle; choose another folder, or pass --force to replace it") from None
    if there.sha256 != sha256 or set(held) - {IMAGES, MANIFEST}:
        raise BundleError(f"{folder} holds another bundle ({there.attack}, seed {there.seed}, on {there.dataset}, "
                          f"sha256 {there.sha256[:16]}); choose another folder, or pass --force to replace it")


PARTIAL = re.compile(r"^\.(?P<name>.+)\.(partial|replaced)-(?P<pid>\d+)$")


def remove_stale_partials(folder: Path) -> None:
    """Take away the staging folders beside `folder` that a killed export left behind (`.NAME.partial-PID`,
    `.NAME.replaced-PID` whose process is gone); a replaced bundle whose successor never arrived comes back."""
    for path in sorted(folder.parent.glob(f".{folder.name}.*-*")):
        match = PARTIAL.match(path.name)
        if not (match and match["name"] == folder.name and not _alive(int(match["pid"]))):
            continue
        if match[2] == "replaced" and not folder.exists():
            path.rename(folder)  # killed between its two renames: the bundle it was replacing comes back
        else:
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    """`process_alive`, except that this process's own leftovers (an export that failed before) count as gone."""
    return pid != os.getpid() and process_alive(pid)
    return True


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
    except RecursionError:  # the JSON parser's own limit on nesting
        raise BundleError(f"{manifest_path}: unreadable manifest (nested more than {MAX_DEPTH} levels deep)") from None


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
        check_npz(payload, str(images_path))  # a corrupt zip, or a header declaring terabytes, before reading
    except ConfigError as err:
        raise BundleError(str(err)) from None
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as f:
            images, index = f["x_train"], f["index"]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise BundleError(f"{images_path}: not the arrays of a bundle ({err})") from None
    shape = [manifest.count, *manifest.image_shape]
    if images.dtype != np.uint8 or list(images.shape) != shape or index.shape != (manifest.count,) \
            or index.dtype != np.int64:
        raise BundleError(f"{images_path}: arrays {images.dtype} {images.shape} / {index.dtype} {index.shape} "
                          f"do not match the manifest's {manifest.count} images of {manifest.image_shape}")
    if len(index) and (index.min() < 0 or index.max() >= manifest.split_size or len(np.unique(index)) != len(index)):
        raise BundleError(f"{images_path}: index must be distinct positions in 0..{manifest.split_size - 1}")
    return Bundle(folder, images, index, manifest)

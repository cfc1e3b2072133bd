"""`bench poison`: list cached poisons, export one as a bundle, convert a release, verify a bundle.

A bundle (bench.bundles) is what a researcher publishes: the poisoned images, and a manifest that
says what made them and from which clean images, so that whoever downloads it can check it
(`bench poison verify`) and evaluate it (`attack external` with `path` = the bundle).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.bundles import Manifest, read_bundle, write_bundle
from bench.config import ConfigError
from bench.data import DataSpec, Dataset, fingerprint, load_dataset
from bench.environment import provenance
from bench.store import Store, content_sha256
from methods.base import NORMS, BudgetError, Poison, check_budget, largest_perturbation
from methods.external import PoisonFile, check_order, check_poison_file
from methods.releases import read_release, release_format


@dataclass(frozen=True)
class CachedPoison:
    key: str
    attack: str
    seed: int | None
    count: int
    norm: str
    budget: float
    data: str  # the dataset's name, "?" where neither the cache nor a record says


def cached_poisons(store: Store) -> list[CachedPoison]:
    """The poisons in a results folder's cache (not the defended sets kept beside them)."""
    data_of = _data_of_records(store)
    found = []
    for meta_path in sorted(store.poisons_dir.glob("*.json")) if store.poisons_dir.is_dir() else []:
        cached = store.load_poison(meta_path.stem)
        if cached is None or cached[1].get("kind") == "prepared":
            continue
        images, meta = cached
        data = meta.get("data") or data_of.get(meta_path.stem)
        found.append(CachedPoison(meta_path.stem, meta.get("attack", "?"), meta.get("seed"), len(images),
                                  meta.get("norm", "?"), meta.get("budget", float("nan")), data["name"] if data else "?"))
    return found


def export_cached(store: Store, key: str, folder: Path, force: bool = False) -> Manifest:
    """Write the cached poison `key` of `store` as a bundle in `folder` (another bundle there only with `force`)."""
    cached = store.load_poison(key)
    if cached is None:
        raise ConfigError(f"poison {key}: not in the cache of {store.root} (or altered); `bench poison list` shows what is")
    images, meta = cached
    if meta.get("kind") == "prepared":
        raise ConfigError(f"{key} is a defended training set, not a poison; export the poison it was made from "
                          f"({meta.get('poison_key')})")
    data = meta.get("data") or _data_of_records(store).get(key)
    if data is None:
        raise ConfigError(f"poison {key}: neither its cache entry nor any record says which data it was made from")
    dataset = load_dataset(DataSpec(**data))
    made_on = meta.get("data_fingerprint")
    if made_on is not None and made_on != dataset.fingerprint:
        raise ConfigError(f"poison {key} was made from other data than {data['name']} holds now (fingerprint "
                          f"{made_on}, now {dataset.fingerprint})")
    clean = dataset.train
    poison = Poison(torch.from_numpy(images), meta["norm"], meta["budget"])
    check_budget(clean.images, poison)
    source = {"kind": "cache", "key": key, "results": str(store.root.resolve()), "precision": meta.get("precision"),
              "generate_seconds": meta.get("generate_seconds")}
    return write_bundle(folder, images.transpose(0, 2, 3, 1), clean.index.numpy(), {
        "attack": meta["attack"], "attack_config": meta.get("attack_config", {}), "seed": meta.get("seed"),
        "dataset": data["name"], "clean_fingerprint": fingerprint(clean), "split_size": clean.split_size,
        "norm": meta["norm"], "budget": meta["budget"], "measured": measured_sizes(clean.images, poison.images),
        "source": source, "provenance": _provenance(), "data_fingerprint": dataset.fingerprint}, force=force)


def convert_release(path: Path, folder: Path, *, fmt: str, data: str, attack: str, norm: str, eps: float,
                    seed: int | None = None, em_noise: str = "official", force: bool = False) -> Manifest:
    """Read a poison in a release format (methods.releases) against the clean training split of
    `data` and write it as a bundle in `folder`; a poison that breaks the claimed budget is refused."""
    if norm not in NORMS:
        raise ConfigError(f"--norm: must be one of {', '.join(NORMS)}, got {norm!r}")
    fmt = release_format(path) if fmt == "auto" else fmt
    dataset = _full(data)
    clean = dataset.train
    images = read_release(path, fmt, clean, em_noise)
    if tuple(images.shape[1:]) != tuple(clean.images.permute(0, 2, 3, 1).shape[1:]):
        raise ConfigError(f"{path}: images of {images.shape[1:]}, the dataset's are {tuple(clean.images.shape[1:])} (C, H, W)")
    poisoned = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    check_order(clean.images, poisoned, path)
    try:
        check_budget(clean.images, Poison(poisoned, norm, eps))
    except BudgetError as err:
        raise BudgetError(f"{path}: {err}; a bundle keeps its claim, so say the budget its authors state") from None
    source = {"kind": "release", "format": fmt, "file": path.name, "sha256": content_sha256(path)}
    if fmt == "em-pt":
        source["em_noise"] = em_noise
    return write_bundle(folder, images, clean.index.numpy(), {
        "attack": attack, "attack_config": {}, "seed": seed, "dataset": data,
        "clean_fingerprint": fingerprint(clean), "split_size": clean.split_size, "norm": norm,
        "budget": eps, "measured": measured_sizes(clean.images, poisoned), "source": source,
        "provenance": _provenance(), "data_fingerprint": None}, force=force)


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    measured: float  # in the claimed norm
    data: str


def verify_bundle(folder: Path, data: str | None = None) -> Verified:
    """Check a bundle on its own (hash, shapes) and against the clean training split of `data` (the
    manifest's dataset by default): the clean fingerprint, order, claimed and measured budget."""
    bundle = read_bundle(folder)
    manifest = bundle.manifest
    name = data or manifest.dataset
    full = _full(name).train
    if full.split_size != manifest.split_size:
        raise ConfigError(f"{folder}: indexes a training split of {manifest.split_size} images; {name}'s has {full.split_size}")
    clean = full.take(torch.from_numpy(bundle.index))  # the full split: row i is position i
    source = PoisonFile(bundle.images, bundle.index, manifest)
    poisoned = torch.from_numpy(np.ascontiguousarray(bundle.images.transpose(0, 3, 1, 2)))
    check_poison_file(folder, source, clean, manifest.norm, manifest.budget)  # the clean fingerprint first
    check_order(clean.images, poisoned, folder)
    measured = measured_sizes(clean.images, poisoned)
    wrong = [n for n in NORMS if abs(manifest.measured.get(n, float("nan")) - measured[n]) > 1e-9 * max(1.0, measured[n])]
    if wrong:
        raise ConfigError(f"{folder}: the manifest states a measured {wrong[0]} size of {manifest.measured.get(wrong[0])}, "
                          f"the images have {measured[wrong[0]]:.9g}")
    return Verified(manifest, measured[manifest.norm], name)


def measured_sizes(clean: torch.Tensor, poisoned: torch.Tensor) -> dict:
    """The largest per-image perturbation in every norm (linf, l2 in [0, 1] units; l0 in pixels), in
    float64 so that a manifest states 8/255 as 8/255."""
    return {norm: largest_perturbation(clean, poisoned, norm, torch.float64) for norm in NORMS}


def _full(name: str) -> Dataset:
    return load_dataset(DataSpec(name=name))


def _data_of_records(store: Store) -> dict[str, dict]:
    """Poison key -> the data spec of a record that used it (cache entries from before they named their data)."""
    found = {}
    for record in store.records():
        key = (record.poison or {}).get("key")
        if key and "data" in record.spec:
            found.setdefault(key, record.spec["data"])
    return found


def _provenance() -> dict:
    return {**provenance(torch.device("cpu")), "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

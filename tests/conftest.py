"""Shared fixtures: tiny synthetic data for unit tests, the offline CIFAR-10 copy for integration."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import ImageSet

ROOT = Path(__file__).resolve().parent.parent


def synthetic_arrays(n_train: int = 200, n_test: int = 100, classes: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    """A 200/100-image random dataset as an .npz, for grids that must run in seconds."""
    path = tmp_path / "tiny.npz"
    np.savez(path, **synthetic_arrays())
    return path


@pytest.fixture
def tiny_set() -> ImageSet:
    """64 random 32x32 images, 10 classes."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(64) % 10
    return ImageSet(images, labels, torch.arange(64), 10, 64)


@pytest.fixture(scope="session")
def cifar10_npz() -> Path:
    """The real CIFAR-10 as an .npz (x_train, y_train, x_test, y_test): $BENCH_CIFAR10, else data/cifar10.npz.

    CI decodes its machine's offline copy into data/cifar10.npz and sets $BENCH_CIFAR10 (.ci/run)."""
    if os.environ.get("BENCH_CIFAR10") and Path(os.environ["BENCH_CIFAR10"]).is_file():
        return Path(os.environ["BENCH_CIFAR10"])
    target = ROOT / "data" / "cifar10.npz"
    if not target.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must have CIFAR-10: set BENCH_CIFAR10 to an .npz, or decode one into data/cifar10.npz "
                        "(.ci/run does)")
        pytest.skip("no CIFAR-10 copy: set BENCH_CIFAR10 to an .npz with x_train, y_train, x_test, y_test")
    return target


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A small stored result set (`stored_results`: records, cached poisons, a tiny dataset), built once per
    module; tests write their reports elsewhere or only read it."""
    import stored_results

    return stored_results.build_under(tmp_path_factory.mktemp("stored"))

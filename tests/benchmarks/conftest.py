"""Fixtures of the benchmarks: the device, the plan of `bench bench` for it, and CIFAR-10 images.

Not part of the default test run (pyproject's `norecursedirs`); run them with `python3 dev.py bench`.
"""
import os

import pytest
import torch

from bench.data import DataSpec, load_dataset
from bench.perf import Plan, plan_for


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def plan(device) -> Plan:
    return plan_for(device)


@pytest.fixture(scope="session")
def cifar(device):
    """`cifar(n)`: the class-balanced first `n` CIFAR-10 training images, on the device."""
    if not os.environ.get("BENCH_CIFAR10"):
        pytest.skip("needs the offline CIFAR-10 copy: set BENCH_CIFAR10=/path/to/cifar10.npz (see .ci/run)")

    def load(n: int):
        return load_dataset(DataSpec(train_size=n, test_size=10), device).train

    return load

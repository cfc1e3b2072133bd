"""One generation round of every registered attack on a fixed batch, for tracking their cost.

In the default test run (`--benchmark-disable`) each benchmark runs once, as a test; time them
with `python3 dev.py bench` (pytest-benchmark's timing, on whatever device is found).
"""
import pytest
import torch

from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import ATTACKS

# One round of each model-based attack, tiny_cnn surrogate, on the same 256 images.
ONE_ROUND = {
    "em": {"preset": "cpu", "max_rounds": 1, "stop_accuracy": 1.0},
    "em_classwise": {"preset": "cpu", "max_rounds": 1, "stop_accuracy": 1.0, "subset_fraction": 1.0},
    "rem": {"preset": "cpu", "train_steps": 1, "batch_size": 256},
    "tap": {"preset": "cpu", "surrogate_epochs": 1, "restarts": 1},
    "miue": {"preset": "cpu", "epochs": 1},
}


@pytest.fixture(scope="module")
def batch() -> ImageSet:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (256, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.arange(256) % 10, torch.arange(256), 10, 256).to(device)


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if n != "external"])
def test_one_generation_round(benchmark, name, batch):
    attack = ATTACKS.create(name, ONE_ROUND.get(name, {}))
    benchmark.group = "generation round (256 images)"
    poison = benchmark(lambda: attack(batch, RunContext(device=batch.device, seed=0)))
    assert poison.images.shape == batch.images.shape

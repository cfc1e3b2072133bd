"""One generation round of every registered attack on a fixed batch, for tracking their cost.

On a CPU the attacks' CPU presets on 256 images; on CUDA their official settings on 2,560.
"""
import pytest

from bench.perf import generate, generation_attacks, synchronized, synthetic_set


@pytest.mark.parametrize("name", generation_attacks())
def test_one_generation_round(benchmark, name, device, plan):
    batch = synthetic_set(plan.generation_images, device)
    benchmark.group = f"generation round ({plan.generation_images} images)"
    poison = benchmark.pedantic(synchronized(generate, device), args=(name, batch), rounds=1, iterations=1)
    assert poison.images.shape == batch.images.shape

"""What the model-free attacks AR and CUDA must do, on synthetic tensors and on real CIFAR-10.

The contract every attack meets (dtype, shape, budget, seeding) is tests/test_attacks.py's; these
test what makes each of them the method of its paper.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.config import ConfigError
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import ATTACKS
from bench.report.tables import budget_label
from methods.ar import ARConfig, find_processes, matched_filters, sample_processes
from methods.cuda import CUDAConfig, draw_filters


def textured(n: int, classes: int, size: int = 32, seed: int = 0) -> ImageSet:
    """Mid-grey images with a little texture: clipping to [0, 1] never bites, so a perturbation is seen whole."""
    g = torch.Generator().manual_seed(seed)
    images = (128 + torch.randint(-20, 21, (n, 3, size, size), generator=g)).to(torch.uint8)
    return ImageSet(images, torch.arange(n) % classes, torch.arange(n), classes, n)


def responses(delta: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """(N, classes): ReLU sum of each class's matched filter over each perturbation."""
    return F.conv2d(delta, matched_filters(coefficients)).relu().sum((2, 3))


# --- AR -------------------------------------------------------------------------------------------
def test_ar_process_is_the_recursion_and_its_own_filter_answers_zero():
    g = torch.Generator().manual_seed(0)
    coefficients = find_processes(4, 3, ARConfig(min_response=3.0), g)
    assert torch.allclose(coefficients[:, :, -1, -1], torch.zeros(4, 3))
    assert torch.allclose(coefficients.sum((2, 3)), torch.ones(4, 3), atol=1e-5)
    noise = torch.randn(4, 3, 36, 36, generator=g)
    samples = sample_processes(coefficients, noise)
    assert torch.equal(samples[:, :, :2], noise[:, :, :2]) and torch.equal(samples[:, :, :, :2], noise[:, :, :, :2])
    # Value (i, j) is the weighted sum of its window's other 8 values, here checked at one point by hand.
    i, j = 17, 29
    window = samples[:, :, i - 2 : i + 1, j - 2 : j + 1]
    assert torch.allclose((window * coefficients).sum((2, 3)), samples[:, :, i, j], atol=1e-4)
    # Its matched filter answers ~0 to its own process past the first rows and columns, the others do not.
    answers = responses(samples[:, :, 4:, 4:] / samples[:, :, 4:, 4:].flatten(1).norm(dim=1).view(-1, 1, 1, 1), coefficients)
    assert torch.all(answers.diagonal() < 1e-3)
    assert torch.all(answers[~torch.eye(4, dtype=torch.bool)] >= 3.0), "the search keeps processes the others answer"
    # The top-left block of a sample is the sample of the noise's top-left block (the search relies on it).
    assert torch.allclose(sample_processes(coefficients, noise[:, :, :12, :12]), samples[:, :, :12, :12])


def test_ar_poison_is_a_fresh_sample_of_its_class_process_at_the_l2_budget():
    data = textured(200, 10)
    attack = ATTACKS.create("ar", {"min_response": 1.0})  # a looser search than the CPU preset's 3: faster
    assert attack.config.eps == 1.0 and attack.config.crop == 4
    poison = attack(data, RunContext(seed=3))
    delta = (poison.images.float() - data.images.float()) / 255
    norms = delta.flatten(1).norm(dim=1)
    assert poison.norm == "l2" and poison.budget == 1.0
    assert torch.all(norms <= 1.0 + 1e-6) and torch.all(norms > 0.97), "scaled to the budget, rounding aside"
    assert len(torch.unique(delta.flatten(1), dim=0)) == len(data.images), "every image gets its own sample"
    # The same processes as the attack drew (its generator's first draws), and each perturbation is
    # told apart by them: its own class's filter answers least, rounding to uint8 notwithstanding.
    coefficients = find_processes(10, 3, attack.config, torch.Generator().manual_seed(3))
    assert (responses(delta, coefficients).argmin(1) == data.labels).float().mean() == 1.0


def test_ar_official_response_threshold_follows_the_class_count():
    assert ARConfig().response_threshold(10) == 10.0 and ARConfig().response_threshold(100) == 3.0
    assert ARConfig(min_response=5.0).response_threshold(100) == 5.0
    with pytest.raises(ValueError, match=r"ar: found 0 of 2 processes in 1 candidates \(ar.candidates\)"):
        find_processes(2, 3, ARConfig(candidates=1, max_norm=1e-9), torch.Generator().manual_seed(0))


def test_ar_and_cuda_serve_100_classes_and_64x64_images():
    data = textured(200, 100, size=64)
    # A loose search (no response threshold, a high divergence bound) keeps the test to a second.
    for name, overrides in (("ar", {"min_response": 0.0, "max_norm": 1e6}), ("cuda", {})):
        poison = ATTACKS.create(name, overrides)(data, RunContext(seed=0))
        assert poison.images.shape == data.images.shape and not torch.equal(poison.images, data.images), name


@pytest.mark.parametrize("name,overrides,message", [
    ("ar", {"eps": 0}, "ar.eps: must be positive"),
    ("ar", {"crop": 1}, "ar.crop: must be at least 2"),
    ("ar", {"min_response": -1}, "ar.min_response: must be >= 0"),
    ("cuda", {"kernel_size": 4}, "cuda.kernel_size: must be an odd number >= 1"),
    ("cuda", {"blur_parameter": -0.1}, "cuda.blur_parameter: must be >= 0"),
])
def test_bad_configs_name_the_field(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        ATTACKS.config(name, overrides)


# --- CUDA -----------------------------------------------------------------------------------------
def test_cuda_filters_are_normalised_blurs_drawn_per_class_and_channel():
    filters = draw_filters(10, 3, CUDAConfig(), torch.Generator().manual_seed(0))
    assert filters.shape == (10, 3, 3, 3)
    assert torch.allclose(filters.sum((2, 3)), torch.ones(10, 3))
    off_centre = filters.clone()
    off_centre[:, :, 1, 1] = 0
    # Centre 1 and the others in [0, 0.3) before normalising: the centre weighs most, each other at most 0.3 of it.
    assert torch.all(off_centre >= 0) and torch.all(off_centre <= 0.3 * filters[:, :, 1:2, 1:2])
    assert len(torch.unique(filters.flatten(1), dim=0)) == 10


def test_cuda_blurs_each_image_with_its_class_filter_and_claims_no_bound():
    data = textured(40, 4)
    data.images[1] = data.images[0]  # the same image in two classes
    data.images[4] = data.images[0]  # and again in the first one's class
    attack = ATTACKS.create("cuda")
    poison = attack(data, RunContext(seed=0))
    assert torch.equal(poison.images[4], poison.images[0]) and not torch.equal(poison.images[1], poison.images[0])
    filters = draw_filters(4, 3, attack.config, torch.Generator().manual_seed(0))
    by_hand = F.conv2d(data.images[:1].float() / 255, filters[0].unsqueeze(1), padding=1, groups=3)
    assert torch.equal(poison.images[0], (by_hand.clamp(0, 1) * 255).round().to(torch.uint8)[0])
    assert (poison.norm, poison.budget) == ("linf", 1.0) and budget_label(poison.norm, poison.budget) == "unbounded"
    assert ((poison.images.float() - data.images.float()).abs().amax() / 255) > 8 / 255, "a blur is no 8/255 noise"
    identity = ATTACKS.create("cuda", {"blur_parameter": 0.0})(data, RunContext(seed=0))
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # zero padding darkens the border
    assert torch.equal(identity.images[inner], data.images[inner])


# --- real CIFAR-10 ----------------------------------------------------------------------------------
# Measured at this test's setting (tiny_cnn width 16, 10 epochs of cpu_smoke, 2,000 training and 1,000
# test images), seeds 0/1/2, on the project's 2-core EPYC, 2026-12-01: clean 45.7 / 46.5 / 48.2%, ar
# (CPU preset) 32.4 / 27.1 / 31.4% (official threshold: 28.3 / 24.5 / 29.6%), cuda 34.1 / 36.7 / 33.4%
# (docs/attacks.md). The smallest drops
# were 13.3 points (ar) and 9.8 (cuda); the bars below leave room under those.
DROP = {"ar": 0.08, "cuda": 0.05}


@pytest.fixture(scope="module")
def model_free_results(cifar10_npz, tmp_path_factory) -> dict[str, float]:
    from bench.executors import run_grid
    from bench.grid import parse_grid
    from bench.store import Store

    grid = parse_grid({
        "attacks": ["clean", *DROP], "defenses": ["none"], "archs": ["tiny_cnn"],
        "recipe": {"preset": "cpu_smoke", "epochs": 10},
        "data": {"name": str(cifar10_npz), "train_size": 2000, "test_size": 1000},
        "config": {"tiny_cnn": {"width": 16}, "ar": {"preset": "cpu"}},
    }, "attacks_mf_real")
    store = Store(tmp_path_factory.mktemp("attacks_mf_real"))
    counts = run_grid(grid, store, torch.device("cpu"), progress=False)
    assert counts["failed"] == 0, [r.error for r in store.records() if r.status == "failed"]
    return {r.spec["attack"]: r.metrics["test_acc_last"] for r in store.records()}


@pytest.mark.slow
@pytest.mark.parametrize("attack", sorted(DROP))
def test_model_free_poison_lowers_clean_test_accuracy(model_free_results, attack):
    drop = model_free_results["clean"] - model_free_results[attack]
    print(f"{attack}: clean {model_free_results['clean']:.1%} -> {model_free_results[attack]:.1%} ({100 * drop:.1f} points)")
    assert drop >= DROP[attack], f"{attack} removes only {100 * drop:.1f} points (bar {100 * DROP[attack]:.0f})"

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
    ("cuda", {"filters": "blur"}, "cuda.filters: must be one of official, normalised"),
])
def test_bad_configs_name_the_field(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        ATTACKS.config(name, overrides)


# --- CUDA -----------------------------------------------------------------------------------------
# The official code (final_filter_unlearnable.py, get_filter_unlearnable): U(0, p_b) entries, one
# set to 1 at a random position, no normalisation, one filter for all channels, each convolved image
# divided by its own maximum, truncated to uint8.
def test_cuda_filters_have_uniform_entries_and_a_single_one_at_a_random_position():
    filters = draw_filters(200, CUDAConfig(), torch.Generator().manual_seed(0))
    assert filters.shape == (200, 3, 3)
    flat = filters.flatten(1)
    assert torch.equal((flat == 1).sum(1), torch.ones(200, dtype=torch.long)), "exactly one entry is 1"
    rest = flat[flat != 1]
    assert torch.all(rest >= 0) and torch.all(rest < 0.3) and rest.max() > 0.29, "the others ~ U(0, 0.3)"
    assert not torch.allclose(flat.sum(1), torch.ones(200)), "not normalised"
    peaks = flat.argmax(1)
    assert len(peaks.unique()) == 9 and (peaks != 4).float().mean() > 0.75, "the 1 sits anywhere, mostly off centre"
    assert len(torch.unique(flat, dim=0)) == 200


def one_hot_case(peak_value: int = 200, flat_value: int = 100) -> ImageSet:
    """Two classes of flat images with one bright pixel in the middle: the maximum survives a one-pixel shift."""
    images = torch.full((4, 3, 8, 8), flat_value, dtype=torch.uint8)
    images[:, :, 4, 4] = peak_value
    return ImageSet(images, torch.tensor([0, 1, 0, 1]), torch.arange(4), 2, 4)


def test_cuda_with_p_b_zero_shifts_by_its_peak_normalises_by_the_image_max_and_truncates():
    data = one_hot_case()
    poison = ATTACKS.create("cuda", {"blur_parameter": 0.0})(data, RunContext(seed=5))
    filters = draw_filters(2, CUDAConfig(blur_parameter=0.0), torch.Generator().manual_seed(5))
    for i in range(4):
        r, c = divmod(int(filters[data.labels[i]].flatten().argmax()), 3)
        # Cross-correlation with a one-hot filter: out[y, x] = in[y + r - 1, x + c - 1], zero outside.
        padded = F.pad(data.images[i].float(), (1, 1, 1, 1))
        shifted = padded[:, r : r + 8, c : c + 8]
        # Divided by the image's own maximum (200): 100 -> 127.5, truncated to 127 (rounding gives 128).
        expected = (shifted / 200 * 255).floor().to(torch.uint8)
        assert torch.equal(poison.images[i], expected), (i, r, c)
        assert poison.images[i].max() == 255 and (poison.images[i] == 127).any() and not (poison.images[i] == 128).any()


def test_cuda_uses_one_filter_for_every_channel_and_each_image_its_own_maximum():
    data = textured(40, 4)
    data.images[1] = data.images[0]  # the same image in two classes
    data.images[4] = data.images[0]  # and again in the first one's class
    data.images[8] = data.images[0] // 4  # a dark copy in the first one's class: stretched to its own maximum
    data.images[12] = data.images[0, :1].expand(3, -1, -1)  # a grey image: its channels stay equal
    attack = ATTACKS.create("cuda")
    poison = attack(data, RunContext(seed=0))
    assert torch.equal(poison.images[4], poison.images[0]) and not torch.equal(poison.images[1], poison.images[0])
    assert torch.all(poison.images.flatten(1).amax(1) == 255), "every image reaches 255 at its own maximum"
    assert (poison.images[8].float() - poison.images[0].float()).abs().mean() < 3, "brightness is divided out"
    assert torch.equal(poison.images[12, 0], poison.images[12, 1]) and torch.equal(poison.images[12, 0], poison.images[12, 2])
    # By hand in float64, channel by channel with the one filter: equal up to float32 rounding at a level's edge.
    kernel = draw_filters(4, attack.config, torch.Generator().manual_seed(0))[0].double()
    x = data.images[0].double() / 255
    by_hand = torch.stack([F.conv2d(x[ch][None, None], kernel[None, None], padding=1)[0, 0] for ch in range(3)])
    by_hand = (by_hand / by_hand.max() * 255).floor()
    difference = (poison.images[0].double() - by_hand).abs()
    assert difference.max() <= 1 and (difference == 0).float().mean() > 0.99
    assert (poison.norm, poison.budget) == ("linf", 1.0) and budget_label(poison.norm, poison.budget) == "unbounded"
    assert ((poison.images.float() - data.images.float()).abs().amax() / 255) > 8 / 255, "a filter is no 8/255 noise"


def test_cuda_leaves_a_black_image_black():
    data = ImageSet(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), torch.arange(2), 2, 2)
    assert torch.equal(ATTACKS.create("cuda")(data, RunContext(seed=0)).images, data.images)


def test_cuda_normalised_filters_keep_flat_regions_and_differ_per_channel():
    flat = ImageSet(torch.full((4, 3, 8, 8), 120, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), torch.arange(4), 2, 4)
    poison = ATTACKS.create("cuda", {"filters": "normalised"})(flat, RunContext(seed=1))
    inner = poison.images[:, :, 1:-1, 1:-1]
    assert torch.all(inner == 120), "a sum-normalised blur keeps a flat region's brightness"
    assert torch.all(poison.images[:, :, 0] < 120), "zero padding darkens the border"
    data = textured(40, 4)
    data.images[12] = data.images[0, :1].expand(3, -1, -1)  # a grey image
    blurred = ATTACKS.create("cuda", {"filters": "normalised"})(data, RunContext(seed=0)).images
    assert not torch.equal(blurred[12, 0], blurred[12, 1]), "each channel has its own filter"
    assert not torch.equal(blurred, ATTACKS.create("cuda")(data, RunContext(seed=0)).images)


# --- real CIFAR-10 ----------------------------------------------------------------------------------
# Measured at this test's setting (tiny_cnn width 16, 10 epochs of cpu_smoke, 2,000 training and 1,000
# test images), seeds 0/1/2, on the project's 2-core EPYC, 2026-12-01: clean 45.7 / 46.5 / 48.2%, ar
# (CPU preset) 32.4 / 27.1 / 31.4% (official threshold: 28.3 / 24.5 / 29.6%); cuda (as the official
# code, 2026-12-02, beside clean 46.9 / 46.2 / 47.1%) 29.1 / 26.5 / 33.7% (docs/attacks.md). The
# smallest drops were 13.3 points (ar) and 13.4 (cuda); the bars below leave room under those.
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

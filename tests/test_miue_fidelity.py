"""MI-UE as released (hala64/mi-ue): the surrogate's initialisation and the loader's truncation."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.config import ConfigError, as_dict
from bench.context import RunContext
from bench.registry import ATTACKS
from methods import miue
from methods.miue import MIUEConfig, floor_to_levels, round_to_levels

CPU = torch.device("cpu")
TINY = {"preset": "cpu", "epochs": 1, "steps": 2, "batch_size": 32, "perturb_batch_size": 32}


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def fan_in(conv: nn.Conv2d) -> int:
    return conv.weight[0].numel()


def fan_out(conv: nn.Conv2d) -> int:
    return conv.weight.shape[0] * conv.weight[0, 0].numel()


def assert_he_fan_out(conv: nn.Conv2d) -> None:
    """Sample std of N(0, 2/fan_out) weights within 5 standard errors (relative SE 1/sqrt(2n))."""
    w = conv.weight.detach().double().flatten()
    expected = math.sqrt(2 / fan_out(conv))
    assert abs(w.std().item() / expected - 1) < 5 / math.sqrt(2 * w.numel()), (tuple(w.shape), w.std().item(), expected)
    assert abs(w.mean().item()) < 5 * expected / math.sqrt(w.numel())


def assert_torch_default(conv: nn.Conv2d) -> None:
    """PyTorch's kaiming_uniform(a=sqrt(5)): U(-b, b), b = 1/sqrt(fan_in); the sample std of a
    uniform has relative SE sqrt(1/5)/sqrt(n) (from Var(w^2) = 4b^4/45), tolerated to 5 SE."""
    w = conv.weight.detach().double().flatten()
    bound = 1 / math.sqrt(fan_in(conv))
    assert w.abs().max().item() <= bound
    assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 5 * math.sqrt(0.2 / w.numel()), tuple(conv.weight.shape)


@pytest.mark.parametrize("arch,width", [("resnet18", 32), ("tiny_cnn", 16)])
def test_the_official_init_draws_every_conv_but_the_stem_he_normal_over_fan_out(arch, width):
    attack = ATTACKS.create("miue", {"surrogate": arch, "surrogate_width": width})
    assert attack.config.surrogate_init == "official"  # the default
    model = attack.surrogate(10, CPU, seed=0)
    stem, *rest = convs(model)
    assert stem.in_channels == 3 and len(rest) >= 3
    assert_torch_default(stem)  # gen_miue.py's replacement conv1
    for conv in rest:
        assert_he_fan_out(conv)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    head = model.classifier  # the official fc keeps PyTorch's default
    assert head.weight.abs().max().item() <= 1 / math.sqrt(head.in_features)
    assert model.normalize  # ImageNet statistics inside, as the official model


@pytest.mark.parametrize("arch,width", [("resnet18", 32), ("tiny_cnn", 16)])
def test_torch_default_leaves_every_conv_as_pytorch_draws_it(arch, width):
    model = ATTACKS.create("miue", {"surrogate": arch, "surrogate_width": width, "surrogate_init": "torch_default"}) \
        .surrogate(10, CPU, seed=0)
    for conv in convs(model):
        assert_torch_default(conv)
    with pytest.raises(AssertionError):  # the two rules are told apart at these sample sizes
        assert_he_fan_out(convs(model)[1])


def test_generate_trains_the_surrogate_its_init_rule_draws(tiny_set, monkeypatch):
    seen = []

    def spy(model):
        seen.append(model)
        return miue.he_fan_out_but_stem(model)

    monkeypatch.setitem(miue.SURROGATE_INITS, "official", spy)
    ATTACKS.create("miue", TINY)(tiny_set, RunContext(seed=0))
    assert len(seen) == 1


def test_the_init_is_part_of_the_experiment():
    official, default = (as_dict(MIUEConfig(surrogate_init=rule)) for rule in ("official", "torch_default"))
    assert official["surrogate_init"] == "official" and default["surrogate_init"] == "torch_default"
    assert "quantise" not in official  # an added field: absent at its default, so rounding keeps its ids
    assert as_dict(MIUEConfig(quantise="floor"))["quantise"] == "floor"


@pytest.mark.parametrize("field,value", [("surrogate_init", "kaiming"), ("quantise", "ceil")])
def test_bad_init_or_quantiser_names_the_field_and_the_choices(field, value):
    with pytest.raises(ConfigError, match=rf"{field}: must be one of .*, got '{value}'"):
        MIUEConfig(**{field: value})


def test_floor_is_the_official_loaders_expression():
    g = torch.Generator().manual_seed(0)
    eps = 8 / 255
    clean = torch.randint(0, 256, (16, 3, 8, 8), generator=g, dtype=torch.uint8)
    clean[0] = 0; clean[1] = 255  # both clips
    q = torch.randint(-127, 128, clean.shape, generator=g).to(torch.int8)  # DeltaStore's grid
    delta = q.float() * (eps / 127)
    # datasets/cifar.py, CIFAR10Index: np.clip(data.astype(float32) + delta * 255, 0, 255).astype(uint8)
    official = np.clip(clean.numpy().astype(np.float32) + delta.mul(255).numpy(), 0, 255).astype(np.uint8)
    floored, rounded = floor_to_levels(clean, delta, eps), round_to_levels(clean, delta, eps)
    assert np.array_equal(floored.numpy(), official)
    step = floored.to(torch.int16) - rounded.to(torch.int16)
    assert step.max() == 0 and step.min() == -1 and (step != 0).float().mean() > 0.3
    assert (floored.to(torch.int16) - clean.to(torch.int16)).abs().max() <= 8


def test_quantise_changes_only_how_the_same_noise_is_published(tiny_set):
    rounded = ATTACKS.create("miue", TINY)(tiny_set, RunContext(seed=0)).images.to(torch.int16)
    floored = ATTACKS.create("miue", {**TINY, "quantise": "floor"})(tiny_set, RunContext(seed=0)).images.to(torch.int16)
    diff = floored - rounded
    assert diff.max() == 0 and diff.min() == -1 and (diff != 0).any()

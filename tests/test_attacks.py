"""Contract tests for every registered attack, and what LSP and OPS must do."""
import math

import numpy as np
import pytest
import torch

from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import ATTACKS
from bench.config import ConfigError, build_config
from bench.plugin import Plugin
from methods.base import Attack, BudgetError, Poison, SurrogateConfig, apply_delta, check_budget, perturbation_size
from methods.ops import CORNERS, search_pixels


# The cheapest settings of the model-based attacks: their CPU preset, cut to a couple of rounds.
TINY = {
    "em": {"preset": "cpu", "max_rounds": 2, "train_steps": 2, "steps": 2, "batch_size": 32},
    "em_classwise": {"preset": "cpu", "max_rounds": 2, "train_steps": 2, "batch_size": 32},
    "rem": {"preset": "cpu", "train_steps": 2, "steps": 2, "samples": 1, "adv_steps": 1, "batch_size": 32},
    "tap": {"preset": "cpu", "surrogate_width": 8, "surrogate_epochs": 1, "steps": 2, "restarts": 2, "batch_size": 32},
    "miue": {"preset": "cpu", "epochs": 2, "steps": 2, "batch_size": 32, "perturb_batch_size": 32},
    "hypo": {"preset": "cpu", "surrogate_width": 8, "surrogate_epochs": 1, "steps": 2, "batch_size": 32},
    "sep": {"preset": "cpu", "surrogate_width": 8, "surrogate_epochs": 2, "models": 2, "steps": 2, "vr_steps": 2,
            "batch_size": 32},
}


def attack_overrides(name: str, tmp_path, data: ImageSet) -> dict:
    """Configs the contract needs beyond the defaults (external reads a poison file)."""
    if name in TINY:
        return TINY[name]
    if "cpu" in ATTACKS.get(name).presets:
        return {"preset": "cpu"}
    if name == "external":
        path = tmp_path / "poison.npz"
        noisy = (data.images.to(torch.int16) + torch.randint(-8, 9, data.images.shape, generator=torch.Generator().manual_seed(1)))
        np.savez(path, x_train=noisy.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return {"path": str(path), "norm": "linf", "eps": 8 / 255}
    return {}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_contract(name, tiny_set, tmp_path):
    attack = ATTACKS.create(name, attack_overrides(name, tmp_path, tiny_set))
    poison = attack(tiny_set, RunContext(seed=0))
    assert poison.images.dtype == torch.uint8
    assert poison.images.shape == tiny_set.images.shape
    assert check_budget(tiny_set.images, poison) <= poison.budget + 1e-6
    again = attack(tiny_set, RunContext(seed=0))
    assert torch.equal(poison.images, again.images), "same seed must give the same poison"
    if attack.seeded:
        other = attack(tiny_set, RunContext(seed=1))
        assert not torch.equal(poison.images, other.images), "a different seed must give a different poison"
    if name != "clean":
        assert not torch.equal(poison.images, tiny_set.images), "an attack must change the data"


def test_check_budget_refuses_each_norm(tiny_set):
    from methods.base import BudgetError, Poison

    x = tiny_set.images
    linf = x.clone(); linf[0, 0, 0, 0] = (int(linf[0, 0, 0, 0]) + 9) % 256 if linf[0, 0, 0, 0] < 200 else linf[0, 0, 0, 0] - 9
    with pytest.raises(BudgetError, match="linf budget"):
        check_budget(x, Poison(linf, "linf", 8 / 255))
    assert check_budget(x, Poison(linf, "linf", 9 / 255)) == pytest.approx(9 / 255)
    two = x.clone(); two[0, :, 0, 0] = 255 - two[0, :, 0, 0]; two[0, :, 5, 5] = 255 - two[0, :, 5, 5]
    with pytest.raises(BudgetError, match="l0 budget"):
        check_budget(x, Poison(two, "l0", 1))
    assert check_budget(x, Poison(two, "l0", 2)) == 2
    with pytest.raises(BudgetError, match="l2 budget"):
        check_budget(x, Poison(two, "l2", 0.5))
    with pytest.raises(BudgetError, match="uint8"):
        check_budget(x, Poison(x.float(), "linf", 1.0))


def test_apply_delta_keeps_the_l2_budget_after_rounding(tiny_set):
    from methods.base import apply_delta

    delta = torch.randn(tiny_set.images.shape, generator=torch.Generator().manual_seed(0))
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.5
    poisoned = apply_delta(tiny_set.images, delta, "l2", 0.5)
    assert perturbation_size(tiny_set.images, poisoned, "l2").max() <= 0.5 + 1e-6


def test_lsp_is_patchwise_at_the_budget_and_linearly_separable():
    n = 200
    g = torch.Generator().manual_seed(0)
    # Textured mid-grey images: clipping never bites, so the perturbation is seen whole.
    images = (128 + torch.randint(-20, 21, (n, 3, 32, 32), generator=g)).to(torch.uint8)
    data = ImageSet(images, torch.arange(n) % 10, torch.arange(n), 10, n)
    attack = ATTACKS.create("lsp")
    assert attack.config.eps == pytest.approx(math.sqrt(3072) * 6 / 255)
    poison = attack(data, RunContext(seed=0))
    delta = poison.images.float() - images.float()
    norms = (delta.flatten(1) / 255).norm(dim=1)
    # LSP is constant over 8x8 patches, so rounding to uint8 errs the same way on 64 pixels at once
    # and moves the norm by up to a few hundredths (never above the budget); a wrong scale misses by far more.
    assert torch.all(norms <= attack.config.eps + 1e-6) and torch.all(norms > attack.config.eps - 0.03)
    assert norms.mean() > attack.config.eps - 0.01
    # Constant over each 8x8 patch (up to one quantisation level).
    blocks = delta.view(n, 3, 4, 8, 4, 8)
    assert (blocks.amax((3, 5)) - blocks.amin((3, 5))).max() <= 1
    # Every image gets its own perturbation, yet a linear classifier separates them by class.
    assert len(torch.unique(delta.flatten(1), dim=0)) == n
    features = torch.cat([delta.flatten(1), torch.ones(n, 1)], 1)
    targets = torch.nn.functional.one_hot(data.labels, 10).float()
    weights = torch.linalg.lstsq(features, targets).solution
    assert ((features @ weights).argmax(1) == data.labels).float().mean() == 1.0


def test_ops_changes_one_pixel_per_image_to_a_corner_colour(tiny_set):
    poison = ATTACKS.create("ops")(tiny_set, RunContext())
    changed = (poison.images != tiny_set.images).any(1)  # (N, H, W)
    assert changed.flatten(1).sum(1).max() <= 1
    pairs = search_pixels(tiny_set.images, tiny_set.labels, 10)
    for c, (row, col, colour) in pairs.items():
        members = tiny_set.labels == c
        assert torch.all(poison.images[members][:, :, row, col] == colour)
        assert any(torch.equal(colour, corner) for corner in CORNERS)
    assert len({(r, c, tuple(col.tolist())) for r, c, col in pairs.values()}) == 10, "pairs must be distinct"


def test_ops_search_finds_the_pixel_that_stands_out():
    # Class 0: all images are dark at (3, 7) with little spread; white there scores highest.
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[:20, :, 3, 7] = torch.randint(0, 8, (20, 3), generator=g, dtype=torch.uint8)
    labels = torch.tensor([0] * 20 + [1] * 20)
    row, col, colour = search_pixels(images, labels, 2)[0]
    assert (row, col) == (3, 7) and colour.tolist() == [255, 255, 255]
    # Class 1 may not take the same (position, colour) pair.
    images[20:, :, 3, 7] = images[:20, :, 3, 7]
    pairs = search_pixels(images, labels, 2)
    assert (pairs[1][0], pairs[1][1], pairs[1][2].tolist()) != (3, 7, [255, 255, 255])


def test_ops_score_matches_the_official_formula():
    """mean/std of |colour - pixel| over images x channels, as the official pixel_search."""
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (30, 3, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.zeros(30, dtype=torch.long)
    row, col, colour = search_pixels(images, labels, 1)[0]
    x = images.permute(0, 2, 3, 1).numpy() / 255  # NHWC as in the official code
    best, best_score = None, -1
    for point in range(16):
        for value in range(8):
            c = np.array([value // 4, value // 2 % 2, value % 2])
            d = np.abs(c - x[:, point // 4, point % 4, :])
            if d.mean() / d.std() > best_score:
                best, best_score = (point // 4, point % 4, (c * 255).tolist()), d.mean() / d.std()
    assert (row, col, colour.tolist()) == best


def test_external_checks_count_and_order(tiny_set, tmp_path):
    from bench.config import ConfigError

    images = tiny_set.images.permute(0, 2, 3, 1).numpy()
    short = tmp_path / "short.npz"
    np.savez(short, x_train=images[:10])
    with pytest.raises(ConfigError, match="10 images, but the clean training set has 64"):
        ATTACKS.create("external", {"path": str(short)})(tiny_set, RunContext())
    shuffled = tmp_path / "shuffled.npz"
    np.savez(shuffled, x_train=images[::-1].copy())
    with pytest.raises(ConfigError, match="do not follow the dataset's order"):
        ATTACKS.create("external", {"path": str(shuffled)})(tiny_set, RunContext())
    with pytest.raises(ConfigError, match="external.path: set the poison's path"):
        ATTACKS.create("external")


def test_external_reads_a_png_folder_and_its_budget_is_checked(tiny_set, tmp_path):
    from PIL import Image

    from methods.base import BudgetError

    folder = tmp_path / "pngs"
    folder.mkdir()
    shifted = (tiny_set.images.to(torch.int16) + 12).clamp(0, 255).to(torch.uint8)
    for i, img in enumerate(shifted.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(img).save(folder / f"{i}.png")
    poison = ATTACKS.create("external", {"path": str(folder), "eps": 12 / 255})(tiny_set, RunContext())
    assert torch.equal(poison.images, shifted)
    with pytest.raises(BudgetError, match="linf budget"):
        ATTACKS.create("external", {"path": str(folder), "eps": 8 / 255})(tiny_set, RunContext())


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "fp32-cpu"])
@pytest.mark.parametrize("name", ATTACKS.names())
def test_surrogate_attacks_generate_in_bf16_where_the_device_has_it(name, native, tiny_set, tmp_path, monkeypatch):
    """The attacks with a `bf16` field run their passes under bf16 autocast on native hardware; the
    others, and any attack with `bf16 = false`, stay in fp32 (model-free attacks must not lose precision)."""
    import bench.train

    monkeypatch.setattr(bench.train, "cpu_computes_bf16", lambda: native)
    attack = ATTACKS.create(name, attack_overrides(name, tmp_path, tiny_set))
    seen = []
    generate = attack.generate
    monkeypatch.setattr(attack, "generate", lambda data, ctx: seen.append(torch.is_autocast_enabled("cpu")) or generate(data, ctx))
    attack(tiny_set, RunContext(seed=0))
    wants = getattr(attack.config, "bf16", False)
    assert attack.precision(torch.device("cpu")) == ("bf16" if wants and native else "fp32")
    assert seen == [wants and native]
    if wants:
        fp32 = ATTACKS.create(name, {**attack_overrides(name, tmp_path, tiny_set), "bf16": False})
        assert fp32.precision(torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("name", ["em", "em_classwise"])
def test_em_resumed_after_meeting_its_stop_rule_is_already_done(name, tiny_set, tmp_path, monkeypatch):
    """A generation that met its stop rule and was then interrupted (before its poison was stored)
    ends where it was on the rerun: no further round, the same poison."""
    from methods import bilevel

    attack = ATTACKS.create(name, {**TINY[name], "max_rounds": 3, "stop_accuracy": 0.01})  # met after round 1
    ctx = RunContext(seed=0, work_dir=tmp_path, checkpoint_every_s=0)
    first = attack(tiny_set, ctx)
    saves = []
    monkeypatch.setattr(bilevel.Checkpoint, "save", lambda self, state: saves.append(state))
    again = attack(tiny_set, ctx)
    assert saves == [], "the resumed generation trained another round"
    assert torch.equal(first.images, again.images)


def test_a_checkpoint_without_its_header_or_with_another_layout_is_not_used(tmp_path, caplog):
    import logging

    from methods import bilevel

    ckpt = bilevel.Checkpoint(tmp_path)
    ckpt.save({"round": torch.tensor(3)})
    assert ckpt.load(torch.device("cpu"), ("round",))["round"] == 3
    with caplog.at_level(logging.WARNING, "bench"):
        assert ckpt.load(torch.device("cpu"), ("round", "acc")) is None
    assert "lacks acc" in caplog.text
    data = bytearray(ckpt.path.read_bytes())
    data[64:65] = b" "  # the hash still matches the payload, but the file is not what save wrote
    ckpt.path.write_bytes(bytes(data))
    assert ckpt.load(torch.device("cpu")) is None


def test_every_attack_declares_the_plugin_contract():
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        assert issubclass(cls, Attack) and cls.name == name
        assert isinstance(cls.cacheable, bool) and isinstance(cls.seeded, bool)
        for preset in cls.presets.values():
            ATTACKS.config(name, preset)  # every preset is a valid config


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if issubclass(ATTACKS.get(n).Config, SurrogateConfig)])
def test_model_based_attacks_check_their_surrogate(name):
    config = ATTACKS.get(name).Config
    with pytest.raises(ConfigError, match=r"surrogate: unknown arch 'resnet19'"):
        build_config(config, {"surrogate": "resnet19"}, name)
    with pytest.raises(ConfigError, match=r"surrogate_width: must be >= 0"):
        build_config(config, {"surrogate_width": -1}, name)


def test_the_model_based_attacks_share_one_surrogate_config():
    shared = {n for n in ATTACKS.names() if issubclass(ATTACKS.get(n).Config, SurrogateConfig)}
    assert shared == {"em", "em_classwise", "rem", "tap", "miue", "hypo", "sep"}
    assert all(not hasattr(ATTACKS.get(n).Config, "surrogate") for n in set(ATTACKS.names()) - shared)


def test_a_registry_of_plugins_refuses_a_class_outside_the_contract():
    from bench.registry import Registry

    registry = Registry("attack", "bench.no-such-group", ("methods",), base=Plugin)
    with pytest.raises(ValueError, match="must be a class that subclasses Plugin"):
        registry.register("loose")(type("Loose", (), {"Config": SurrogateConfig}))


@pytest.mark.parametrize("norm,budget,message", [
    ("linf", float("nan"), "finite number >= 0, got nan"),
    ("linf", float("inf"), "finite number >= 0, got inf"),
    ("l2", -1.0, "finite number >= 0, got -1.0"),
    ("linf", 8.0, "linf budget 8 > 1: budgets are in \\[0, 1\\] pixel units"),
    ("l2", 100.0, "l2 budget 100 is more than any two 3x32x32 images can differ"),
    ("l0", 1.5, "l0 budget 1.5 must be a whole number of pixels from 0 to 1024"),
    ("l0", 2000, "from 0 to 1024"),
    ("l1", 1.0, "norm 'l1' is not one of"),
])
def test_budgets_that_claim_nothing_are_refused(tiny_set, norm, budget, message):
    poison = Poison(tiny_set.images.clone(), norm, budget)
    with pytest.raises(BudgetError, match=message):
        check_budget(tiny_set.images, poison)


def test_external_refuses_an_infinite_claim():
    with pytest.raises(ConfigError, match="eps: must be a finite number >= 0, got inf"):
        ATTACKS.config("external", {"path": "p.npz", "eps": "inf"})


@pytest.mark.parametrize("name", ["em", "em_classwise"])
def test_em_official_loader_keeps_the_positive_half_of_the_noise_as_the_official_code(name, tiny_set):
    """dataset.PoisonCIFAR10: float32 image + noise.mul(255).clamp_(0, 255), np.clip, astype(uint8)."""
    from methods.em import publish

    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(tiny_set.images.shape, generator=g) * 2 - 1) * (8 / 255)
    official = publish(tiny_set.images, noise, ATTACKS.config(name, {"official_loader": True}))
    expected = np.clip(tiny_set.images.numpy().astype(np.float32) + np.clip(noise.numpy() * 255, 0, 255), 0, 255)
    assert torch.equal(official.images, torch.from_numpy(expected.astype(np.uint8)))
    assert (official.images >= tiny_set.images).all() and (official.images > tiny_set.images).any()
    full = publish(tiny_set.images, noise, ATTACKS.config(name))
    assert (full.images < tiny_set.images).any(), "by default both signs of the noise are kept"
    assert torch.equal(full.images, apply_delta(tiny_set.images, noise, "linf", 8 / 255))
    check_budget(tiny_set.images, official)


def test_a_field_added_at_its_default_leaves_ids_as_they_were():
    """em's official_loader is an added_field: absent from the config dict (hence the cell id) at its default."""
    from bench.config import as_dict

    assert "official_loader" not in as_dict(ATTACKS.config("em"))
    assert as_dict(ATTACKS.config("em", {"official_loader": True}))["official_loader"] is True
    assert ATTACKS.config("em", as_dict(ATTACKS.config("em"))) == ATTACKS.config("em")


# One round for the attacks whose stop rule decides the rounds (their effort counts one round);
# em_classwise on every image, where its count is exact (on a subset it is about subset_fraction).
ONE_ROUND = {"em": {"max_rounds": 1, "stop_accuracy": 1.0},
             "em_classwise": {"max_rounds": 1, "stop_accuracy": 1.0, "subset_fraction": 1.0}}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_effort_counts_the_model_passes_that_generate_makes(name, tiny_set, tmp_path, monkeypatch):
    """`gradient_evaluations` is what generation does: every forward pass with gradients through any
    model the attack builds (its stem convolution sees each image once per pass), per training image."""
    from torch import nn

    from bench.registry import ARCHS

    attack = ATTACKS.create(name, {**attack_overrides(name, tmp_path, tiny_set), **ONE_ROUND.get(name, {})})
    passes = []
    create = ARCHS.create

    def counting(*args, **kwargs):
        model = create(*args, **kwargs)
        stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        stem.register_forward_hook(lambda m, inputs, out: passes.append(len(inputs[0])) if torch.is_grad_enabled() else None)
        return model

    monkeypatch.setattr(ARCHS, "create", counting)
    attack(tiny_set, RunContext(seed=0))
    effort = attack.effort(len(tiny_set.images))
    if effort is None:
        assert passes == []
        return
    assert sum(passes) / len(tiny_set.images) == pytest.approx(effort["gradient_evaluations"])
    assert effort["per"] == ("round" if name in ONE_ROUND else "poison")
    official = ATTACKS.create(name, {}).effort(50_000)
    assert official["official_share"] == pytest.approx(1.0)
    assert effort["official_share"] == pytest.approx(effort["gradient_evaluations"] / official["gradient_evaluations"])

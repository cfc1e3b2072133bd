"""HYPO and SEP: the attacks built on a clean surrogate (methods/clean_surrogate.py), what each must do,
and that TAP's cached clean model is shared, under the key it always had."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from bench.config import ConfigError
from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import ATTACKS
from methods.clean_surrogate import clean_surrogate, model_key
from methods.sep import class_means, ensemble_epochs
from methods.tap import clean_recipe
from tests.test_attacks import TINY


def test_taps_cache_key_is_the_one_it_had_before_the_clean_surrogate_was_shared(tiny_set):
    # Computed by tap.py's own clean_model at commit 2111029, on this tiny set with TINY's TAP settings.
    config = ATTACKS.config("tap", TINY["tap"])
    assert model_key(tiny_set, config, clean_recipe(config), seed=0) == "ec1ca581d38e7333"


def test_hypo_reads_taps_cached_clean_surrogate_and_makes_it_more_confident(tiny_set, tmp_path):
    cache = tmp_path / "cache"
    ATTACKS.create("tap", {**TINY["tap"], "restarts": 1})(tiny_set, RunContext(seed=0, cache_dir=cache))
    hypo = ATTACKS.create("hypo", {**TINY["hypo"], "steps": 10})
    poison = hypo(tiny_set, RunContext(seed=0, cache_dir=cache))
    assert sorted(p.name for p in (cache / "models").glob("*.pt")) == ["ec1ca581d38e7333.pt"], "one clean model for both"
    # The same model trained afresh gives the same poison: the cached one is what HYPO's settings train.
    assert torch.equal(poison.images, hypo(tiny_set, RunContext(seed=0)).images)
    model, _ = clean_surrogate(hypo.config, tiny_set, RunContext(seed=0, cache_dir=cache), clean_recipe(hypo.config), "test")
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(tiny_set.images.float() / 255), tiny_set.labels)
        poison_loss = F.cross_entropy(model(poison.images.float() / 255), tiny_set.labels)
    assert poison_loss < clean_loss, f"{poison_loss:.4f} vs clean {clean_loss:.4f}"  # descent, not ascent


def test_sep_spaces_its_checkpoints_over_the_run_ending_at_its_last_epoch():
    assert ensemble_epochs(120, 15) == tuple(range(8, 121, 8))  # the official 15 of 120
    assert ensemble_epochs(10, 3) == (3, 6, 10) and ensemble_epochs(4, 4) == (1, 2, 3, 4)
    with pytest.raises(ConfigError, match=r"sep\.models: must be at most surrogate_epochs \(10\)"):
        ATTACKS.create("sep", {"surrogate_epochs": 10, "models": 11})


@pytest.mark.parametrize("variance_reduction", [True, False], ids=["sep-fa-vr", "sep-fa"])
def test_sep_pulls_every_checkpoints_features_toward_the_target_class_means(variance_reduction, tiny_set, tmp_path):
    cache = tmp_path / "cache"
    sep = ATTACKS.create("sep", {**TINY["sep"], "surrogate_epochs": 3, "models": 3, "steps": 6,
                                 "variance_reduction": variance_reduction})
    poison = sep(tiny_set, RunContext(seed=0, cache_dir=cache))
    # The run's final model under its key, and the two earlier checkpoints beside it.
    assert len(list((cache / "models").glob("*.pt"))) == 3
    members = sep.ensemble(tiny_set, RunContext(seed=0, cache_dir=cache))  # read back from the cache
    targets = (tiny_set.labels + 5) % 10
    for member in members:
        means = class_means(member, tiny_set.images, tiny_set.labels, 10)[targets]
        with torch.no_grad():
            clean = (member.features(tiny_set.images.float() / 255) - means).square().sum(1).mean()
            poisoned = (member.features(poison.images.float() / 255) - means).square().sum(1).mean()
        assert poisoned < 0.9 * clean, f"feature distance {poisoned:.4f} vs clean {clean:.4f}"
    again = sep(tiny_set, RunContext(seed=0, cache_dir=cache))  # from the cached checkpoints
    assert torch.equal(poison.images, again.images)


def test_class_means_are_the_mean_features_of_each_class():
    model = torch.nn.Identity()
    model.features = lambda x: x.flatten(1)
    images = torch.tensor([[[[0]]], [[[10]]], [[[20]]], [[[255]]]], dtype=torch.uint8)
    means = class_means(model, images, torch.tensor([0, 0, 2, 2]), 3, batch_size=3)
    assert torch.allclose(means, torch.tensor([[5 / 255], [0.0], [275 / 2 / 255]]))


def test_sep_refuses_a_target_class_with_no_image(tiny_set):
    labels = tiny_set.labels % 5  # classes 5-9, the targets of 0-4, are absent
    data = ImageSet(tiny_set.images, labels, tiny_set.index, 10, 64)
    with pytest.raises(ValueError, match=r"sep: target classes \[5, 6, 7, 8, 9\] have no training image"):
        ATTACKS.create("sep", TINY["sep"])(data, RunContext(seed=0))


@pytest.mark.parametrize("name", ["hypo", "sep"])
def test_a_hundred_classes_of_64x64_images(name):
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (200, 3, 64, 64), generator=g, dtype=torch.uint8), torch.arange(200) % 100,
                    torch.arange(200), 100, 200)
    poison = ATTACKS.create(name, TINY[name])(data, RunContext(seed=0))
    assert poison.images.shape == data.images.shape and not torch.equal(poison.images, data.images)

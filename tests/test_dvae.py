"""D-VAE purification (defenses/dvae.py): config checks, the purified set, determinism, and that it acts."""
import warnings

import pytest
import torch

from bench.config import ConfigError
from bench.registry import DEFENSES

SMALL = {"width": 4, "latent_dim": 8, "epochs": 2, "batch_size": 16, "perturbation_from": 1}


@pytest.mark.parametrize("field,value,message", [
    ("stages", 3, r"defense dvae\.stages: must be 1 or 2, got 3"),
    ("epochs", 0, r"defense dvae\.epochs: must be at least 1, got 0"),
    ("width", 5, r"defense dvae\.width: must be even \(the decoder halves it\), got 5"),
    ("lr", 0, r"defense dvae\.lr: must be positive, got 0"),
    ("kl_targets", [1.0], r"defense dvae\.kl_targets: must be two non-negative numbers"),
    ("perturbation_floor", -1, r"defense dvae\.perturbation_floor: must be non-negative, got -1"),
])
def test_dvae_config_is_checked_with_the_field_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        DEFENSES.create("dvae", {field: value})


def test_dvae_defaults_are_the_official_cifar10_settings():
    cfg = DEFENSES.config("dvae")
    assert (cfg.stages, cfg.epochs, cfg.batch_size, cfg.lr, cfg.grad_clip) == (2, 60, 128, 0.005, 5.0)
    assert (cfg.width, cfg.latent_dim, tuple(cfg.kl_targets), tuple(cfg.kl_weights)) == (64, 256, (1.0, 3.0), (0.01, 0.5))
    assert (cfg.perturbation_floor, cfg.perturbation_from) == (0.002, 11)


def test_dvae_purifies_to_uint8_images_of_the_same_shape_and_changes_them(tiny_set):
    out = DEFENSES.create("dvae", SMALL).prepare(tiny_set.images, tiny_set.labels)
    assert out.dtype == torch.uint8 and out.shape == tiny_set.images.shape
    changed = (out.int() - tiny_set.images.int()).abs().float().mean()
    assert changed > 5, f"mean change {changed} levels: the reconstruction left the images nearly as they were"


def test_dvae_is_deterministic_for_a_seed_and_leaves_the_global_generator_alone(tiny_set):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = DEFENSES.create("dvae", SMALL).prepare(tiny_set.images, tiny_set.labels)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(7)
    b = DEFENSES.create("dvae", SMALL).prepare(tiny_set.images, tiny_set.labels)
    c = DEFENSES.create("dvae", {**SMALL, "seed": 1}).prepare(tiny_set.images, tiny_set.labels)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dvae_one_stage_subtracts_the_perturbation_without_reconstructing(tiny_set):
    one = DEFENSES.create("dvae", {**SMALL, "stages": 1}).prepare(tiny_set.images, tiny_set.labels)
    two = DEFENSES.create("dvae", SMALL).prepare(tiny_set.images, tiny_set.labels)
    assert one.shape == two.shape and not torch.equal(one, two)


def test_dvae_cpu_preset_is_a_valid_shrunk_config():
    cfg = DEFENSES.config("dvae", DEFENSES.get("dvae").presets["cpu"])
    assert cfg.width < 64 and cfg.epochs < 60 and cfg.stages == 2


def test_dvae_on_fewer_images_than_a_batch_says_it_trains_no_step_and_still_purifies(tiny_set, caplog):
    """With fewer images than one batch a stage has nothing to train on: it says so once per stage, and
    the set still comes back whole (purified by the untrained VAE), with no scheduler warning."""
    few = {**SMALL, "batch_size": len(tiny_set.images) + 1}
    with caplog.at_level("WARNING", logger="defenses.dvae"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's "lr_scheduler.step() before optimizer.step()" would raise here
            out = DEFENSES.create("dvae", few).prepare(tiny_set.images, tiny_set.labels)
    assert out.dtype == torch.uint8 and out.shape == tiny_set.images.shape
    said = [r.getMessage() for r in caplog.records if "trains no step" in r.getMessage()]
    assert len(said) == 2 and "stage 1" in said[0] and "stage 2" in said[1], said

"""The SimCLR victim (bench/contrastive.py): its views match torchvision's transforms, its loss the
formula, its pre-training freezes the encoder the probe reads, and it runs as a grid's arch."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from bench import contrastive
from bench.config import ConfigError
from bench.contrastive import SimCLRSettings, SimCLRViews, nt_xent, resized_crop
from bench.data import ImageSet
from bench.registry import ARCHS
from bench.train import make_recipe, train_model

SMALL = {"encoder": "tiny_cnn", "width": 8, "epochs": 2, "batch_size": 32}


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ours, theirs, factor", [
    (contrastive.adjust_brightness, TF.adjust_brightness, 1.3),
    (contrastive.adjust_contrast, TF.adjust_contrast, 0.7),
    (contrastive.adjust_saturation, TF.adjust_saturation, 1.4),
    (contrastive.adjust_hue, TF.adjust_hue, 0.08),
    (contrastive.adjust_hue, TF.adjust_hue, -0.1),
])
def test_each_colour_change_equals_torchvision_at_one_factor(ours, theirs, factor):
    x = images()
    x[0] = 0.5  # a grey image: no hue to turn
    expected = torch.stack([theirs(img, factor) for img in x])
    got = ours(x, torch.full((len(x),), factor))
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


def test_colour_factors_are_per_image():
    x = images(2).expand(2, -1, -1, -1).clone()
    got = contrastive.adjust_hue(x, torch.tensor([0.0, 0.1]))
    torch.testing.assert_close(got[0], x[0], atol=2e-6, rtol=0)  # a zero turn leaves the image
    torch.testing.assert_close(got[1], TF.adjust_hue(x[1], 0.1), atol=2e-6, rtol=0)


def test_grayscale_equals_torchvision():
    x = images()
    torch.testing.assert_close(contrastive.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)


def test_resized_crop_of_the_whole_image_is_the_image_and_of_a_box_its_resize():
    x = images(2)
    whole = torch.tensor([[0, 0, 16, 16], [0, 0, 16, 16]])
    torch.testing.assert_close(resized_crop(x, whole), x, atol=1e-6, rtol=0)
    box = torch.tensor([[2, 5, 8, 8], [4, 0, 12, 10]])
    got = resized_crop(x, box)
    for i, (top, left, h, w) in enumerate(box.tolist()):
        expected = F.interpolate(x[i : i + 1, :, top : top + h, left : left + w], size=(16, 16), mode="bilinear",
                                 align_corners=False)[0]
        # Inside, the same bilinear weights; on the outermost rows and columns our sampling may read
        # the pixels just outside the box where interpolate repeats the box's edge (module docstring).
        torch.testing.assert_close(got[i, :, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_crop_boxes_follow_random_resized_crop_rule():
    views = SimCLRViews(SimCLRSettings(), torch.Generator().manual_seed(0))
    top, left, h, w = views.crop_boxes(4000, 32, 32).unbind(1)
    assert ((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32)).all()
    area = h * w / 1024
    # Rounding each side moves the area a little beyond the drawn fraction; 0.2 to 1 otherwise.
    assert area.min() >= 0.15 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 0.6 and ratio.max() <= 1.6
    assert area.std() > 0.1 and len(set(zip(top.tolist(), left.tolist()))) > 100  # drawn per image


def test_views_differ_per_image_and_repeat_with_the_seed():
    x = images(1).expand(16, -1, -1, -1).clone()
    a = SimCLRViews(SimCLRSettings(), torch.Generator().manual_seed(1))(x)
    b = SimCLRViews(SimCLRSettings(), torch.Generator().manual_seed(1))(x)
    torch.testing.assert_close(a, b)
    distinct = {tuple(v.flatten()[:50].tolist()) for v in a}
    assert len(distinct) == 16
    assert a.min() >= 0 and a.max() <= 1


def test_nt_xent_is_the_simclr_loss():
    g = torch.Generator().manual_seed(0)
    z1, z2 = F.normalize(torch.randn(5, 8, generator=g), dim=1), F.normalize(torch.randn(5, 8, generator=g), dim=1)
    z, t, n = torch.cat([z1, z2]), 0.5, 5
    terms = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = sum(math.exp(z[i] @ z[k] / t) for k in range(2 * n) if k != i)
        terms.append(-math.log(math.exp(z[i] @ z[positive] / t) / others))
    expected = (t / 0.07) * sum(terms) / len(terms)
    assert nt_xent(z1, z2, t).item() == pytest.approx(expected, rel=1e-5)
    # Views that agree cost less than views that do not.
    assert nt_xent(z1, z1, t) < nt_xent(z1, z2, t)


def test_pretraining_freezes_the_encoder_the_probe_reads():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(96) % 4
    model = ARCHS.create("simclr", SMALL, num_classes=4)
    before = {k: v.clone() for k, v in model.body.state_dict().items()}
    info = model.pretrain(x, seed=0)
    assert len(info["loss"]) == 2 and all(math.isfinite(v) for v in info["loss"])
    assert any(not torch.equal(v, before[k]) for k, v in model.body.state_dict().items()), "pre-training changed nothing"
    encoder = {k: v.clone() for k, v in model.body.state_dict().items()}
    head = model.classifier.weight.clone()
    data = ImageSet(x, labels, torch.arange(96), 4, 96)
    train_model(model, data, data, make_recipe({"preset": "simclr_probe", "epochs": 2, "batch_size": 32}))
    for key, value in model.body.state_dict().items():
        assert torch.equal(value, encoder[key]), f"the probe changed the encoder's {key}"
    assert not torch.equal(model.classifier.weight, head), "the probe did not train the head"


def test_the_probe_trains_on_clean_images_unless_told_otherwise():
    clean = ImageSet(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4) % 2, torch.arange(4), 2, 4)
    poisoned = clean.with_images(torch.ones(4, 3, 8, 8, dtype=torch.uint8))
    assert ARCHS.create("simclr", SMALL, num_classes=2).probe_set(clean, poisoned) is clean
    assert ARCHS.create("simclr", {**SMALL, "probe_data": "poisoned"}, num_classes=2).probe_set(clean, poisoned) is poisoned


@pytest.mark.parametrize("overrides, message", [
    ({"encoder": "simclr"}, "simclr.encoder"),
    ({"encoder": "no_such_arch"}, "simclr.encoder"),
    ({"probe_data": "test"}, "simclr.probe_data"),
    ({"temperature": 0}, "simclr.temperature"),
    ({"epochs": 0}, "simclr.epochs"),
])
def test_bad_settings_name_their_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ARCHS.create("simclr", {**SMALL, **overrides}, num_classes=10)


def test_a_batch_larger_than_the_set_is_refused_before_training():
    model = ARCHS.create("simclr", {**SMALL, "batch_size": 512}, num_classes=10)
    with pytest.raises(ValueError, match="simclr.batch_size 512"):
        model.pretrain(torch.zeros(100, 3, 16, 16, dtype=torch.uint8), seed=0)


def test_a_grid_runs_a_simclr_victim_and_records_its_pretraining(tiny_npz, tmp_path):
    from bench.executors import run_grid
    from bench.grid import parse_grid
    from bench.store import Store

    grid = parse_grid({
        "attacks": ["random_noise"], "defenses": ["none"], "archs": ["simclr"],
        "recipe": {"preset": "simclr_probe", "epochs": 2},
        "data": {"name": str(tiny_npz)}, "config": {"simclr": SMALL},
    }, "simclr_tiny")
    store = Store(tmp_path)
    counts = run_grid(grid, store, torch.device("cpu"), progress=False)
    assert counts["failed"] == 0, [r.error for r in store.records() if r.status == "failed"]
    (record,) = store.records()
    assert record.pretraining["epochs"] == 2 and len(record.pretraining["loss"]) == 2
    assert record.pretraining["probe_data"] == "clean"
    assert record.timings["pretrain_s"] > 0 and len(record.history) == 2


@pytest.mark.slow
def test_simclr_pretraining_on_real_images_gives_features_a_linear_probe_reads(cifar10_npz):
    """1,000 CIFAR-10 images, a width-8 tiny_cnn encoder, 8 epochs of SimCLR, a 10-epoch probe.
    Measured (2-core AMD EPYC, fp32): probe 18.0% and 21.6% (seeds 0, 1) after pre-training, 10.0%
    both on the frozen random encoder; chance is 10%."""
    from bench.data import DataSpec, load_dataset

    data = load_dataset(DataSpec(name=str(cifar10_npz), train_size=1000, test_size=500))
    probe = make_recipe({"preset": "simclr_probe", "epochs": 10})
    accuracy = {}
    for pretrain_epochs in (0, 8):
        torch.manual_seed(0)
        model = ARCHS.create("simclr", {"encoder": "tiny_cnn", "width": 8, "epochs": max(pretrain_epochs, 1),
                                        "batch_size": 128}, num_classes=10)
        if pretrain_epochs:
            model.pretrain(data.train.images, seed=0)
        else:
            model.freeze_encoder()
        accuracy[pretrain_epochs] = train_model(model, data.train, data.test, probe, seed=0).test_acc_last
    print(f"linear probe: random encoder {accuracy[0]:.1%}, after SimCLR {accuracy[8]:.1%}")
    assert accuracy[8] >= accuracy[0] + 0.05, accuracy


def test_the_clean_probe_set_goes_through_the_defense_test_time_stages(tiny_npz, tmp_path, monkeypatch):
    """Under a defense that changes the test images (grayscale of both sets), the probe trains on
    clean images in the same space, not on raw colour images it is never tested on."""
    from bench import runner
    from bench.data import DataSpec, load_dataset
    from bench.executors import run_grid
    from bench.grid import parse_grid
    from bench.store import Store
    from defenses.base import create_defense

    seen = {}
    original = runner.train_model

    def recording(model, train, test, recipe, **kwargs):
        seen["train"], seen["test"] = train.images.clone(), test.images.clone()
        return original(model, train, test, recipe, **kwargs)

    monkeypatch.setattr(runner, "train_model", recording)
    grid = parse_grid({
        "attacks": ["clean"], "defenses": ["iss_gray"], "archs": ["simclr"],
        "recipe": {"preset": "simclr_probe", "epochs": 1}, "data": {"name": str(tiny_npz)},
        "config": {"simclr": {**SMALL, "epochs": 1}, "iss_gray": {"both_train_test": True}},
    }, "simclr_gray")
    assert run_grid(grid, Store(tmp_path), torch.device("cpu"), progress=False)["failed"] == 0
    data = load_dataset(DataSpec(name=str(tiny_npz)))
    gray = create_defense("iss_gray", {"both_train_test": True})
    assert torch.equal(seen["test"], gray.prepare_test(data.test.images))
    assert torch.equal(seen["train"], gray.prepare_test(data.train.images))

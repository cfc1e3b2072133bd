import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bench.config import ConfigError
from bench.grid import parse_grid
from bench.registry import DEFENSES
from defenses.base import ComposedDefense, Defense, create_defense


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(128, 10))


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_keeps_dtype_and_shape(name, tiny_set):
    torch.manual_seed(0)
    defense = DEFENSES.create(name)
    out = defense.prepare(tiny_set.images, tiny_set.labels)
    assert out.dtype == torch.uint8 and out.shape == tiny_set.images.shape
    test = defense.prepare_test(tiny_set.images)
    assert test.dtype == torch.uint8 and test.shape == tiny_set.images.shape
    x = tiny_set.images.float() / 255
    x_aug, y = defense.augment(x, tiny_set.labels)
    assert x_aug.shape == x.shape and len(y) == len(tiny_set.labels)
    assert x_aug.min() >= 0 and x_aug.max() <= 1
    if y.ndim == 2:  # soft labels are distributions over the classes
        assert y.shape == (len(x), 10) and torch.allclose(y.sum(1), torch.ones(len(x)))
    if defense.adversary is not None:  # adversary defenses run one step on a real model
        model = tiny_model().train()
        x_adv = defense.adversary(model, x, tiny_set.labels)
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
        assert x_adv.min() >= 0 and x_adv.max() <= 1 and not torch.equal(x_adv, x)
        assert model.training, "the adversary must leave the model in the mode it found it in"
        assert all(p.grad is None for p in model.parameters()), "the adversary must not leave parameter gradients"
    assert defense.paper or name == "none", "every defense names its paper"


@pytest.mark.parametrize("quality", [10, 50, 90])
def test_jpeg_matches_pil_at_the_same_quality(quality):
    g = torch.Generator().manual_seed(0)
    # Smooth images, so encoder differences are not drowned by noise.
    base = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=g), size=32, mode="bilinear")
    images = (base * 255).round().to(torch.uint8)
    ours = DEFENSES.create("jpeg", {"quality": quality}).prepare(images, torch.zeros(8, dtype=torch.long))
    for i in range(8):
        buffer = io.BytesIO()
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        pil = torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1)
        assert (ours[i].float() - pil.float()).abs().mean() < 1.0  # same codec up to decoder rounding
    assert not torch.equal(ours, images)


def test_jpeg_quality_is_checked():
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match=r"defense jpeg\.quality: must be in 1\.\.100, got 101"):
        DEFENSES.create("jpeg", {"quality": 101})


def test_iss_grayscale_converts_the_training_set_only_unless_both_train_test(tiny_set):
    images = tiny_set.images
    default = DEFENSES.create("iss_gray")
    train = default.prepare(images, tiny_set.labels)
    assert torch.equal(train[:, 0], train[:, 1]) and torch.equal(train[:, 1], train[:, 2])
    assert not torch.equal(train, images)
    # ISS's default: the test set is left in colour, and the runner has no test stage to run or cache.
    assert torch.equal(default.prepare_test(images), images) and default.stages("prepare_test") == []
    both = DEFENSES.create("iss_gray", {"both_train_test": True})  # ISS's --ISS_both_train_test
    assert torch.equal(both.prepare_test(images), train) and both.stages("prepare_test") == [both]
    assert torch.equal(both.prepare(images, tiny_set.labels), train)


def test_iss_grayscale_grey_levels_are_pils_on_every_rgb_colour():
    levels = torch.arange(256 ** 3)
    colours = torch.stack([levels >> 16, levels >> 8 & 255, levels & 255]).to(torch.uint8).view(1, 3, 4096, 4096)
    pil = np.asarray(Image.fromarray(colours[0].permute(1, 2, 0).numpy()).convert("L"))
    assert np.array_equal(DEFENSES.create("iss_gray").prepare(colours, None)[0, 1].numpy(), pil)


def test_iss_grayscale_grey_levels_are_pils_exactly_on_real_cifar10(cifar10_npz):
    """The official transforms.Grayscale(3) on PIL images is PIL's convert("L"), which rounds; tensor
    rgb_to_grayscale truncates and is one level low on about half the pixels."""
    from torchvision import transforms

    images = np.load(cifar10_npz)["x_train"][:10000]
    ours = DEFENSES.create("iss_gray").prepare(torch.from_numpy(images).permute(0, 3, 1, 2), None)
    pil = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in images])
    assert np.array_equal(ours[:, 0].numpy(), pil)
    assert torch.equal(ours[:, 0], ours[:, 1]) and torch.equal(ours[:, 1], ours[:, 2])
    official = np.stack([np.asarray(transforms.Grayscale(3)(Image.fromarray(image))) for image in images[:500]])
    assert np.array_equal(ours[:500].permute(0, 2, 3, 1).numpy(), official)


@pytest.mark.parametrize("bits", [1, 2, 5])
def test_bit_depth_reduction_leaves_at_most_two_to_the_bits_levels(bits, tiny_set):
    out = DEFENSES.create("bdr", {"bits": bits}).prepare(tiny_set.images, tiny_set.labels)
    assert len(out.unique()) <= 2 ** bits
    assert (out.int() <= tiny_set.images.int()).all() and (tiny_set.images.int() - out.int()).max() < 2 ** (8 - bits)


def test_gaussian_smoothing_blurs_and_apbench_default_is_nearly_identity(tiny_set):
    images = tiny_set.images
    assert torch.equal(DEFENSES.create("gaussian").prepare(images, tiny_set.labels), images)  # sigma 0.1: exp(-50) weights
    blurred = DEFENSES.create("gaussian", {"sigma": 1.0}).prepare(images, tiny_set.labels).float()
    # Random pixels are independent, so smoothing must shrink the pixel variance.
    assert blurred.std() < 0.8 * images.float().std()


@pytest.mark.parametrize("size", [8, 16])
def test_cutout_zeroes_one_hole_of_the_configured_size(size):
    torch.manual_seed(0)
    x = torch.rand(256, 3, 32, 32) * 0.9 + 0.1  # no zero pixels before cutout
    out, y = DEFENSES.create("cutout", {"size": size}).augment(x, torch.arange(256) % 10)
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 1], zero[:, 2])  # every channel
    holes = zero[:, 0]
    rows, cols = holes.any(2).sum(1), holes.any(1).sum(1)
    assert ((holes.sum((1, 2)) == rows * cols) & (rows <= size) & (cols <= size) & (rows >= 1)).all()  # one clipped box
    inside = (rows == size) & (cols == size)
    assert inside.sum() > 20, "holes whose centre is far enough from the border are exactly size x size"
    assert torch.equal(out[~zero], x[~zero]) and torch.equal(y, torch.arange(256) % 10)


def _mixed_batch():
    # Image i is constant at value i / 10 with label i, so each output pixel says which images it came from.
    n = 8
    x = (torch.arange(n).float() / 10 + 0.05).view(n, 1, 1, 1).expand(n, 3, 32, 32).clone()
    return x, torch.arange(n)


def _check_mix(out, soft, x, y):
    """Mixed images and soft labels agree: each output is (1 - w) * own + w * partner, w = the partner's label share.

    Returns each image's own share and whether its partner is another image."""
    assert soft.shape == (8, 10) and torch.allclose(soft.sum(1), torch.ones(8)) and (soft >= 0).all()
    own = soft[torch.arange(8), y]
    mixed = own < 1
    for i in range(8):
        j = int((soft[i] * (torch.arange(10) != i)).argmax()) if mixed[i] else i
        assert torch.allclose(out[i], own[i] * x[i] + (1 - own[i]) * x[j], atol=1e-5)
    return own, mixed


@pytest.mark.parametrize("seed", range(3))
def test_mixup_default_has_one_weight_per_batch_as_the_paper(seed):
    torch.manual_seed(seed)
    x, y = _mixed_batch()
    own, mixed = _check_mix(*DEFENSES.create("mixup").augment(x, y), x, y)
    assert mixed.all() and 0 < own.min() < 1  # Beta(1, 1) almost surely mixes
    assert torch.allclose(own, own[0].expand(8)), "Zhang et al.'s code: one lambda for the whole batch"


def test_mixup_apbench_preset_has_one_weight_and_partner_per_image_as_kornia():
    mixup = DEFENSES.create("mixup", {"preset": "apbench"})
    assert mixup.config.per_image and mixup.config.alpha == 1.0
    shares, selves = [], 0
    for seed in range(200):
        torch.manual_seed(seed)
        x, y = _mixed_batch()
        own, mixed = _check_mix(*mixup.augment(x, y), x, y)
        if mixed.sum() >= 2:
            assert len(own[mixed].unique()) == int(mixed.sum()), "RandomMixUpV2: one lambda per image"
        shares += (1 - own[mixed]).tolist()
        selves += int((~mixed).sum())
    shares = torch.tensor(shares)
    # lambda ~ U(0, 1): mean 1/2, variance 1/12; a random permutation leaves 1/8 of the images alone.
    assert abs(shares.mean() - 0.5) < 0.02 and abs(shares.var() - 1 / 12) < 0.006
    assert 0.09 < selves / 1600 < 0.16


def _pasted(out, x):
    """(n, h, w) bool: where each output image is no longer its own (constant images, so any partner shows)."""
    return (out != x).all(1)


def test_cutmix_labels_are_distributions_matching_the_pasted_area():
    mixed = 0
    for seed in range(20):
        torch.manual_seed(seed)
        x, y = _mixed_batch()
        out, soft = DEFENSES.create("cutmix").augment(x, y)
        assert soft.shape == (8, 10) and torch.allclose(soft.sum(1), torch.ones(8)) and (soft >= 0).all()
        own = (out == x).all(1).float().mean((1, 2))  # fraction of each image's pixels still its own
        assert torch.allclose(soft[torch.arange(8), y], own, atol=1e-6)
        mixed += bool((own < 1).any())
        boxes = _pasted(out, x)
        assert (boxes == boxes[0]).all() or not boxes[0].any(), "Yun et al.'s code: one box for the whole batch"
    assert 3 <= mixed <= 17, "with p = 0.5 about half the batches are mixed"


def test_cutmix_apbench_preset_pastes_a_box_of_its_own_size_per_image_every_batch():
    cutmix = DEFENSES.create("cutmix", {"preset": "apbench"})
    assert cutmix.config.per_image and cutmix.config.p == 1.0
    sides = []
    for seed in range(50):
        torch.manual_seed(seed)
        x, y = _mixed_batch()
        out, soft = cutmix.augment(x, y)
        assert soft.shape == (8, 10) and torch.allclose(soft.sum(1), torch.ones(8)) and (soft >= 0).all()
        pasted = _pasted(out, x)
        own = 1 - pasted.float().mean((1, 2))
        assert torch.allclose(soft[torch.arange(8), y], own, atol=1e-6)  # labels weighted by the pasted area
        rows, cols = pasted.any(2).sum(1), pasted.any(1).sum(1)
        has = rows > 0
        assert has.sum() >= 4, "p = 1: every batch is mixed, most images with another image"
        assert (pasted.sum((1, 2)) == rows * cols).all()  # each a single box
        assert not pasted[:, -1].any() and not pasted[:, :, -1].any()  # kornia keeps boxes off the last row and column
        assert torch.equal(rows[has], cols[has])  # square on a square image: side floor(sqrt(1 - b) * 32)
        assert len(rows[has].unique()) >= 2, "RandomCutMixV2: a box size per image"
        sides += rows[has].tolist()
    sides = torch.tensor(sides).float()
    # side = floor(sqrt(1 - b) * 32), b ~ U(0, 1): mean of sqrt(U) * 32 is 21.3, less the floor's ~0.5.
    assert 19.5 < sides.mean() < 22.0


def test_pgd_adversary_stays_within_eps_and_raises_the_loss():
    torch.manual_seed(0)
    x, y = torch.rand(32, 3, 32, 32), torch.arange(32) % 10
    # A linear model, where an L-inf step of eps can move each logit by up to eps * ||w||_1.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).train()
    eps = 8 / 255
    at = DEFENSES.create("at", {"eps": eps, "steps": 10})
    x_adv = at.adversary(model, x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    with torch.no_grad():
        clean = nn.functional.cross_entropy(model(x), y)
        adv = nn.functional.cross_entropy(model(x_adv), y)
        noise = nn.functional.cross_entropy(model((x + (torch.rand_like(x) * 2 - 1) * eps).clamp(0, 1)), y)
    assert adv > clean + 0.5 and adv > noise + 0.5


def test_at_config_is_checked_and_has_a_cpu_preset():
    with pytest.raises(ConfigError, match=r"defense at\.steps: must be at least 1, got 0"):
        DEFENSES.create("at", {"steps": 0})
    with pytest.raises(ConfigError, match=r"defense at\.eps: must be in \(0, 1\], got 0"):
        DEFENSES.create("at", {"eps": 0})
    assert DEFENSES.create("at", {"preset": "cpu_smoke"}).config.steps == 2


def test_ueraser_trains_on_the_max_loss_copy(monkeypatch):
    torch.manual_seed(0)
    ueraser = DEFENSES.create("ueraser", {"repeats": 3})
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6)
    copies = iter([torch.full_like(x, v) for v in (0.2, 0.5, 0.8)])
    monkeypatch.setattr(ueraser, "erase", lambda batch: next(copies))
    # Per image a different copy is the worst: image i's loss is highest on copy i % 3.
    losses = torch.tensor([[1.0 if i % 3 == k else 0.0 for i in range(6)] for k in range(3)])
    calls = iter(losses)
    monkeypatch.setattr(ueraser, "_loss", lambda model, batch, labels: next(calls))
    out = ueraser.adversary(None, x, y)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([0.2, 0.5, 0.8, 0.2, 0.5, 0.8]))


@pytest.mark.parametrize("augment", ["apbench", "torchvision"])
def test_ueraser_augmentation_is_strong_and_per_image(augment):
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    out = DEFENSES.create("ueraser", {"augment": augment}).erase(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - x).abs().mean((1, 2, 3))
    assert (changed > 0.02).float().mean() > 0.5 and changed.std() > 0.01  # most images change, by different amounts


def _plasma_only_of(name, **config):
    """A UEraser whose channel shuffle is off and whose TrivialAugment is the identity."""
    ueraser = DEFENSES.create(name, {"shuffle_p": 0.0, **config})
    ueraser.trivial = lambda batch: batch
    return ueraser


@pytest.mark.parametrize("augment", ["apbench", "torchvision"])
def test_ueraser_applies_both_plasma_steps_to_every_image_as_apbench_since_ca7e688(augment):
    torch.manual_seed(0)
    _plasma_only = lambda name, **config: _plasma_only_of(name, augment=augment, **config)
    unchanged = lambda out, x: (out == x).flatten(1).all(1).sum().item()
    # Brightness alone: a mid-grey image moves wherever the brightness map is not zero.
    grey = torch.full((64, 3, 32, 32), 0.5)
    assert unchanged(_plasma_only("ueraser", contrast_p=0.0).erase(grey), grey) == 0
    # Contrast alone: a checkerboard of 0.25 and 0.75 is stretched or squeezed about 0.5.
    board = (torch.arange(32).view(1, 32) + torch.arange(32).view(32, 1)) % 2 * 0.5 + 0.25
    board = board.expand(64, 3, 32, 32).clone()
    assert unchanged(_plasma_only("ueraser", brightness_p=0.0).erase(board), board) == 0
    # APBench's first commits drew each step with p 0.5: about half the images kept their pixels.
    first = unchanged(_plasma_only("ueraser", brightness_p=0.5, contrast_p=0.0).erase(grey), grey)
    assert 16 <= first <= 48


def test_ueraser_jpeg_compresses_each_copy_at_one_random_quality_before_the_augmentations(monkeypatch):
    import defenses.ueraser as module
    from defenses.basic import jpeg_compress

    calls, seen = [], []
    monkeypatch.setattr(module, "jpeg_compress",
                        lambda images, quality: calls.append((quality, len(images))) or jpeg_compress(images, quality))
    # The augmentations after the JPEG, replaced by a recorder of what they would receive.
    monkeypatch.setattr(module.UEraser, "erase", lambda self, batch: seen.append(batch) or batch)
    ueraser = DEFENSES.create("ueraser_jpeg")
    assert (ueraser.config.brightness_p, ueraser.config.contrast_p) == (0.8, 0.8)  # UEraser_jpeg's plasma steps
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=32, mode="bilinear")
    x = (smooth * 255).round() / 255
    for _ in range(2000):
        ueraser.erase(x)
    qualities = [q for q, n in calls]
    assert all(n == 4 for _, n in calls) and len(calls) == 2000  # one quality per copy of the batch
    assert set(qualities) == set(range(10, 100))  # randrange(10, 100): 10..99, each reached in 2000 draws
    # What the augmentations receive is the JPEG of the batch at the drawn quality.
    pixels = (x * 255).round().to(torch.uint8)
    assert torch.equal(seen[-1], jpeg_compress(pixels, calls[-1][0]).float() / 255)
    assert not torch.equal(seen[-1], x)


class _Recorder(Defense):
    """Appends its name to a shared log at every point, so a composition's order can be read back."""

    log: list = []

    def prepare(self, images, labels):
        self.log.append(("prepare", self.name))
        return images + 1

    def prepare_test(self, images):
        self.log.append(("prepare_test", self.name))
        return images

    def augment(self, x, y):
        self.log.append(("augment", self.name))
        return x * 2, y


def _recorder(name, adversary=False):
    cls = type(name, (_Recorder,), {"name": name})
    if adversary:
        cls.adversary = lambda self, model, x, y: x
    return cls(None)


def test_composed_defense_applies_stages_in_the_documented_order():
    _Recorder.log = []
    a, b, c = _recorder("a"), _recorder("b"), _recorder("c", adversary=True)
    composed = ComposedDefense([b, c, a])
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert torch.equal(composed.prepare(images, torch.zeros(2)), images + 3)
    composed.prepare_test(images)
    x, _ = composed.augment(torch.ones(2), torch.zeros(2))
    assert torch.equal(x, torch.full((2,), 8.0))
    assert _Recorder.log == [("prepare", "b"), ("prepare", "c"), ("prepare", "a"),
                             ("prepare_test", "b"), ("prepare_test", "c"), ("prepare_test", "a"),
                             ("augment", "b"), ("augment", "c"), ("augment", "a")]
    assert composed.adversary.__self__ is c and composed.name == "b+c+a"


def test_composed_real_defenses_run_prepare_then_augment(tiny_set):
    torch.manual_seed(0)
    composed = create_defense("iss_gray+bdr", {"bdr": {"bits": 1}})
    out = composed.prepare(tiny_set.images, tiny_set.labels)
    gray = DEFENSES.create("iss_gray").prepare(tiny_set.images, tiny_set.labels)
    assert torch.equal(out, DEFENSES.create("bdr", {"bits": 1}).prepare(gray, tiny_set.labels))  # gray, then BDR
    assert composed.stages("prepare_test") == []  # ISS grayscale converts the training set only
    both = create_defense("iss_gray+bdr", {"iss_gray": {"both_train_test": True}})
    assert [s.name for s in both.stages("prepare_test")] == ["iss_gray"]
    jc = create_defense("jpeg+cutout", {"cutout": {"size": 8}})
    assert [s.name for s in jc.stages("prepare")] == ["jpeg"] and [s.name for s in jc.stages("augment")] == ["cutout"]
    assert jc.stages("adversary") == [] and jc.adversary is None
    assert create_defense("iss_gray+at").adversary is not None


@pytest.mark.parametrize("name,message", [
    ("at+ueraser", r"defense at\+ueraser: at most one adversary per composition, got at, ueraser"),
    ("jpeg+jpeg", r"defense jpeg\+jpeg: 'jpeg' appears twice"),
    ("mixup+cutmix", r"at most one label-mixing defense per composition, got mixup, cutmix"),
    ("none+cutout", r"'none' cannot be composed"),
    ("jpeg+cutuot", r"unknown defense 'cutuot' \(did you mean 'cutout'\?\)"),
])
def test_incompatible_compositions_are_config_errors(name, message):
    with pytest.raises(ConfigError, match=message):
        create_defense(name)
    with pytest.raises(ConfigError, match=message):  # and the grid says so before any work
        parse_grid({"attacks": ["clean"], "defenses": ["none", name], "archs": ["tiny_cnn"]}, "g")


def test_grids_compose_defenses_with_per_part_overrides_and_stable_ids():
    base = {"attacks": ["clean"], "archs": ["tiny_cnn"], "recipe": "cpu_smoke"}
    plain = parse_grid({**base, "defenses": ["none", "jpeg", "cutout"]}, "g").cells()
    grid = parse_grid({**base, "defenses": ["none", "jpeg", "jpeg+cutout", "iss_gray+at"],
                       "config": {"cutout": {"size": 8}, "at": {"steps": 2}}}, "g")
    cells = {c.defense: c for c in grid.cells()}
    assert cells["jpeg+cutout"].defense_config == {"jpeg": {"quality": 10}, "cutout": {"size": 8}}
    assert cells["iss_gray+at"].defense_config["at"]["steps"] == 2
    # Adding compositions does not move the ids of the plain cells.
    assert {c.cell_id for c in plain if c.defense in ("none", "jpeg")} == {cells["none"].cell_id, cells["jpeg"].cell_id}
    defense = create_defense("jpeg+cutout", cells["jpeg+cutout"].defense_config)
    assert defense.parts[1].config.size == 8
    with pytest.raises(ConfigError, match=r"defense cutout\.size: must be at least 1 pixel, got 0"):
        parse_grid({**base, "defenses": ["jpeg+cutout"], "config": {"cutout": {"size": 0}}}, "g")


@pytest.mark.parametrize("name,field,value,message", [
    ("bdr", "bits", 9, r"defense bdr\.bits: must be in 1\.\.8, got 9"),
    ("gaussian", "kernel_size", 4, r"defense gaussian\.kernel_size: must be an odd whole number >= 1, got 4"),
    ("gaussian", "sigma", 0, r"defense gaussian\.sigma: must be positive, got 0"),
    ("mixup", "alpha", 0, r"defense mixup\.alpha: must be positive, got 0"),
    ("cutmix", "p", 1.5, r"defense cutmix\.p: must be a probability in \[0, 1\], got 1\.5"),
    ("ueraser", "repeats", 0, r"defense ueraser\.repeats: must be at least 1, got 0"),
    ("ueraser", "augment", "kornia", r"defense ueraser\.augment: must be one of apbench, torchvision, got 'kornia'"),
    ("ueraser_jpeg", "jpeg_quality", [5, 101], r"defense ueraser_jpeg\.jpeg_quality: must be a range \(low, high\) "
                                              r"with 1 <= low <= high <= 100, got \(5, 101\)"),
    ("iss_jpeg", "quality", 0, r"defense iss_jpeg\.quality: must be in 1\.\.100, got 0"),
    ("orthogonal_projection", "epochs", 0, r"defense orthogonal_projection\.epochs: must be at least 1, got 0"),
    ("orthogonal_projection", "lr", -0.1, r"defense orthogonal_projection\.lr: must be positive, got -0\.1"),
    ("early_stop", "val_size", 0, r"defense early_stop\.val_size: must be at least 1, got 0"),
])
def test_defense_configs_are_checked_with_the_field_named(name, field, value, message):
    with pytest.raises(ConfigError, match=message):
        DEFENSES.create(name, {field: value})


def test_every_defense_declares_the_plugin_contract():
    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        assert issubclass(cls, Defense) and cls.name == name
        for preset in cls.presets.values():
            DEFENSES.config(name, preset)  # every preset is a valid config


# Cell ids computed by the code of 771b541, before these defenses followed the anchors' code.
IDS_BEFORE = {"mixup": "488410e63061215c", "cutmix": "2b1d6e64ada08da9", "cutout": "71dec79ed57257f0",
              "jpeg+cutmix": "49328833fa782991", "ueraser": "3f600baf98ce1584", "iss_gray": "c48f3e4784b3757b"}


def test_only_defenses_whose_default_changed_get_new_cell_ids():
    grid = {"attacks": ["clean"], "defenses": list(IDS_BEFORE), "archs": ["tiny_cnn"], "seeds": [0],
            "recipe": "cpu_smoke", "data": {"name": "cifar10", "train_size": 100}}
    ids = {c.defense: c.cell_id for c in parse_grid(grid, "g").cells()}
    kept = ("mixup", "cutmix", "cutout", "jpeg+cutmix")  # same behaviour; the per-image option is left out of the dict
    assert {d: ids[d] for d in kept} == {d: IDS_BEFORE[d] for d in kept}
    assert ids["ueraser"] != IDS_BEFORE["ueraser"] and ids["iss_gray"] != IDS_BEFORE["iss_gray"]  # new semantics
    # The old records ran octave-noise plasma and torchvision's TrivialAugmentWide at APBench's first-commit
    # probabilities; `augment` is hashed in every UEraser config, so no config of today is served them.
    first = parse_grid({**grid, "defenses": ["ueraser"], "config": {"ueraser": {
        "brightness_p": 0.5, "contrast_p": 0.5, "augment": "torchvision"}}}, "g").cells()[0]
    assert first.defense_config["augment"] == "torchvision" and first.cell_id != IDS_BEFORE["ueraser"]
    # Setting the added option to its default is the plain config; the preset is another experiment.
    explicit = parse_grid({**grid, "defenses": ["mixup"], "config": {"mixup": {"per_image": False}}}, "g").cells()[0]
    apbench = parse_grid({**grid, "defenses": ["mixup"], "config": {"mixup": {"preset": "apbench"}}}, "g").cells()[0]
    assert explicit.cell_id == IDS_BEFORE["mixup"] and explicit.defense_config == {"alpha": 1.0}
    assert apbench.defense_config == {"alpha": 1.0, "per_image": True} and apbench.cell_id != IDS_BEFORE["mixup"]


def _shortcut_set(n: int = 400, strength: float = 40.0, seed: int = 0):
    """Mid-grey noisy images plus one fixed random pattern per class: a linearly separable shortcut."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    patterns = torch.randn(10, 3, 32, 32, generator=g)
    patterns = patterns / patterns.flatten(1).norm(dim=1).view(10, 1, 1, 1)  # unit vectors in [0, 1] pixel units
    noise = torch.randn(n, 3, 32, 32, generator=g) * 0.05
    images = (0.5 + noise + strength / 255 * 55 * patterns[labels]).clamp(0, 1).mul(255).round().to(torch.uint8)
    return images, labels, patterns


def test_orthogonal_projection_removes_the_class_directions_a_linear_model_finds():
    images, labels, patterns = _shortcut_set()
    defense = DEFENSES.create("orthogonal_projection", {"preset": "cpu"})  # 400 images: 1 step an epoch
    weight = defense.fit_linear(images, labels)
    x = images.flatten(1).float() / 255
    assert ((x @ weight.T).argmax(1) == labels).float().mean() == 1.0, "the shortcut is linearly separable"
    out = defense.prepare(images, labels)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    units = patterns.flatten(1)

    def class_signal(imgs):  # how far each image's class pattern stands out from the other classes' patterns
        proj = defense.decode(imgs).flatten(1) @ units.T
        return (proj.gather(1, labels.view(-1, 1)).squeeze(1) - proj.mean(1)).mean().item()

    before, after = class_signal(images), class_signal(out)
    print(f"class signal before {before:.3f}, after {after:.3f}")
    assert after < 0.1 * before, "projection must remove at least 90% of the class-wise shortcut"
    # Test images pass untouched through the same map, to half its step (3/255 of a pixel for [-1, 2]).
    error = defense.decode(defense.prepare_test(images)).mul(255) - images.float()
    assert error.abs().max() <= 1.5 + 1e-3 and defense.stages("prepare_test") == [defense]


def test_orthogonal_projection_basis_is_orthonormal_and_spans_the_weights():
    from defenses.projection import class_directions

    weight = torch.randn(10, 300, generator=torch.Generator().manual_seed(0)) + 3  # far from orthogonal
    q = class_directions(weight)
    assert q.shape == (300, 10) and torch.allclose(q.T @ q, torch.eye(10), atol=1e-5)
    residual = weight - (weight @ q) @ q.T
    assert residual.norm() < 1e-4 * weight.norm()


def test_orthogonal_projection_is_a_function_of_the_images_whatever_the_global_seed(tiny_set):
    defense = DEFENSES.create("orthogonal_projection", {"epochs": 2})
    torch.manual_seed(1)
    first = defense.prepare(tiny_set.images, tiny_set.labels)
    torch.manual_seed(2)
    assert torch.equal(first, defense.prepare(tiny_set.images, tiny_set.labels))
    other = DEFENSES.create("orthogonal_projection", {"epochs": 2, "init_seed": 1}).prepare(tiny_set.images, tiny_set.labels)
    assert not torch.equal(first, other)


def test_orthogonal_projection_crops_pad_with_the_code_of_projected_zero():
    # The official RandomCrop pads the projected floats with 0.0 (orthogonal_projection_step_2.py), not
    # with the lowest code of the map (-1.0 at the default pixel_range).
    from defenses.base import create_defense

    defense = DEFENSES.create("orthogonal_projection")
    assert defense.crop_fill == 85 and defense.decode(torch.tensor([85], dtype=torch.uint8)).item() == 0.0
    assert create_defense("orthogonal_projection+cutmix").crop_fill == 85
    assert create_defense("cutmix+orthogonal_projection").crop_fill == 85
    other = DEFENSES.create("orthogonal_projection", {"pixel_range": (-0.5, 1.5)})
    assert other.crop_fill == 64 and abs(other.decode(torch.tensor([64], dtype=torch.uint8)).item()) <= 1 / 255
    assert DEFENSES.create("orthogonal_projection", {"pixel_range": (0.0, 1.0)}).crop_fill == 0
    assert DEFENSES.create("orthogonal_projection", {"pad_value": -1.0}).crop_fill == 0  # the range's low end
    with pytest.raises(ConfigError, match=r"orthogonal_projection\.pad_value: must lie in pixel_range"):
        DEFENSES.create("orthogonal_projection", {"pad_value": 3.0})
    assert all(DEFENSES.create(name).crop_fill == 0 for name in ("none", "jpeg", "cutout"))


def test_early_stop_holds_out_a_class_balanced_seeded_split():
    labels = torch.arange(300) % 10
    defense = DEFENSES.create("early_stop", {"val_size": 50})
    rows = defense.holdout(labels)
    assert len(rows) == 50 and torch.equal(rows, rows.sort().values) and len(set(rows.tolist())) == 50
    assert torch.bincount(labels[rows], minlength=10).tolist() == [5] * 10
    assert torch.equal(rows, DEFENSES.create("early_stop", {"val_size": 50}).holdout(labels))
    assert not torch.equal(rows, DEFENSES.create("early_stop", {"val_size": 50, "split_seed": 1}).holdout(labels))
    assert DEFENSES.create("early_stop", {"preset": "cpu"}).config.val_size == 200
    with pytest.raises(ConfigError, match=r"defense early_stop\.val_size: must be smaller than the training set "
                                          r"\(300 images\), got 300"):
        DEFENSES.create("early_stop", {"val_size": 300}).holdout(labels)
    assert create_defense("jpeg+early_stop", {"early_stop": {"val_size": 50}}).holdout(labels).tolist() == rows.tolist()
    assert create_defense("jpeg+cutout").holdout(labels) is None


def test_early_stop_reports_the_test_accuracy_at_the_best_validation_epoch_never_the_best_test_epoch():
    from bench.runner import early_stop_metrics

    history = [{"epoch": 1, "val_acc": 0.2, "test_acc": 0.50}, {"epoch": 2, "val_acc": 0.4, "test_acc": 0.30},
               {"epoch": 3, "val_acc": 0.4, "test_acc": 0.45}, {"epoch": 4, "val_acc": 0.3, "test_acc": 0.60}]
    assert early_stop_metrics(history) == {"test_acc_early_stop": 0.30, "early_stop_epoch": 2, "val_acc_best": 0.4}

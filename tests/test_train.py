import math
import statistics

import pytest
import torch

from bench.data import ImageSet
from bench.registry import ARCHS
from bench.train import RECIPES, Recipe, TrainingDiverged, lr_at, make_recipe, random_crop_flip, train_model


def test_crop_takes_each_images_own_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), generator=g, dtype=torch.uint8)
    out = random_crop_flip(x, 2, False, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = []
    for i in range(16):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert matches, f"image {i} is not a window of its padded self"
        offsets.append(matches[0])
    assert len(set(offsets)) > 4, "images must get their own offsets"


def test_flip_mirrors_about_half_of_the_batch():
    x = torch.arange(4 * 4, dtype=torch.uint8).view(1, 1, 4, 4).repeat(1000, 3, 1, 1)
    out = random_crop_flip(x, 0, True, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert torch.all(flipped | (out == x).flatten(1).all(1))
    assert 400 < int(flipped.sum()) < 600


def test_schedules():
    cosine = Recipe(lr=0.1, schedule="cosine")
    assert lr_at(cosine, 0, 100) == pytest.approx(0.1) and lr_at(cosine, 50, 100) == pytest.approx(0.05)
    assert lr_at(cosine, 100, 100) == pytest.approx(0.0, abs=1e-12)
    apbench = RECIPES["apbench200"]
    assert lr_at(apbench, 49, 100) == pytest.approx(0.1) and lr_at(apbench, 50, 100) == pytest.approx(0.05)
    step = Recipe(lr=1.0, schedule="multistep", milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_at(step, s, 100) for s in (0, 50, 75)] == pytest.approx([1.0, 0.1, 0.01])


def test_presets_match_the_official_recipes():
    em = RECIPES["em60"]
    assert (em.epochs, em.batch_size, em.lr, em.momentum, em.weight_decay, em.schedule, em.grad_clip) == (60, 128, 0.1, 0.9, 5e-4, "cosine", 5.0)
    ap = RECIPES["apbench200"]
    assert (ap.epochs, ap.batch_size, ap.lr, ap.weight_decay) == (200, 256, 0.1, 5e-4)
    assert make_recipe({"preset": "em60", "epochs": 40}).epochs == 40


def _blobs(n: int, seed: int) -> ImageSet:
    """Classes told apart by mean brightness of one channel: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 100, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[labels == 1, 0] += 120
    return ImageSet(images, labels, torch.arange(n), 2, n)


def test_training_learns_and_records_history():
    torch.manual_seed(0)
    model = ARCHS.create("tiny_cnn", num_classes=2, width=8)
    seen = []
    # 64 steps, enough for batch-norm running statistics to settle for evaluation.
    result = train_model(model, _blobs(256, 0), _blobs(128, 1), Recipe(epochs=8, batch_size=32, lr=0.05), on_epoch=seen.append)
    assert len(result.history) == 8 == len(seen)
    assert result.test_acc_last > 0.9 and result.train_acc > 0.9
    assert result.test_acc_best >= result.test_acc_last and 1 <= result.best_epoch <= 8
    assert result.images_per_second > 0


def test_soft_labels_from_augment_are_accepted():
    def to_soft(x, y):
        return x, torch.nn.functional.one_hot(y, 2).float() * 0.9 + 0.05

    model = ARCHS.create("tiny_cnn", num_classes=2, width=8)
    result = train_model(model, _blobs(64, 0), _blobs(32, 1), Recipe(epochs=1, batch_size=32), augment=to_soft)
    assert math.isfinite(result.history[0]["loss"])


def test_divergence_is_reported():
    model = ARCHS.create("tiny_cnn", num_classes=2, width=8)
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        train_model(model, _blobs(64, 0), _blobs(32, 1), Recipe(epochs=1, batch_size=32),
                    augment=lambda x, y: (x * float("nan"), y))


def _trained(compile: bool, epochs: int = 2):
    torch.manual_seed(0)
    model = ARCHS.create("tiny_cnn", num_classes=2, width=8)
    return train_model(model, _blobs(96, 0), _blobs(32, 1), Recipe(epochs=epochs, batch_size=32), compile=compile)


def test_compile_falls_back_to_eager_with_a_warning_where_it_cannot_compile(monkeypatch):
    import bench.train

    monkeypatch.setattr(bench.train, "compile_failure", lambda device_type: "CppCompileError: no C++ compiler")
    with pytest.warns(RuntimeWarning, match="torch.compile does not work on this cpu machine.*no C\\+\\+ compiler"):
        fallback = _trained(compile=True)
    eager = _trained(compile=False)
    assert [h["loss"] for h in fallback.history] == [h["loss"] for h in eager.history]
    assert fallback.test_acc_last == eager.test_acc_last


def test_throughput_is_steady_state_training_and_the_first_epoch_overhead_is_separate():
    result = _trained(compile=False, epochs=3)
    train_seconds = [h["train_seconds"] for h in result.history]
    assert all(0 < t <= h["seconds"] for t, h in zip(train_seconds, result.history))
    assert result.images_per_second == pytest.approx(96 * 2 / sum(train_seconds[1:]))
    assert result.compile_seconds == pytest.approx(max(train_seconds[0] - statistics.median(train_seconds[1:]), 0.0))
    single = _trained(compile=False, epochs=1)
    assert single.compile_seconds is None  # nothing steady to compare the first epoch with
    assert single.images_per_second == pytest.approx(96 / single.history[0]["train_seconds"])

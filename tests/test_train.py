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


def test_crop_pads_with_the_fill_code():
    x = torch.full((64, 3, 8, 8), 200, dtype=torch.uint8)
    out = random_crop_flip(x, 2, False, torch.Generator().manual_seed(0), fill=85)
    assert set(out.unique().tolist()) == {85, 200}
    assert (random_crop_flip(x, 2, False, torch.Generator().manual_seed(0)) == 0).any(), "zero padding by default"


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


@pytest.mark.parametrize("name", ["at", "ueraser"])
@pytest.mark.parametrize("bf16", [True, False])
def test_the_adversary_of_a_defense_runs_in_the_training_steps_precision(name, bf16, monkeypatch):
    """AT's PGD steps and UEraser's loss picks see the same autocast as the training step they feed."""
    import bench.train
    from defenses.base import create_defense

    monkeypatch.setattr(bench.train, "cpu_computes_bf16", lambda: True)
    model = ARCHS.create("tiny_cnn", num_classes=2, width=8)
    states = {"train": set(), "eval": set()}
    model.register_forward_pre_hook(
        lambda m, args: states["train" if m.training else "eval"].add(torch.is_autocast_enabled("cpu")))
    config = {"steps": 1} if name == "at" else {"repeats": 2}
    defense = create_defense(name, config, num_classes=2)
    train_model(model, _blobs(32, 0), _blobs(16, 1), Recipe(epochs=1, batch_size=16, bf16=bf16),
                augment=defense.augment, adversary=defense.adversary)
    # "train": the training steps; "eval": the adversary's passes (AT's PGD runs in eval mode,
    # UEraser's picks run in train mode) and the evaluation after the epoch.
    assert states["train"] == {bf16}
    assert states["eval"] == {bf16}


def test_a_bf16_region_spanning_optimizer_steps_computes_with_the_current_weights():
    """An attack's whole `generate` is one autocast region; each step must see the last step's update
    (autocast's weight cache would keep the first bf16 copy of each weight until the region ends)."""
    from bench.train import autocast_to

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)  # each step moves every output by about 0.8
    x = torch.randn(2, 8)
    with autocast_to("bf16", torch.device("cpu")):
        for _ in range(3):
            out = layer(x)
            with torch.autocast("cpu", torch.bfloat16, enabled=False):
                expected = (x.bfloat16() @ layer.weight.bfloat16().T + layer.bias.bfloat16()).float()
            assert torch.allclose(out.float(), expected, atol=0.05), "computed with stale weights"
            out.float().sum().backward()
            optimizer.step()
            optimizer.zero_grad()


def test_to_float_scales_to_the_unit_interval_in_the_asked_layout():
    from bench.train import to_float

    x = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for channels_last in (True, False):
        out = to_float(x, channels_last)
        assert out.dtype == torch.float32 and torch.equal(out, x.float() / 255)
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_compiled_training_uses_one_static_graph_per_batch_shape(monkeypatch):
    """The epoch's short last batch gets a graph of its own; the full batches keep theirs in every epoch.

    With dynamo's default (dynamic=None) the short batch would build a batch-generic graph that
    then serves the full batches too. Dynamo traces for real here; the graphs run eagerly.
    """
    import bench.train

    graphs, calls = [], []

    def backend(gm, example_inputs):
        batches = [t.shape for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] == 3
                   and tuple(t.shape[2:]) == (32, 32)]
        graph = len(graphs)
        graphs.append(batches[0])

        def run(*args):
            calls.append((graph, next(a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim() == 4
                                      and tuple(a.shape[1:]) == (3, 32, 32))))
            return gm(*args)
        return run

    real_compile = torch.compile
    monkeypatch.setattr(bench.train, "compile_failure", lambda device_type: None)
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=backend, **kw))
    torch._dynamo.reset()
    try:
        torch.manual_seed(0)
        model = ARCHS.create("tiny_cnn", num_classes=2, width=8)
        train_model(model, _blobs(96, 0), _blobs(16, 1), Recipe(epochs=3, batch_size=40), compile=True)
    finally:
        torch._dynamo.reset()
    assert sorted(int(shape[0]) for shape in graphs) == [16, 40]
    built_for = {int(shape[0]): graph for graph, shape in enumerate(graphs)}
    assert len(calls) == 3 * 3 and all(graph == built_for[batch] for graph, batch in calls)


@pytest.mark.parametrize("amx, avx512_bf16, native", [(True, False, True), (False, True, True), (False, False, False)])
def test_the_precision_rule_takes_bf16_where_the_cpu_computes_it_natively(amx, avx512_bf16, native, monkeypatch):
    """AMX tiles or AVX512_BF16 dot products (the EPYC's) are native bf16; without either, fp32."""
    import bench.train

    probes = {"_is_amx_tile_supported": amx, "_is_avx512_bf16_supported": avx512_bf16}
    monkeypatch.setattr(bench.train, "_cpu_has", lambda probe: probes[probe])
    bench.train.cpu_computes_bf16.cache_clear()
    try:
        assert bench.train.precision_for(True, torch.device("cpu")) == ("bf16" if native else "fp32")
        assert bench.train.precision_for(False, torch.device("cpu")) == "fp32"
    finally:
        bench.train.cpu_computes_bf16.cache_clear()

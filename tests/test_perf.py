"""The measuring code of `bench bench` and the benchmarks (bench/perf.py), and set-level JPEG's pixels."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision import transforms
from torchvision.datasets import CIFAR10
from torchvision.transforms.v2 import functional as TF

import bench.perf
import defenses.basic
from bench.cli import main
from bench.perf import (ConventionalLoop, InMemoryCIFAR10, OurLoop, Plan, TrainingWindow, Windows, alternate,
                        pil_jpeg, ratio, synthetic_set)
from bench.registry import create_defense


def _photos(n: int, channels: int = 3) -> torch.Tensor:
    """Smooth gradients plus noise: images JPEG does not leave alone."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 200, 32)
    base = (ramp.view(1, 1, 1, 32) + ramp.view(1, 1, 32, 1)) / 2
    noise = torch.randint(0, 56, (n, channels, 32, 32), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("channels", [3, 1])
def test_set_level_jpeg_gives_the_pixels_of_pil_and_of_the_per_image_torchvision_jpeg(monkeypatch, channels):
    monkeypatch.setattr(defenses.basic, "JPEG_CHUNK", 7)  # several chunks over the threads, the last one short
    images = _photos(30, channels)
    out = create_defense("jpeg", {"quality": 10}).prepare(images, torch.zeros(30, dtype=torch.long))
    assert not torch.equal(out, images)
    assert torch.equal(out, pil_jpeg(images, 10))
    assert torch.equal(out, TF.jpeg(images, quality=10))  # what `prepare` computed before it was threaded


def test_pil_jpeg_is_a_plain_pil_round_trip():
    image = _photos(1)[0]
    import io

    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=10)
    expected = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1)
    assert torch.equal(pil_jpeg(image[None], 10)[0], expected)


def test_alternate_interleaves_contenders_and_drops_warmup_rounds():
    calls = []
    durations = {"a": iter([9.0, 1.0, 2.0, 3.0]), "b": iter([9.0, 4.0, 4.0, 8.0])}

    def contender(name):
        def run():
            calls.append(name)
            return next(durations[name])
        return run

    windows = alternate({"a": contender("a"), "b": contender("b")}, images=100, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert windows["a"].seconds == (1.0, 2.0, 3.0) and windows["b"].seconds == (4.0, 4.0, 8.0)
    assert windows["a"].best == 100.0 and windows["a"].median == 50.0
    assert ratio(windows["a"], windows["b"]) == (4.0, 2.0)


def test_in_memory_cifar10_is_torchvisions_dataset_over_our_images():
    data = synthetic_set(5)
    dataset = InMemoryCIFAR10(data, transforms.ToTensor())
    assert isinstance(dataset, CIFAR10) and len(dataset) == 5
    image, label = dataset[3]
    assert torch.allclose(image, data.images[3].float() / 255) and label == int(data.labels[3])
    pil = InMemoryCIFAR10(data, None)[3][0]
    assert isinstance(pil, Image.Image) and pil.size == (32, 32)


@pytest.mark.parametrize("loop", [OurLoop, ConventionalLoop])
def test_each_loop_trains_its_model_for_one_window(loop):
    run = loop("tiny_cnn", synthetic_set(64), bench.perf.replace(bench.perf.SPEED_RECIPE, batch_size=32))
    before = [p.detach().clone() for p in run.model.parameters()]
    assert run() > 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, run.model.parameters()))


def test_bench_command_prints_every_figure(monkeypatch):
    tiny = Plan((TrainingWindow("tiny_cnn", 32, 1, batch_size=32),), num_workers=0, compile_arch=None,
                generation=False, compile_images=0, jpeg_images=20, jpeg_repeats=1, defense_images=20,
                generation_images=8, report_records=20)
    monkeypatch.setattr(bench.perf, "plan_for", lambda device, quick: tiny)
    monkeypatch.setattr(bench.perf, "training_images", lambda n, device, echo: synthetic_set(n, device))
    result = CliRunner().invoke(main, ["bench", "--device", "cpu", "--quick"])
    assert result.exit_code == 0, result.output
    for line in ("tiny_cnn  batch 32", "ratio", "JPEG quality 10, 20 images", "set-level defenses", "jpeg",
                 "report over 20 records"):
        assert line in result.output

"""The measuring code of `bench bench` and the benchmarks (the bench/perf package), and set-level JPEG's pixels."""
import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision import transforms
from torchvision.datasets import CIFAR10
from torchvision.transforms.v2 import functional as TF

import bench.perf
import bench.perf.loops
import bench.perf.parts
import bench.perf.timing
import defenses.basic
from bench.cli import main
from bench.perf import (ConventionalLoop, InMemoryCIFAR10, OurLoop, Plan, TrainingWindow, Windows, alternate,
                        pil_jpeg, ratio, synthetic_set)
from bench.registry import ATTACKS
from defenses.base import create_defense


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
    run = loop("tiny_cnn", synthetic_set(64), dataclasses.replace(bench.perf.SPEED_RECIPE, batch_size=32))
    before = [p.detach().clone() for p in run.model.parameters()]
    assert run() > 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, run.model.parameters()))


TINY_PLAN = Plan(("training", "jpeg", "defenses", "report"), (TrainingWindow("tiny_cnn", 32, 1, batch_size=32),),
                 num_workers=0, compile_arch="tiny_cnn", compile_images=0, jpeg_images=20, jpeg_repeats=1,
                 defense_images=20, generation_images=8, report_records=20, concurrent_arch="tiny_cnn",
                 concurrent_images=64, concurrent_copies=(1, 2), matmul_size=64)


def use_tiny_plan(monkeypatch):
    """TINY_PLAN wherever a plan is looked up: by the command (`bench.perf`) and by `run_benchmarks` (its module)."""
    for module in (bench.perf, bench.perf.parts):
        monkeypatch.setattr(module, "plan_for", lambda device, quick: TINY_PLAN)


def test_bench_command_prints_every_figure(monkeypatch, tmp_path):
    use_tiny_plan(monkeypatch)
    monkeypatch.setattr(bench.perf.parts, "training_images", lambda n, device, echo: synthetic_set(n, device))
    result = CliRunner().invoke(main, ["bench", "--device", "cpu", "--quick", "--json", str(tmp_path / "f.json")])
    assert result.exit_code == 0, result.output
    for line in ("tiny_cnn  batch 32", "ratio", "JPEG quality 10, 20 images", "set-level defenses", "jpeg",
                 "report over 20 records"):
        assert line in result.output
    import json

    figures = json.loads((tmp_path / "f.json").read_text())
    assert list(figures) == ["device", "torch", "training", "jpeg", "defenses", "report"]
    assert figures["training"]["tiny_cnn"]["ours"]["best"] > 0 and figures["report"] > 0
    # Each loop's achieved FLOP/s beside the machine's limits: images/s x the counted FLOP per image.
    training = figures["training"]
    flops = training["tiny_cnn"]["flops"]
    assert flops["achieved_best"]["ours"] == pytest.approx(training["tiny_cnn"]["ours"]["best"] * flops["per_image"])
    assert set(training["limits"]["attainable"]) == {"fp32", "bf16"} and training["limits"]["cpu"]["cores"] >= 1
    assert "GFLOP per image: ours" in result.output and "limits: " in result.output


def test_peak_flops_follow_the_vector_units_the_flags_name():
    from bench.perf.peak import flops_per_cycle, peak_flops

    plain = {"cores": 2, "mhz": 2000.0, "avx512f": False, "avx512_bf16": False, "amx_bf16": False}
    assert flops_per_cycle(plain) == {"fp32": 32, "bf16": 0}  # AVX2: 8 lanes x 2 FLOP x 2 pipes; bf16 emulated
    assert peak_flops(plain) == {"fp32": 2 * 2000e6 * 32, "bf16": None}
    epyc = {**plain, "avx512f": True, "avx512_bf16": True}
    assert flops_per_cycle(epyc) == {"fp32": 64, "bf16": 128}
    assert flops_per_cycle({**epyc, "amx_bf16": True})["bf16"] == 1024
    assert peak_flops({**epyc, "mhz": None}) == {"fp32": None, "bf16": None}


def test_a_training_step_counts_three_forward_passes_of_flop():
    """Backward of a convolution or a linear layer is two products of the forward's size, one where its input
    needs no gradient (the first convolution, on the images): 3x the forward less that one product."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.perf.peak import training_flops_per_image
    from bench.registry import ARCHS

    model = ARCHS.create("tiny_cnn", num_classes=10)
    images = torch.rand(8, 3, 32, 32)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        model(images)
    with torch.no_grad(), FlopCounterMode(display=False) as first_conv:
        first(images)
    expected = (3 * forward.get_total_flops() - first_conv.get_total_flops()) / 8
    assert training_flops_per_image("tiny_cnn", batch=8) == expected


def test_bench_only_runs_the_named_parts_and_refuses_unknown_ones(monkeypatch):
    use_tiny_plan(monkeypatch)
    result = CliRunner().invoke(main, ["bench", "--device", "cpu", "--only", "report"])
    assert result.exit_code == 0, result.output
    assert "report over 20 records" in result.output and "JPEG" not in result.output and "training" not in result.output
    bad = CliRunner().invoke(main, ["bench", "--device", "cpu", "--only", "report,speed"])
    assert bad.exit_code == 2 and "unknown part 'speed'" in bad.output and "concurrent" in bad.output


def test_concurrent_copies_train_at_once_and_report_each_throughput():
    """Two processes of `concurrent_training` on the CPU: both train, each reports its own images/s."""
    run = bench.perf.concurrent_training("tiny_cnn", 64, torch.device("cpu"), copies=2, epochs=2)
    assert run["copies"] == 2 and len(run["per_copy"]) == 2 and all(r > 0 for r in run["per_copy"])
    assert run["aggregate"] == pytest.approx(sum(run["per_copy"]))


def test_set_level_jpeg_returns_a_contiguous_set_whatever_the_input_layout():
    images = _photos(12).contiguous(memory_format=torch.channels_last)
    out = create_defense("jpeg", {"quality": 10}).prepare(images, torch.zeros(12, dtype=torch.long))
    assert out.is_contiguous() and torch.equal(out, pil_jpeg(images, 10))


def test_our_loop_times_its_training_steps_only(monkeypatch):
    """A window is one epoch of steps: no test, no set-up; model and optimizer persist as the conventional loop's."""
    import bench.train

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a window must not evaluate")

    monkeypatch.setattr(bench.train, "evaluate", no_evaluation)
    run = OurLoop("tiny_cnn", synthetic_set(64), dataclasses.replace(bench.perf.SPEED_RECIPE, batch_size=32))
    optimizer = run.trainer.optimizer
    assert run() > 0 and run() > 0
    assert run.trainer.step == 4 and run.trainer.optimizer is optimizer
    assert all("momentum_buffer" in optimizer.state[p] for p in run.model.parameters())


def test_timers_wait_for_the_device(monkeypatch):
    """`seconds_of` empties the device queue before and after the work; `synchronized` after it."""
    events = []
    monkeypatch.setattr(bench.perf.timing, "synchronize", lambda device: events.append(("sync", str(device))))
    seconds = bench.perf.seconds_of(lambda: events.append("work"), "cuda")
    assert events == [("sync", "cuda"), "work", ("sync", "cuda")] and seconds >= 0
    events.clear()
    work = bench.perf.synchronized(lambda a, b=0: events.append(("work", a, b)) or a + b, "cuda")
    assert work(1, b=2) == 3 and events == [("work", 1, 2), ("sync", "cuda")]


def test_compile_cost_says_so_where_torch_compile_cannot_work(monkeypatch):
    """Not eager figures under the name "compiled" (train_model would fall back to eager there)."""
    real_train, compile_flags = bench.perf.loops.train_model, []

    def train_model(*args, compile=False, **kwargs):
        compile_flags.append(compile)
        return real_train(*args, compile=compile, **kwargs)

    monkeypatch.setattr(bench.perf.loops, "compile_failure", lambda device_type: "CppCompileError: no C++ compiler")
    monkeypatch.setattr(bench.perf.loops, "train_model", train_model)
    cost = bench.perf.compile_cost("tiny_cnn", synthetic_set(64), epochs=2,
                                   recipe=dataclasses.replace(bench.perf.SPEED_RECIPE, batch_size=32))
    assert compile_flags == [False]
    assert cost["compiled"] == {"unavailable": "CppCompileError: no C++ compiler"}
    assert cost["eager"]["images_per_second"] > 0 and cost["eager"]["first_epoch_overhead_s"] is not None
    lines = []
    monkeypatch.setattr(bench.perf.parts, "compile_cost", lambda arch, data: cost)
    monkeypatch.setattr(bench.perf.parts, "training_images", lambda n, device, echo: synthetic_set(n, device))
    bench.perf.parts.part_compile(torch.device("cpu"), TINY_PLAN, lines.append)
    assert any("compiled not measured: torch.compile does not work here (CppCompileError" in line for line in lines)


@pytest.mark.parametrize("preset", [bench.perf.ONE_ROUND, bench.perf.ONE_STEP])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", ATTACKS.names())
def test_each_attack_is_measured_at_the_presets_it_declares(name, device, preset):
    """On a CPU an attack's `cpu` preset with its round preset over it; on CUDA the round preset over its defaults."""
    presets = getattr(ATTACKS.get(name), "presets", {})
    assert (bench.perf.ONE_ROUND in presets) == (bench.perf.ONE_STEP in presets), "an attack with rounds declares both"
    overrides = bench.perf.preset_overrides(name, torch.device(device), preset)
    if name not in bench.perf.generation_attacks():
        assert overrides == {}  # never generated (external reads a file), so never measured
        return
    config, defaults = ATTACKS.config(name, overrides), ATTACKS.config(name, {})
    expected = {**(presets.get("cpu", {}) if device == "cpu" else {}), **presets.get(preset, {})}
    for field in dataclasses.fields(config):
        assert getattr(config, field.name) == expected.get(field.name, getattr(defaults, field.name)), field.name

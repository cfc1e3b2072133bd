"""Speed, measured: our training loop beside the conventional one, and the other costs of a cell.

`bench bench` prints these figures on the device it finds, and `tests/benchmarks` track them with
pytest-benchmark; both measure with the code here. Two contenders that are compared (our loop and
the conventional one, set-level JPEG and PIL) run in alternation, window after window, so that
load from other processes falls on both alike; each figure is the best and the median window.

The conventional loop is what EM, REM, TAP and APBench train with: a torchvision `CIFAR10` dataset
of PIL images, `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()` and `ToTensor()` per image
through a `DataLoader`, in fp32 and the default memory format, the same model, batch size and SGD.

Attacks declare the settings they are measured at, in their `presets` beside `cpu`:

    one_round  config overrides for one generation round: what `generate` and the generation part time
    one_step   one round with one step per batch: what the memory part measures, since the peak is set
               by the data and one batch, not by how many steps run

Each is complete on its own (`one_step` is not applied on top of `one_round`). On a CPU perf
starts from the attack's `cpu` preset and applies the round preset on top; on CUDA it applies the
round preset alone, to the official settings (`preset_overrides`). An attack with rounds declares
both; one without (the model-free attacks) declares neither and runs at its full settings, or at
its `cpu` preset on a CPU where it has one.
"""
from __future__ import annotations

import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision import transforms
from torchvision.datasets import CIFAR10, VisionDataset

from bench.config import comma_choices
from bench.data import ImageSet
from bench.registry import ARCHS, ATTACKS, DEFENSES, create_defense
from bench.train import Recipe, Trainer, compile_failure, precision, train_model

# A recipe whose speed is that of every recipe: SGD with momentum and weight decay, crop and flip.
SPEED_RECIPE = Recipe(epochs=1, batch_size=128, lr=0.05, schedule="constant")


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synchronized(work: Callable, device: torch.device | str) -> Callable:
    """`work` that returns only when the device has done what it queued: for timers that stop at the return."""
    def run(*args, **kwargs):
        out = work(*args, **kwargs)
        synchronize(device)
        return out
    return run


def seconds_of(work: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall time of `work()`, with the device's queue empty before the clock starts and after `work` returns."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Windows:
    """Wall times of repeated windows of one contender, each over `images` images."""

    name: str
    images: int
    seconds: tuple[float, ...]

    @property
    def best(self) -> float:
        """Images per second in the fastest window."""
        return self.images / min(self.seconds)

    @property
    def median(self) -> float:
        """Images per second in the median window."""
        return self.images / statistics.median(self.seconds)


def alternate(contenders: Mapping[str, Callable[[], float]], images: int, repeats: int,
              warmup: int = 1) -> dict[str, Windows]:
    """Run each contender (a callable returning the seconds of one window) once per round.

    The first `warmup` rounds are thrown away (first-call costs: allocator, oneDNN primitives, worker
    start-up); the next `repeats` are kept.
    """
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(warmup + repeats):
        for name, run in contenders.items():
            took = run()
            if round_ >= warmup:
                seconds[name].append(took)
    return {name: Windows(name, images, tuple(s)) for name, s in seconds.items()}


def ratio(fast: Windows, slow: Windows) -> tuple[float, float]:
    """How many times faster `fast` is than `slow`: best window over best, median over median."""
    return fast.best / slow.best, fast.median / slow.median


class OurLoop:
    """Windows of our training loop (`bench.train.Trainer`, the steps of `train_model`): one epoch over `data` each.

    The model, optimizer and random state persist across windows, as the conventional loop's do;
    a window is the epoch's training steps alone, ending on its one synchronisation.
    """

    def __init__(self, arch: str, data: ImageSet, recipe: Recipe = SPEED_RECIPE):
        torch.manual_seed(0)
        self.model = ARCHS.create(arch, num_classes=data.num_classes)
        self.trainer = Trainer(self.model, data, recipe)

    def __call__(self) -> float:
        return self.trainer.epoch()[2]


class InMemoryCIFAR10(CIFAR10):
    """torchvision's `datasets.CIFAR10` over images already in memory (the original reads its pickled batches).

    Only the file reading is skipped: `__getitem__`, `__len__` and the transforms are torchvision's
    own (`Image.fromarray` of an HWC uint8 array, then the transform, per image).
    """

    def __init__(self, data: ImageSet, transform: Callable | None):
        VisionDataset.__init__(self, root="", transform=transform)  # CIFAR10.__init__ would read files
        self.train = True
        self.data = np.ascontiguousarray(data.images.cpu().numpy().transpose(0, 2, 3, 1))
        self.targets = data.labels.cpu().tolist()


def conventional_transform(recipe: Recipe) -> transforms.Compose:
    steps = [transforms.RandomCrop(32, padding=recipe.crop_padding)] if recipe.crop_padding else []
    steps += [transforms.RandomHorizontalFlip()] if recipe.flip else []
    return transforms.Compose([*steps, transforms.ToTensor()])


class ConventionalLoop:
    """The training loop of the official repositories and APBench, for comparison with ours.

    PIL transforms per image in `num_workers` DataLoader workers (0: in this process), fp32, the
    default memory format, the same model, batch size and SGD as `OurLoop`.
    """

    def __init__(self, arch: str, data: ImageSet, recipe: Recipe = SPEED_RECIPE, num_workers: int = 0):
        from torch.utils.data import DataLoader

        torch.manual_seed(0)
        self.device = data.device
        self.model = ARCHS.create(arch, num_classes=data.num_classes).to(self.device)
        self.recipe = recipe
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                         weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
        self.loader = DataLoader(InMemoryCIFAR10(data, conventional_transform(recipe)), batch_size=recipe.batch_size,
                                 shuffle=True, num_workers=num_workers, pin_memory=self.device.type == "cuda",
                                 persistent_workers=num_workers > 0)

    def __call__(self) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        self.model.train()
        for images, labels in self.loader:
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            loss = F.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad()
            loss.backward()
            if self.recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
            self.optimizer.step()
        synchronize(self.device)
        return time.perf_counter() - start


def training_throughput(arch: str, data: ImageSet, repeats: int, num_workers: int = 0,
                        recipe: Recipe = SPEED_RECIPE) -> dict[str, Windows]:
    """Our loop and the conventional one on `data`, alternating window by window."""
    contenders = {"ours": OurLoop(arch, data, recipe),
                  "conventional": ConventionalLoop(arch, data, recipe, num_workers)}
    return alternate(contenders, len(data), repeats)


def compile_cost(arch: str, data: ImageSet, epochs: int = 3, recipe: Recipe = SPEED_RECIPE) -> dict:
    """Steady-state images/s and first-epoch overhead of our loop, eager and with torch.compile.

    Where torch.compile cannot build code on this machine, "compiled" holds only why (`unavailable`):
    `train_model` would fall back to eager and its figures would be eager ones under another name.
    """
    def steady_and_first(compile: bool) -> dict:
        torch.manual_seed(0)
        model = ARCHS.create(arch, num_classes=data.num_classes)
        result = train_model(model, data, head(data, 8), replace(recipe, epochs=epochs), compile=compile)
        return {"images_per_second": result.images_per_second, "first_epoch_overhead_s": result.compile_seconds}

    failure = compile_failure(data.device.type)
    return {"eager": steady_and_first(False),
            "compiled": steady_and_first(True) if failure is None else {"unavailable": failure}}


def pil_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG one image at a time through PIL, as a per-image transform would: the baseline for set-level JPEG."""
    from PIL import Image

    hwc = images.cpu().numpy().transpose(0, 2, 3, 1)
    out = np.empty_like(hwc)
    for i, image in enumerate(hwc):
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
            buffer, format="JPEG", quality=quality, subsampling="4:2:0")
        out[i] = np.asarray(Image.open(buffer)).reshape(image.shape)
    return torch.from_numpy(out.transpose(0, 3, 1, 2).copy())


def jpeg_speed(images: torch.Tensor, repeats: int, quality: int = 10) -> dict[str, Windows]:
    """Set-level JPEG (the `jpeg` defense) and the per-image PIL loop, alternating."""
    defense = create_defense("jpeg", {"quality": quality})
    contenders = {"set-level": lambda: seconds_of(lambda: defense.prepare(images, None)),
                  "PIL loop": lambda: seconds_of(lambda: pil_jpeg(images, quality))}
    return alternate(contenders, len(images), repeats, warmup=0)


def set_level_defenses() -> list[str]:
    """Registered defenses that act on the whole training set (`prepare`)."""
    return [name for name in DEFENSES.names() if create_defense(name).stages("prepare")]


def defense_seconds(name: str, data: ImageSet) -> float:
    defense = create_defense(name, num_classes=data.num_classes)
    return seconds_of(lambda: defense.prepare(data.images, data.labels), data.device)


# The presets an attack with rounds declares for perf, each complete on its own (see the module docstring).
ONE_ROUND = "one_round"  # one generation round: the time of generation
ONE_STEP = "one_step"  # one round with one step per batch: peak memory, which the data and one batch set


def preset_overrides(name: str, device: torch.device, preset: str = ONE_ROUND) -> dict:
    """Config overrides of attack `name` for a measurement: on a CPU its `cpu` preset then `preset`, on CUDA `preset`.

    An attack that does not declare `preset` has no rounds to cut (the model-free ones): it runs
    at its full settings, or at its `cpu` preset on a CPU where it has one.
    """
    presets = getattr(ATTACKS.get(name), "presets", {})
    on_cpu = {"preset": "cpu"} if device.type == "cpu" and "cpu" in presets else {}
    return {**on_cpu, **presets.get(preset, {})}


def generation_attacks() -> list[str]:
    return [name for name in ATTACKS.names() if name != "external"]  # external reads a file; nothing to generate


def generate(name: str, data: ImageSet, overrides: Mapping | None = None):
    """One poison of attack `name` (one round unless `overrides` say otherwise), in a scratch folder."""
    from bench.context import RunContext

    attack = ATTACKS.create(name, preset_overrides(name, data.device) if overrides is None else overrides)
    with tempfile.TemporaryDirectory() as scratch:
        ctx = RunContext(device=data.device, seed=0, cache_dir=Path(scratch) / "cache",
                         work_dir=Path(scratch) / "work", progress=False)
        return attack(data, ctx)


def generation_seconds(name: str, data: ImageSet) -> float:
    return seconds_of(lambda: generate(name, data), data.device)


def synthetic_records(n: int, seed: int = 0) -> list[CellResult]:
    """`n` finished-cell records as the runner writes them, over every registered attack and defense."""
    from bench.data import DataSpec
    from bench.grid import CellSpec
    from bench.records import CellResult

    rng = np.random.default_rng(seed)
    attacks, defenses = ATTACKS.names(), DEFENSES.names()
    records = []
    for i in range(n):
        seed_ = i // (len(attacks) * len(defenses))
        cell = CellSpec(DataSpec(), attacks[i % len(attacks)], {}, defenses[i // len(attacks) % len(defenses)], {},
                        "resnet18", {}, Recipe(), "em60", seed_)
        acc = float(rng.uniform(0.1, 0.95))
        records.append(CellResult.finished(cell, "perf", {
            "metrics": {"test_acc_last": acc, "test_acc_best": acc, "best_epoch": 60, "train_acc": 1.0},
            "poison": {"norm": "linf", "budget": 8 / 255}, "history": [], "timings": {"train_s": 100.0},
        }, provenance={}, attempts=1, earlier_errors=[], wall_seconds=100.0))
    return records


def report_seconds(records: list) -> float:
    from bench.report import write_report

    with tempfile.TemporaryDirectory() as out:
        return seconds_of(lambda: write_report(records, Path(out), "perf"))


def head(data: ImageSet, n: int) -> ImageSet:
    """The first `n` images of `data`."""
    return ImageSet(data.images[:n], data.labels[:n], data.index[:n], data.num_classes, data.split_size)


def synthetic_set(n: int, device: torch.device | str = "cpu", num_classes: int = 10) -> ImageSet:
    """Random uint8 CIFAR-sized images with balanced labels, where content does not matter."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % num_classes, torch.arange(n), num_classes, n).to(device)


def peak_memory(name: str, n: int, overrides: Mapping, device: str = "cpu", real: bool = False,
                timeout_s: float = 3600) -> dict:
    """Peak host RSS and CUDA memory (allocated and reserved) of generating attack `name` on `n` images.

    Runs in a fresh process, so that the peak is this generation's alone. The images are random
    CIFAR-sized ones (their content does not change the memory) unless `real`, which takes the
    first `n` CIFAR-10 training images (for a timed run that must stop where the attack does).
    """
    command = [sys.executable, "-m", "bench.perf", "memory", name, str(n), json.dumps(dict(overrides)), device,
               "real" if real else "random"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_memory(name: str, n: int, overrides: dict, device: str, real: bool) -> None:
    data = training_images(n, torch.device(device), lambda line: None) if real else synthetic_set(n, device)
    seconds = seconds_of(lambda: generate(name, data, overrides), data.device)
    cuda = data.device.type == "cuda"
    # Peaks since this fresh process started: the data on the device and the generation, nothing else.
    print(json.dumps({"attack": name, "images": n, "seconds": seconds,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # kB on Linux
                      "peak_cuda_bytes": torch.cuda.max_memory_allocated(data.device) if cuda else None,
                      # what the caching allocator held: the GPU memory the process really took
                      "peak_cuda_reserved_bytes": torch.cuda.max_memory_reserved(data.device) if cuda else None}))


def concurrent_training(arch: str, n: int, device: torch.device, copies: int, epochs: int = 3,
                        timeout_s: float = 1800) -> dict:
    """Steady images/s of `copies` training processes on one device at once: several cells per GPU.

    Each process loads its data and model, then waits until all are ready, so that their epochs
    overlap; each reports its steady-state throughput (`TrainResult.images_per_second`).
    """
    command = [sys.executable, "-m", "bench.perf", "train", arch, str(n), str(device), str(epochs), str(copies)]
    with tempfile.TemporaryDirectory() as scratch:
        logs = [open(Path(scratch) / f"{i}.log", "w+") for i in range(copies)]
        procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
                 for log in logs]
        try:
            for proc in procs:
                if proc.stdout.readline().strip() != "ready":
                    proc.wait(timeout=60)
                    raise RuntimeError(f"a training copy failed before it was ready:\n{_tail(logs[procs.index(proc)])}")
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            rates = []
            for proc, log in zip(procs, logs):
                out, _ = proc.communicate(timeout=timeout_s)
                if proc.returncode != 0:
                    raise RuntimeError(f"a training copy failed:\n{_tail(log)}")
                rates.append(json.loads(out.strip().splitlines()[-1])["images_per_second"])
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            for log in logs:
                log.close()
    return {"copies": copies, "per_copy": rates, "aggregate": sum(rates)}


def _tail(log) -> str:
    log.seek(0)
    return log.read()[-2000:]


def _train_copy(arch: str, n: int, device: str, epochs: int, copies: int) -> None:
    """One copy of `concurrent_training`: get ready, say so, wait for "go", train, print images/s."""
    device_ = torch.device(device)
    if device_.type == "cpu":  # share the cores, as cells of a CPU pool do
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // copies))
    data = training_images(n, device_, lambda line: None)
    torch.manual_seed(0)
    model = ARCHS.create(arch, num_classes=data.num_classes)
    print("ready", flush=True)
    sys.stdin.readline()
    result = train_model(model, data, head(data, 8), replace(SPEED_RECIPE, epochs=epochs))
    print(json.dumps({"images_per_second": result.images_per_second}), flush=True)


@dataclass(frozen=True)
class TrainingWindow:
    arch: str
    images: int  # per window
    repeats: int  # timed windows per loop
    batch_size: int = 128


@dataclass(frozen=True)
class Plan:
    """How much `bench bench` measures on a device, and which parts it runs by default; `plan_for` picks one."""

    parts: tuple[str, ...]  # the default parts (see PARTS)
    training: tuple[TrainingWindow, ...]
    num_workers: int  # the conventional loop's DataLoader workers
    compile_arch: str  # the arch whose torch.compile cost is measured
    compile_images: int
    jpeg_images: int
    jpeg_repeats: int
    defense_images: int
    generation_images: int
    report_records: int
    concurrent_arch: str = "resnet18"
    concurrent_images: int = 50_000
    concurrent_copies: tuple[int, ...] = (1, 2, 4)


def plan_for(device: torch.device, quick: bool = False) -> Plan:
    if device.type == "cuda":
        # Full CIFAR-10 epochs: the figures a 60-epoch cell sees. 8 workers as EM's official loader.
        parts = ("training", "jpeg", "defenses", "report") if quick else (
            "training", "compile", "jpeg", "defenses", "generation", "report", "concurrent")
        return Plan(parts, (TrainingWindow("tiny_cnn", 50_000, 3), TrainingWindow("resnet18", 50_000, 3)),
                    num_workers=min(8, os.cpu_count() or 1), compile_arch="resnet18", compile_images=50_000,
                    jpeg_images=10_000, jpeg_repeats=3, defense_images=10_000, generation_images=2_560,
                    report_records=1_000)
    if quick:
        return Plan(("training", "jpeg", "defenses", "report"),
                    (TrainingWindow("tiny_cnn", 1_024, 2), TrainingWindow("resnet18", 64, 1, batch_size=32)),
                    num_workers=0, compile_arch="tiny_cnn", compile_images=1_024, jpeg_images=2_000, jpeg_repeats=1,
                    defense_images=2_000, generation_images=64, report_records=200,
                    concurrent_arch="tiny_cnn", concurrent_images=1_024, concurrent_copies=(1, 2))
    # 0 workers on the CPU: on 2 cores the workers only take cores from training (slower here, measured).
    return Plan(("training", "compile", "jpeg", "defenses", "generation", "report"),
                (TrainingWindow("tiny_cnn", 2_048, 5), TrainingWindow("resnet18", 256, 2)),
                num_workers=0, compile_arch="tiny_cnn", compile_images=2_048, jpeg_images=10_000, jpeg_repeats=3,
                defense_images=10_000, generation_images=256, report_records=1_000,
                concurrent_arch="tiny_cnn", concurrent_images=4_096, concurrent_copies=(1, 2))


def full_cell(device: torch.device) -> dict:
    """One 60-epoch ResNet-18 cell (the em60 recipe) on all of CIFAR-10, clean data: wall time and accuracy."""
    from bench.data import DataSpec, load_dataset
    from bench.train import RECIPES

    data = load_dataset(DataSpec(), device)
    torch.manual_seed(0)
    start = time.perf_counter()
    result = train_model(ARCHS.create("resnet18", num_classes=data.train.num_classes), data.train, data.test,
                         RECIPES["em60"])
    return {"seconds": time.perf_counter() - start, "test_acc_last": result.test_acc_last,
            "images_per_second": result.images_per_second, "precision": result.precision}


MEMORY_IMAGES = 50_000  # CIFAR-10's training split


GIB = 2 ** 30


def _gpu_text(m: dict) -> str:
    if m.get("peak_cuda_bytes") is None:
        return ""
    return f", GPU {m['peak_cuda_bytes'] / GIB:.2f} GiB allocated / {m['peak_cuda_reserved_bytes'] / GIB:.2f} GiB reserved"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def training_images(n: int, device: torch.device, echo: Callable[[str], None]) -> ImageSet:
    """The first class-balanced `n` CIFAR-10 training images, or random ones where CIFAR-10 cannot be had."""
    from bench.data import DataSpec, DataUnavailable, load_dataset

    try:
        return load_dataset(DataSpec(train_size=n, test_size=10), device).train
    except DataUnavailable as err:
        echo(f"  (CIFAR-10 unavailable, random images instead: {str(err).splitlines()[0]})")
        return synthetic_set(n, device)


# --- the parts of `bench bench`: each measures, prints and returns its figures --------------------
Echo = Callable[[str], None]


def part_training(device: torch.device, plan: Plan, echo: Echo) -> dict:
    figures = {}
    echo(f"\ntraining, images/s (best / median of the timed windows; our loop: {precision(SPEED_RECIPE, device)}, "
         f"channels_last, uint8 data on the device, batched crop+flip; conventional: PIL per image, DataLoader with "
         f"{plan.num_workers} workers, fp32)")
    for window in plan.training:
        recipe = replace(SPEED_RECIPE, batch_size=window.batch_size)
        data = training_images(window.images, device, echo)
        w = training_throughput(window.arch, data, window.repeats, plan.num_workers, recipe)
        best, median = ratio(w["ours"], w["conventional"])
        figures[window.arch] = {k: {"best": v.best, "median": v.median} for k, v in w.items()}
        figures[window.arch]["ratio"] = {"best": best, "median": median}
        echo(f"  {window.arch:<9} batch {window.batch_size}, {window.images} images x {window.repeats}: "
             f"ours {w['ours'].best:,.0f} / {w['ours'].median:,.0f}   conventional {w['conventional'].best:,.0f} / "
             f"{w['conventional'].median:,.0f}   ratio {best:.2f}x / {median:.2f}x")
    return figures


def part_compile(device: torch.device, plan: Plan, echo: Echo) -> dict:
    cost = compile_cost(plan.compile_arch, training_images(plan.compile_images, device, echo))
    echo(f"\ntorch.compile, {plan.compile_arch}, {plan.compile_images} images per epoch, 3 epochs:")
    for mode, c in cost.items():
        echo(f"  {mode:<8} not measured: torch.compile does not work here ({c['unavailable']})" if "unavailable" in c
             else f"  {mode:<8} steady {c['images_per_second']:,.0f} images/s, first epoch "
                  f"{c['first_epoch_overhead_s']:.1f} s longer than a steady one")
    return cost


def part_jpeg(device: torch.device, plan: Plan, echo: Echo) -> dict:
    jpeg = jpeg_speed(training_images(plan.jpeg_images, device, echo).images.cpu(), plan.jpeg_repeats)
    best, median = ratio(jpeg["set-level"], jpeg["PIL loop"])
    figures = {"set_level_s": min(jpeg["set-level"].seconds), "pil_s": min(jpeg["PIL loop"].seconds),
               "ratio": {"best": best, "median": median}}
    echo(f"\nJPEG quality 10, {plan.jpeg_images:,} images: set-level {figures['set_level_s']:.2f} s, "
         f"PIL loop {figures['pil_s']:.2f} s (best of {plan.jpeg_repeats}), ratio {best:.2f}x / {median:.2f}x")
    return figures


def part_defenses(device: torch.device, plan: Plan, echo: Echo) -> dict:
    data = training_images(plan.defense_images, device, echo)
    figures = {name: defense_seconds(name, data) for name in set_level_defenses()}
    echo(f"set-level defenses, {plan.defense_images:,} images: " + ", ".join(f"{k} {v:.2f} s" for k, v in figures.items()))
    return figures


def part_generation(device: torch.device, plan: Plan, echo: Echo) -> dict:
    batch = synthetic_set(plan.generation_images, device)
    figures = {name: generation_seconds(name, batch) for name in generation_attacks()}
    preset = "CPU presets" if device.type == "cpu" else "official settings"
    echo(f"one generation round, {plan.generation_images} images, {preset}: "
         + ", ".join(f"{k} {v:.2f} s" for k, v in figures.items()))
    return figures


def part_report(device: torch.device, plan: Plan, echo: Echo) -> float:
    seconds = report_seconds(synthetic_records(plan.report_records))
    echo(f"report over {plan.report_records:,} records: {seconds:.2f} s")
    return seconds


def part_concurrent(device: torch.device, plan: Plan, echo: Echo) -> dict:
    echo(f"\nseveral cells on one device: {plan.concurrent_arch}, {plan.concurrent_images:,} images, steady "
         f"images/s of each copy training at once (a process each)")
    figures, alone = {}, None
    for copies in plan.concurrent_copies:
        run = figures[copies] = concurrent_training(plan.concurrent_arch, plan.concurrent_images, device, copies)
        alone = alone or run["aggregate"]
        echo(f"  {copies} at once: " + " + ".join(f"{r:,.0f}" for r in run["per_copy"])
             + f" = {run['aggregate']:,.0f} images/s ({run['aggregate'] / alone:.2f}x one alone)")
    return figures


def part_memory(device: torch.device, plan: Plan, echo: Echo) -> dict:
    echo(f"\npeak memory of generating each attack on {MEMORY_IMAGES:,} random CIFAR-sized images "
         f"(one round, one step per batch; a fresh process each):")
    figures = {}
    for name in generation_attacks():
        m = figures[name] = peak_memory(name, MEMORY_IMAGES, preset_overrides(name, device, ONE_STEP), str(device))
        echo(f"  {name:<13} host {m['peak_rss_bytes'] / GIB:.2f} GiB{_gpu_text(m)} ({m['seconds']:.0f} s)")
    return figures


def part_cell(device: torch.device, plan: Plan, echo: Echo) -> dict:
    cell = full_cell(device)
    echo(f"\n60-epoch ResNet-18 cell (em60, {cell['precision']}) on CIFAR-10: {cell['seconds']:.0f} s, "
         f"{cell['images_per_second']:,.0f} images/s steady, test accuracy {100 * cell['test_acc_last']:.2f}%")
    return cell


def part_em(device: torch.device, plan: Plan, echo: Echo) -> dict:
    """EM with its official settings (ResNet-18 surrogate, stop at 99%) on all of CIFAR-10, in a fresh process."""
    em = peak_memory("em", MEMORY_IMAGES, {}, str(device), real=True, timeout_s=6 * 3600)
    echo(f"\nEM, official settings, CIFAR-10 ({ATTACKS.create('em').precision(device)}): {em['seconds']:.0f} s, "
         f"host peak {em['peak_rss_bytes'] / GIB:.2f} GiB{_gpu_text(em)}")
    return em


PARTS: dict[str, Callable[[torch.device, Plan, Echo], object]] = {
    "training": part_training, "compile": part_compile, "jpeg": part_jpeg, "defenses": part_defenses,
    "generation": part_generation, "report": part_report, "concurrent": part_concurrent,
    "memory": part_memory, "cell": part_cell, "em": part_em,
}


def parse_parts(text: str) -> tuple[str, ...]:
    """'training,em' -> ('training', 'em'); an unknown name is an error that lists the allowed ones."""
    return comma_choices(text, PARTS, "--only", "part")


def run_benchmarks(device: torch.device, quick: bool = False, parts: Iterable[str] | None = None,
                   echo: Echo = print) -> dict:
    """Measure and print the `parts` of `bench bench` (default: the plan's parts for this device); returns the figures.

    Beyond the default parts: `memory` (peak memory of each attack's generation on 50,000 images,
    minutes), `cell` (a 60-epoch ResNet-18 cell on all of CIFAR-10) and `em` (EM with official
    settings on all of CIFAR-10): minutes on an H100, days on a CPU.
    """
    plan = plan_for(device, quick)
    figures: dict = {"device": device_name(device), "torch": torch.__version__}
    echo(f"device: {figures['device']}; torch {torch.__version__}")
    for part in (plan.parts if parts is None else parts):
        figures[part] = PARTS[part](device, plan, echo)
    return figures


if __name__ == "__main__" and sys.argv[1:2] == ["memory"]:
    os.environ.setdefault("TQDM_DISABLE", "1")
    _measure_memory(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5], sys.argv[6] == "real")
elif __name__ == "__main__" and sys.argv[1:2] == ["train"]:
    _train_copy(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))

"""The parts of `bench bench`: how much each measures on a device (`Plan`), and each part's lines and figures.

A part measures, prints and returns its figures; `run_benchmarks` runs the parts asked for.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import torch

from bench.config import comma_choices
from bench.perf.inputs import synthetic_records, synthetic_set, training_images
from bench.perf.loops import SPEED_RECIPE, compile_cost, full_cell, training_throughput
from bench.perf.peak import MATMUL_SIZE, limits, training_flops_per_image
from bench.perf.processes import concurrent_training, peak_memory
from bench.perf.timing import ratio
from bench.perf.workloads import (ONE_STEP, defense_seconds, generation_attacks, generation_seconds, jpeg_speed,
                                  preset_overrides, report_seconds, set_level_defenses)
from bench.registry import ATTACKS
from bench.train import precision


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
    matmul_size: int = MATMUL_SIZE  # the matrix products that measure the attainable FLOP/s


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
                    concurrent_arch="tiny_cnn", concurrent_images=1_024, concurrent_copies=(1, 2), matmul_size=512)
    # 0 workers on the CPU: on 2 cores the workers only take cores from training (slower here, measured).
    return Plan(("training", "compile", "jpeg", "defenses", "generation", "report"),
                (TrainingWindow("tiny_cnn", 2_048, 5), TrainingWindow("resnet18", 256, 2)),
                num_workers=0, compile_arch="tiny_cnn", compile_images=2_048, jpeg_images=10_000, jpeg_repeats=3,
                defense_images=10_000, generation_images=256, report_records=1_000,
                concurrent_arch="tiny_cnn", concurrent_images=4_096, concurrent_copies=(1, 2))


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


Echo = Callable[[str], None]


def part_training(device: torch.device, plan: Plan, echo: Echo) -> dict:
    ours_precision = precision(SPEED_RECIPE, device)
    figures: dict = {"limits": limits(device, plan.matmul_size)}
    echo_limits(figures["limits"], echo)
    echo(f"\ntraining, images/s (best / median of the timed windows; our loop: {ours_precision}, "
         f"channels_last, uint8 data on the device, batched crop+flip; conventional: PIL per image, DataLoader with "
         f"{plan.num_workers} workers, fp32)")
    for window in plan.training:
        recipe = replace(SPEED_RECIPE, batch_size=window.batch_size)
        data = training_images(window.images, device, echo)
        w = training_throughput(window.arch, data, window.repeats, plan.num_workers, recipe)
        best, median = ratio(w["ours"], w["conventional"])
        figures[window.arch] = {k: {"best": v.best, "median": v.median} for k, v in w.items()}
        figures[window.arch]["ratio"] = {"best": best, "median": median}
        flop = training_flops_per_image(window.arch, window.batch_size)
        achieved = {"ours": w["ours"].best * flop, "conventional": w["conventional"].best * flop}
        figures[window.arch]["flops"] = {"per_image": flop, "achieved_best": achieved,
                                         "precision": {"ours": ours_precision, "conventional": "fp32"}}
        echo(f"  {window.arch:<9} batch {window.batch_size}, {window.images} images x {window.repeats}: "
             f"ours {w['ours'].best:,.0f} / {w['ours'].median:,.0f}   conventional {w['conventional'].best:,.0f} / "
             f"{w['conventional'].median:,.0f}   ratio {best:.2f}x / {median:.2f}x")
        attainable = figures["limits"]["attainable"]
        echo(f"  {'':<9} {flop / 1e9:.3f} GFLOP per image: ours {achieved['ours'] / 1e9:,.0f} GFLOP/s "
             f"({100 * achieved['ours'] / attainable[ours_precision]:.0f}% of attainable {ours_precision}), conventional "
             f"{achieved['conventional'] / 1e9:,.0f} ({100 * achieved['conventional'] / attainable['fp32']:.0f}% of fp32)")
    return figures


def echo_limits(found: dict, echo: Echo) -> None:
    """The device's limits in a line per precision: the peak (CPUs) and the attainable (matrix products)."""
    cpu = found.get("cpu")
    if cpu:
        echo(f"\nlimits: {cpu['model']}, {cpu['cores']} cores at {cpu['mhz']} MHz (as /proc/cpuinfo reports; "
             f"turbo may run faster), GFLOP/s:")
    else:
        echo("\nlimits, GFLOP/s:")
    for name, flops in found["attainable"].items():
        peak = (found.get("peak") or {}).get(name)
        peak_text = f"peak {peak / 1e9:,.0f} ({found['flops_per_cycle_per_core'][name]} FLOP/cycle/core), " if peak else ""
        echo(f"  {name}: {peak_text}attainable {flops / 1e9:,.0f} (best {found['matmul_size']}-square matrix product)")


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

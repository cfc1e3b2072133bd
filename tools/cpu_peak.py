"""How far training is from the CPU's limit: peak FLOP/s, attainable FLOP/s and FLOP per training image.

    PYTHONPATH=. python tools/cpu_peak.py                 # a table on stdout
    PYTHONPATH=. python tools/cpu_peak.py --json out.json

Three figures per precision (fp32, bf16):
- the peak: cores x clock x FLOP per cycle per core, from the vector units the CPU flags name
  (AVX-512: two 512-bit FMA pipes, 64 fp32 FLOP a cycle; AVX512_BF16's dot products twice that;
  AMX tiles 1,024 bf16 FLOP a cycle). The clock is what /proc/cpuinfo reports, which on a
  virtual machine is the nominal one, so the peak is a bound, not a promise;
- the attainable: the best of several large matrix products (oneDNN through torch), the most
  this torch gets from the machine;
- the FLOP of one training step (forward and backward) per image, counted by torch's
  `FlopCounterMode` (convolutions and matrix products; batch norm and activations are not counted)
  for the architectures `bench bench` times (tiny_cnn at width 32, ResNet-18),
  so that images/s from `bench bench` times this is the achieved FLOP/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.registry import ARCHS

MATMUL_SIZE = 2048  # large enough for oneDNN's best kernel, small enough to repeat in a second
BATCH = 128  # the batch `bench bench` trains with


def cpu_facts() -> dict:
    """Model, cores, clock (MHz) and the flags that decide the vector units."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", info)
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", info)
    flags = set(re.search(r"flags\s*:\s*(.+)", info).group(1).split()) if "flags" in info else set()
    return {"model": model.group(1) if model else platform.processor(), "cores": os.cpu_count() or 1,
            "mhz": float(mhz.group(1)) if mhz else None,
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def flops_per_cycle(facts: dict) -> dict[str, int]:
    """Per core: fp32 FMA lanes x 2 FLOP x 2 pipes; bf16 doubles them with AVX512_BF16, AMX far more."""
    fp32 = (16 if facts["avx512f"] else 8) * 2 * 2
    if facts["amx_bf16"]:
        bf16 = 1024  # one 16x32 by 32x16 bf16 tile product (16,384 FLOP) every 16 cycles
    elif facts["avx512_bf16"]:
        bf16 = 2 * fp32  # VDPBF16PS: two bf16 products summed into each fp32 lane
    else:
        bf16 = 0  # no native bf16: torch emulates it, slower than fp32
    return {"fp32": fp32, "bf16": bf16}


def attainable(dtype: torch.dtype, repeats: int = 10) -> float:
    """Best FLOP/s of MATMUL_SIZE-square products in `dtype`."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    torch.mm(a, b)  # warm-up: oneDNN picks and builds its kernel
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best


def training_flops_per_image(arch: str) -> float:
    """FLOP of one forward and backward pass per image at BATCH, counted by torch."""
    model = ARCHS.create(arch, num_classes=10).train()
    x, y = torch.rand(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / BATCH


def measure() -> dict:
    facts = cpu_facts()
    per_cycle = flops_per_cycle(facts)
    peak = {p: facts["cores"] * facts["mhz"] * 1e6 * f if facts["mhz"] else None for p, f in per_cycle.items()}
    return {"cpu": facts, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "flops_per_cycle_per_core": per_cycle, "peak_flops": peak,
            "attainable_flops": {"fp32": attainable(torch.float32), "bf16": attainable(torch.bfloat16)},
            "training_flops_per_image": {arch: training_flops_per_image(arch) for arch in ("tiny_cnn", "resnet18")}}


def table(figures: dict) -> str:
    cpu = figures["cpu"]
    lines = [f"{cpu['model']}, {cpu['cores']} cores at {cpu['mhz']} MHz, {figures['threads']} torch threads, "
             f"torch {figures['torch']}", "", "| precision | peak GFLOP/s | attainable (matmul) GFLOP/s |", "|---|---:|---:|"]
    for p in ("fp32", "bf16"):
        peak = figures["peak_flops"][p]
        lines.append(f"| {p} | {peak / 1e9:,.0f} | {figures['attainable_flops'][p] / 1e9:,.0f} |" if peak
                     else f"| {p} | - | {figures['attainable_flops'][p] / 1e9:,.0f} |")
    lines += ["", "| arch | training GFLOP per image (forward + backward) |", "|---|---:|"]
    lines += [f"| {a} | {f / 1e9:.3f} |" for a, f in figures["training_flops_per_image"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = measure()
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

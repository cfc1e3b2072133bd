"""How far training is from the machine's limit: peak and attainable FLOP/s, and FLOP per training image.

Three figures per precision (fp32, bf16), so that images/s times FLOP per image is a fraction of a limit:

- the peak: cores x clock x FLOP per cycle per core, from the vector units the CPU flags name
  (AVX-512: two 512-bit FMA pipes, 64 fp32 FLOP a cycle; AVX512_BF16's dot products twice that;
  AMX tiles 1,024 bf16 FLOP a cycle). The clock is what /proc/cpuinfo reports, on a virtual machine
  the nominal one, below what the cores reach under turbo, so a measured figure can exceed it;
- the attainable: the best of several large matrix products (oneDNN through torch), the most this
  torch gets from the machine in that precision (on CUDA, the only one of the three);
- the FLOP of one training step (forward and backward) per image, counted by torch's
  `FlopCounterMode` (convolutions and matrix products; batch norm, activations and the optimizer are
  not counted, so achieved FLOP/s count useful work only).
"""
from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.perf.timing import synchronize
from bench.registry import ARCHS

MATMUL_SIZE = 2048  # large enough for oneDNN's best kernel, small enough to repeat in a second
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpu_facts() -> dict:
    """Model, cores, clock (MHz) and the flags that decide the vector units."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", info)
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", info)
    found = re.search(r"flags\s*:\s*(.+)", info)
    flags = set(found.group(1).split()) if found else set()
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


def peak_flops(facts: dict) -> dict[str, float | None]:
    """cores x clock x FLOP per cycle, per precision (None where the clock is unknown or bf16 is emulated)."""
    per_cycle = flops_per_cycle(facts)
    return {p: facts["cores"] * facts["mhz"] * 1e6 * f if facts["mhz"] and f else None for p, f in per_cycle.items()}


def attainable_flops(dtype: torch.dtype, device: torch.device, repeats: int = 10, size: int = MATMUL_SIZE) -> float:
    """Best FLOP/s of `size`-square matrix products in `dtype` on `device`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: oneDNN (or cuBLAS) picks and builds its kernel
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops_per_image(arch: str, batch: int = 128, image_size: int = 32) -> float:
    """FLOP of one forward and backward pass per image at `batch`, counted by torch (the arch's defaults)."""
    model = ARCHS.create(arch, num_classes=10).train()
    x, y = torch.rand(batch, 3, image_size, image_size), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def limits(device: torch.device, size: int = MATMUL_SIZE, repeats: int = 10) -> dict:
    """The device's limits per precision: `peak` (CPUs only) and `attainable` FLOP/s."""
    out: dict = {"matmul_size": size,
                 "attainable": {p: attainable_flops(d, device, repeats, size) for p, d in PRECISIONS.items()}}
    if device.type == "cpu":
        facts = cpu_facts()
        out.update(cpu=facts, flops_per_cycle_per_core=flops_per_cycle(facts), peak=peak_flops(facts))
    return out

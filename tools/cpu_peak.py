"""How far training is from the CPU's limit: peak FLOP/s, attainable FLOP/s and FLOP per training image.

    PYTHONPATH=. python tools/cpu_peak.py                 # a table on stdout
    PYTHONPATH=. python tools/cpu_peak.py --json out.json

The figures are `bench.perf.peak`'s (its docstring says how each is made); `bench bench` prints the
same limits before its training part, and the achieved FLOP/s of each loop beside them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.perf.peak import limits, training_flops_per_image

ARCHS = ("tiny_cnn", "resnet18")  # those `bench bench` times, at their default widths


def table(figures: dict) -> str:
    cpu = figures["cpu"]
    lines = [f"{cpu['model']}, {cpu['cores']} cores at {cpu['mhz']} MHz, {figures['threads']} torch threads, "
             f"torch {figures['torch']}", "", "| precision | peak GFLOP/s | attainable (matmul) GFLOP/s |", "|---|---:|---:|"]
    for p, flops in figures["attainable"].items():
        peak = figures["peak"][p]
        lines.append(f"| {p} | {f'{peak / 1e9:,.0f}' if peak else '-'} | {flops / 1e9:,.0f} |")
    lines += ["", "| arch | training GFLOP per image (forward + backward) |", "|---|---:|"]
    lines += [f"| {a} | {f / 1e9:.3f} |" for a, f in figures["training_flops_per_image"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = {**limits(torch.device("cpu")), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "training_flops_per_image": {arch: training_flops_per_image(arch) for arch in ARCHS}}
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""Does a bf16 surrogate change an attack's efficacy? Measure it (docs/attacks.md, "bf16 surrogates").

For each model-based attack at the smoke grid's CPU settings, generate the poison of 2,000
CIFAR-10 training images with the surrogate in bf16 autocast and in fp32, for three seeds, and
train the same fp32 victim (tiny_cnn, width 16, `cpu_smoke` for 8 epochs, the smoke grid's) on
each; print one JSON line per run and a table of mean and spread. bf16 is forced for the generation
even where the precision rule (`bench.train.precision_for`) would run fp32, so run it on a CPU that
computes bf16 natively (AVX512_BF16 or AMX); each line names the CPU.

    PYTHONPATH=. python tools/bf16_effect.py [--attacks em,tap,miue,rem] [--seeds 0,1,2] > runs.jsonl
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from unittest import mock

import torch

import bench.train
from bench.context import RunContext
from bench.data import DataSpec, load_dataset
from bench.environment import cpu_name
from bench.registry import ARCHS, ATTACKS
from bench.train import RECIPES, train_model

# The smoke grid's attack settings (bench/grids/smoke.toml), and REM's CPU preset as it ships.
SETTINGS = {
    "em": {"preset": "cpu", "steps": 10, "max_rounds": 8},
    "tap": {"preset": "cpu", "surrogate_width": 16, "surrogate_epochs": 8, "steps": 10},
    "miue": {"preset": "cpu", "epochs": 6, "steps": 5},
    "rem": {"preset": "cpu"},
}


def run(attack: str, seed: int, bf16: bool, data, victim_recipe) -> dict:
    start = time.perf_counter()
    # bf16 where the config asks for it, whatever the precision rule says of this CPU; the victim
    # below trains in fp32 either way, so only the surrogate differs.
    with mock.patch.object(bench.train, "cpu_computes_bf16", lambda: True):
        made = ATTACKS.create(attack, {**SETTINGS[attack], "bf16": bf16})
        precision = made.precision(torch.device("cpu"))
        poison = made(data.train, RunContext(seed=seed))
    generate_s = time.perf_counter() - start
    torch.manual_seed(seed)
    victim = ARCHS.create("tiny_cnn", {"width": 16}, num_classes=data.train.num_classes)
    result = train_model(victim, data.train.with_images(poison.images), data.test, victim_recipe, seed=seed)
    return {"attack": attack, "seed": seed, "generation": precision, "victim": result.precision,
            "test_acc_last": result.test_acc_last, "test_acc_best": result.test_acc_best,
            "generate_s": round(generate_s, 1), "cpu": cpu_name()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", default="em,tap,miue,rem")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    data = load_dataset(DataSpec(name="cifar10", train_size=2000, test_size=1000))
    recipe = replace(RECIPES["cpu_smoke"], epochs=8, bf16=False)
    rows = []
    for attack in args.attacks.split(","):
        for seed in map(int, args.seeds.split(",")):
            for bf16 in (True, False):
                rows.append(run(attack, seed, bf16, data, recipe))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| attack | bf16 surrogate | fp32 surrogate | difference |\n|---|---:|---:|---:|", file=sys.stderr)
    for attack in dict.fromkeys(r["attack"] for r in rows):
        by = {p: [100 * r["test_acc_last"] for r in rows if r["attack"] == attack and r["generation"] == p]
              for p in ("bf16", "fp32")}
        cells = [f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}" for v in by.values()]
        print(f"| {attack} | {cells[0]} | {cells[1]} | {statistics.mean(by['bf16']) - statistics.mean(by['fp32']):+.2f} |",
              file=sys.stderr)


if __name__ == "__main__":
    main()

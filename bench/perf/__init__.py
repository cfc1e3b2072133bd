"""Speed, measured: our training loop beside the conventional one, and the other costs of a cell.

`bench bench` prints these figures on the device it finds, and `tests/benchmarks` track them with
pytest-benchmark; both measure with the code here. Two contenders that are compared (our loop and
the conventional one, set-level JPEG and PIL) run in alternation, window after window, so that
load from other processes falls on both alike; each figure is the best and the median window.

The modules, each importing only those listed before it:

    timing     clocks that wait for the device; contenders in alternation (`alternate`, `Windows`, `ratio`)
    peak       the device's limits (peak FLOP/s from a CPU's cores, clock and vector units; the attainable
               from large matrix products) and the FLOP of a training step per image, counted by torch
    inputs     what is measured on: CIFAR-10 images or random ones, synthetic records
    loops      our training loop and the conventional one (EM's, REM's, TAP's, APBench's), torch.compile's
               cost, one 60-epoch cell
    workloads  set-level JPEG beside PIL, the set-level defenses, one generation of each attack, the report
    processes  what needs fresh processes: the peak memory of a generation, several trainings at once;
               `python -m bench.perf memory|train ...` (`__main__.py`) runs their children
    parts      the plan for a device and the parts of `bench bench`, each measuring, printing and returning
               its figures; `run_benchmarks`

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
from bench.perf.inputs import head, synthetic_records, synthetic_set, training_images
from bench.perf.loops import (SPEED_RECIPE, ConventionalLoop, InMemoryCIFAR10, OurLoop, compile_cost,
                              conventional_transform, full_cell, training_throughput)
from bench.perf.peak import attainable_flops, cpu_facts, limits, peak_flops, training_flops_per_image
from bench.perf.parts import PARTS, Plan, TrainingWindow, device_name, parse_parts, plan_for, run_benchmarks
from bench.perf.processes import concurrent_training, peak_memory
from bench.perf.timing import Windows, alternate, ratio, seconds_of, synchronize, synchronized
from bench.perf.workloads import (ONE_ROUND, ONE_STEP, defense_seconds, generate, generation_attacks,
                                  generation_seconds, jpeg_speed, pil_jpeg, preset_overrides, report_seconds,
                                  set_level_defenses)

__all__ = [
    "head", "synthetic_records", "synthetic_set", "training_images",
    "SPEED_RECIPE", "ConventionalLoop", "InMemoryCIFAR10", "OurLoop", "compile_cost", "conventional_transform",
    "full_cell", "training_throughput",
    "PARTS", "Plan", "TrainingWindow", "device_name", "parse_parts", "plan_for", "run_benchmarks",
    "concurrent_training", "peak_memory",
    "Windows", "alternate", "ratio", "seconds_of", "synchronize", "synchronized",
    "ONE_ROUND", "ONE_STEP", "defense_seconds", "generate", "generation_attacks", "generation_seconds", "jpeg_speed",
    "pil_jpeg", "preset_overrides", "report_seconds", "set_level_defenses",
]

"""Measurements that need fresh processes: the peak memory of a generation, several trainings on one device.

The parent side (`peak_memory`, `concurrent_training`) starts `python -m bench.perf memory|train
...` and reads the child's JSON from its last line; the child side (`CHILDREN`, run by
`bench/perf/__main__.py`) reads the same arguments back. Both sides are here, so they stay in step.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

import torch

from bench.perf.inputs import head, synthetic_set, training_images
from bench.perf.loops import SPEED_RECIPE
from bench.perf.timing import seconds_of
from bench.perf.workloads import generate
from bench.registry import ARCHS
from bench.train import train_model

CHILD = [sys.executable, "-m", "bench.perf"]  # the child processes' command; `__main__.py` runs CHILDREN


def peak_memory(name: str, n: int, overrides: Mapping, device: str = "cpu", real: bool = False,
                timeout_s: float = 3600) -> dict:
    """Peak host RSS and CUDA memory (allocated and reserved) of generating attack `name` on `n` images.

    Runs in a fresh process, so that the peak is this generation's alone. The images are random
    CIFAR-sized ones (their content does not change the memory) unless `real`, which takes the
    first `n` CIFAR-10 training images (for a timed run that must stop where the attack does).
    """
    command = [*CHILD, "memory", name, str(n), json.dumps(dict(overrides)), device, "real" if real else "random"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_memory(args: list[str]) -> None:
    """The child of `peak_memory`: NAME N OVERRIDES_JSON DEVICE real|random."""
    name, n, overrides, device, images = args[0], int(args[1]), json.loads(args[2]), args[3], args[4]
    os.environ.setdefault("TQDM_DISABLE", "1")
    data = training_images(n, torch.device(device), lambda line: None) if images == "real" else synthetic_set(n, device)
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
    command = [*CHILD, "train", arch, str(n), str(device), str(epochs), str(copies)]
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


def _train_copy(args: list[str]) -> None:
    """One copy of `concurrent_training`: get ready, say so, wait for "go", train, print images/s.

    Arguments: ARCH N DEVICE EPOCHS COPIES.
    """
    arch, n, device, epochs, copies = args[0], int(args[1]), torch.device(args[2]), int(args[3]), int(args[4])
    if device.type == "cpu":  # share the cores, as cells of a CPU pool do
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // copies))
    data = training_images(n, device, lambda line: None)
    torch.manual_seed(0)
    model = ARCHS.create(arch, num_classes=data.num_classes)
    print("ready", flush=True)
    sys.stdin.readline()
    result = train_model(model, data, head(data, 8), replace(SPEED_RECIPE, epochs=epochs))
    print(json.dumps({"images_per_second": result.images_per_second}), flush=True)


# `python -m bench.perf WHAT ARGS...`: the child processes above, by the first argument.
CHILDREN: dict[str, Callable[[list[str]], None]] = {"memory": _measure_memory, "train": _train_copy}

"""Clocks that wait for the device, and contenders timed in alternation.

Two contenders that are compared run window after window in turn, so that load from other
processes falls on both alike; each figure is the best and the median window.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch


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

"""The other costs of a cell: set-level JPEG beside PIL, the defenses, one generation of each attack, the report.

Attacks are timed at settings they declare themselves, beside their `cpu` preset (see
`preset_overrides` and the package docstring): perf keeps no table of attack names.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from PIL import Image

from bench.config import ConfigError
from bench.context import RunContext
from bench.data import ImageSet
from bench.perf.timing import Windows, alternate, seconds_of
from bench.registry import ATTACKS, DEFENSES
from defenses.base import create_defense

# The presets an attack with rounds declares for perf, each complete on its own (see the package docstring).
ONE_ROUND = "one_round"  # one generation round: the time of generation
ONE_STEP = "one_step"  # one round with one step per batch: peak memory, which the data and one batch set


def pil_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG one image at a time through PIL, as a per-image transform would: the baseline for set-level JPEG."""
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


def preset_overrides(name: str, device: torch.device, preset: str = ONE_ROUND) -> dict:
    """Config overrides of attack `name` for a measurement: on a CPU its `cpu` preset then `preset`, on CUDA `preset`.

    An attack that does not declare `preset` has no rounds to cut (the model-free ones): it runs
    at its full settings, or at its `cpu` preset on a CPU where it has one.
    """
    presets = ATTACKS.get(name).presets
    on_cpu = {"preset": "cpu"} if device.type == "cpu" and "cpu" in presets else {}
    return {**on_cpu, **presets.get(preset, {})}


def generation_attacks() -> list[str]:
    """The attacks that make a poison from the data with their default config: not one that needs
    more to run (external needs the path of a file to read; nothing to generate)."""
    return [name for name in ATTACKS.names() if _runs_with_defaults(name)]


def _runs_with_defaults(name: str) -> bool:
    try:
        ATTACKS.config(name)
    except ConfigError:
        return False
    return True


def generate(name: str, data: ImageSet, overrides: Mapping | None = None):
    """One poison of attack `name` (one round unless `overrides` say otherwise), in a scratch folder."""
    attack = ATTACKS.create(name, preset_overrides(name, data.device) if overrides is None else overrides)
    with tempfile.TemporaryDirectory() as scratch:
        ctx = RunContext(device=data.device, seed=0, cache_dir=Path(scratch) / "cache",
                         work_dir=Path(scratch) / "work", progress=False)
        return attack(data, ctx)


def generation_seconds(name: str, data: ImageSet) -> float:
    return seconds_of(lambda: generate(name, data), data.device)


def report_seconds(records: list) -> float:
    # Here for start-up cost: pandas would load in every child process of `bench.perf.processes`,
    # which imports this package, and add to the peak memory those children measure.
    from bench.report import write_report

    with tempfile.TemporaryDirectory() as out:
        return seconds_of(lambda: write_report(records, Path(out), "perf"))

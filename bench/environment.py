"""Where cells run and what produced them: device choice and the provenance every record carries.

The commands pick the device; the executors (a record for a cell no worker could run) and the
cell layer (every record) write the provenance, so both live below all of them.
"""
from __future__ import annotations

import platform
import socket
import subprocess
from pathlib import Path

import torch

from bench.config import ConfigError
from bench.train import cpu_has_amx, cpu_has_avx512_bf16
from bench.version import __version__


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def pick_device(name: str = "auto", option: str = "--device") -> torch.device:
    """`auto` (CUDA where there is one, else the CPU), `cpu`, `cuda` or `cuda:N`; ConfigError for
    anything else or for a GPU this machine does not have, before any work starts; the error names
    `option` (the command's `--device`, the API's `device`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option}: {name!r} is not a device; allowed: {DEVICE_NAMES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{option}: {name!r} is not supported; allowed: {DEVICE_NAMES}")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if not count:
            raise ConfigError(f"{option}: {name!r}, but this machine has no CUDA device; use auto or cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{option}: {name!r}, but this machine has {count} CUDA device(s): "
                              + ", ".join(f"cuda:{i}" for i in range(count)))
    return device


def provenance(device: torch.device) -> dict:
    return {
        "package_version": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }


def cpu_name() -> str:
    """The CPU's model and the bf16 hardware it has: fp32 results differ between CPUs that sum in
    another order, so a figure names its CPU. (platform.processor() is empty on most Linux hosts.)"""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    native = [name for name, has in (("AMX", cpu_has_amx), ("AVX512_BF16", cpu_has_avx512_bf16)) if has()]
    return f"{model or 'cpu'}, {torch.get_num_threads()} threads" + (f", {' '.join(native)}" if native else "")


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]  # the checkout bench/ sits in
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None

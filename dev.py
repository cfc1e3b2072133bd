#!/usr/bin/env python3
"""Set up a virtual environment and run the main job or the tests.

    python3 dev.py smoke    # .venv, install what running needs, run the smoke grid, write its report
    python3 dev.py test     # .venv, install with dev extras, run the test suite
    python3 dev.py bench    # timings: pytest-benchmark over tests/benchmarks on this machine's device
    python3 dev.py setup    # only the environment

Needs nothing but Python 3.11+. The environment is (re)installed only when pyproject.toml or
constraints.txt changed; constraints.txt pins torch and torchvision to the versions this project
tests (the package itself accepts a range).
Extra arguments go to `bench run` (smoke) or pytest (test).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("BENCH_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
CONSTRAINTS = ROOT / "constraints.txt"


def sh(*args: str | Path) -> None:
    print("+", " ".join(map(str, args)), flush=True)
    code = subprocess.call([str(a) for a in args], cwd=ROOT)
    if code:
        sys.exit(code)


def setup(extras: str = "dev") -> None:
    """The environment with the package and `extras` ("dev": the test tools; "": what running needs)."""
    if sys.version_info < (3, 11):
        sys.exit(f"unlearnable-bench needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    stamp = VENV / ".bench-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()
    # The stamp names the files' hash and the extras installed; an install with the dev extras serves both.
    installed = stamp.read_text().split(":") if stamp.exists() else []
    if installed[:1] != [wanted] or (extras and extras not in installed[1:]):
        # Plain pip on purpose: it takes the pinned torch wheels from a local cache where there is one.
        # The package accepts a range of torch versions; constraints.txt pins the ones tested here.
        sh(BIN / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", CONSTRAINTS,
           "-e", f".[{extras}]" if extras else ".")
        kept = set(installed[1:]) if installed[:1] == [wanted] else set()
        stamp.write_text(":".join([wanted, *sorted(kept | {extras} - {""})]))


def main() -> None:
    task, *rest = sys.argv[1:] or ["help"]
    if task == "setup":
        setup()
    elif task == "smoke":
        setup(extras="")
        sh(BIN / "bench", "run", "--grid", "smoke", *rest)
        sh(BIN / "bench", "report", "--grid", "smoke")
    elif task == "bench":
        setup()
        sh(BIN / "python", "-m", "pytest", "tests/benchmarks", "--benchmark-enable", "-q", *rest)
    elif task == "test":
        setup()
        sh(BIN / "python", "-m", "pytest", *(rest or ["-q"]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

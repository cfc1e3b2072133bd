#!/usr/bin/env bash
# The one command to run when a GPU is lent: tools/device_check.py's steps, each under its own time
# cap, 9 minutes in all (docs/performance.md, "The device check").
#
#   tools/device_check.sh [--out DIR] [--steps loops,cell,...] [--cpu-smoke]
#
# DIR defaults to $OUT, else device_check/. BENCH_PYTHON is the Python to run (default python3, with
# torch installed); BENCH_CIFAR10 the CIFAR-10 .npz (x_train, y_train, x_test, y_test).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${BENCH_PYTHON:-python3}" tools/device_check.py "$@"

"""The device check: what to measure in the minutes a GPU is lent, in one command (`tools/device_check.sh`).

Steps, each in a child process of its own under a time cap of its own (`GPU.caps`, 9 minutes in
all); a step that fails or runs past its cap is recorded as such, with what it had measured by
then, and the next one starts:

    loops       our training loop beside the conventional one (bench.perf.training_throughput), ResNet-18,
                our loop in bf16 and in fp32 (the conventional one is fp32 in both)
    cell        one 60-epoch ResNet-18 cell (em60, clean) on all of CIFAR-10 (bench.perf.full_cell)
    em_round    one EM round at its official settings (`one_round`) on all of CIFAR-10
    memory      the peak memory of each attack's generation (`one_step`, 50,000 images, a process each)
    concurrent  1, 2 and 4 ResNet-18 trainings at once on the one GPU (bench.perf.concurrent_training)
    rehearsal   `bench run --grid paper --rehearse` on the device

It writes OUT/device_check.json (the device, torch, the date, and per step its status, seconds, cap
and figures), OUT/device_check.md (the same as tables) and OUT/logs/STEP.log (each step's output).

    tools/device_check.sh [--out DIR]         # on the GPU machine; DIR defaults to $OUT, else device_check
    tools/device_check.sh --cpu-smoke         # every step shrunk to seconds on the CPU: a test of this script

`--cpu-smoke` runs tiny_cnn on a hundred-odd images, one attack's memory and a one-combination
rehearsal: figures of no use beyond showing that each step runs and is written down.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the project is imported from the tree
    sys.path.insert(0, str(ROOT))

STEPS = ("loops", "cell", "em_round", "memory", "concurrent", "rehearsal")
GIB = 2 ** 30


@dataclass(frozen=True)
class Scale:
    """How much each step measures, and its cap in seconds."""

    arch: str  # the model of loops, cell and concurrent
    loop_images: int  # per timed window
    loop_repeats: int  # timed windows per loop and precision
    loop_workers: int  # the conventional loop's DataLoader workers
    cell_data: dict  # bench.data.DataSpec fields of the cell ({}: all of CIFAR-10)
    cell_epochs: int
    em_images: int  # CIFAR-10 training images EM's round runs on
    memory_images: int
    memory_attacks: int | None  # the first this many attacks (None: every one)
    concurrent_images: int
    concurrent_copies: tuple[int, ...]
    concurrent_epochs: int  # each copy's; the first is left out of its images/s
    rehearsal_args: tuple[str, ...]  # after `bench run --grid paper --rehearse`
    caps: dict = field(default_factory=dict)  # step -> seconds


# 530 s of caps: the 9 minutes of a lent GPU's 15, with the rest left for start-up and a rerun.
GPU = Scale("resnet18", 25_000, 2, 8, {}, 60, 50_000, 50_000, None, 25_000, (1, 2, 4), 3, (),
            {"loops": 100, "cell": 120, "em_round": 50, "memory": 90, "concurrent": 70, "rehearsal": 100})
CPU_SMOKE = Scale("tiny_cnn", 128, 1, 0, {"train_size": 128, "test_size": 50}, 1, 64, 64, 1, 128, (1, 2), 2,
                  ("--attacks", "clean", "--defenses", "none"), {step: 120 for step in STEPS})
SCALES = {"gpu": GPU, "cpu-smoke": CPU_SMOKE}


# --- the steps, each run in a child process: `device_check.py --step NAME` -------------------------------

Report = Callable[[dict], None]  # the figures so far, written at once so that a step cut at its cap keeps them


def step_loops(scale: Scale, device, report: Report) -> dict:
    from bench.perf import SPEED_RECIPE, ratio, training_images, training_throughput

    data = training_images(scale.loop_images, device, print)
    figures = {}
    for name, bf16 in (("bf16", True), ("fp32", False)):
        w = training_throughput(scale.arch, data, scale.loop_repeats, scale.loop_workers, replace(SPEED_RECIPE, bf16=bf16))
        best, median = ratio(w["ours"], w["conventional"])
        figures[name] = {"ours": w["ours"].best, "conventional": w["conventional"].best, "ratio_best": best,
                         "ratio_median": median, "images": scale.loop_images, "arch": scale.arch}
        report(figures)
    return figures


def step_cell(scale: Scale, device, report: Report) -> dict:
    from bench.data import DataSpec
    from bench.perf import full_cell
    from bench.train import RECIPES

    start = time.perf_counter()
    epochs: list = []

    def on_epoch(record: dict) -> None:
        epochs.append(record["epoch"])
        report({"epochs_done": len(epochs), "of": scale.cell_epochs, "seconds_so_far": time.perf_counter() - start})

    recipe = replace(RECIPES["em60"], epochs=scale.cell_epochs)
    return {**full_cell(device, DataSpec(**scale.cell_data), scale.arch, recipe, on_epoch=on_epoch),
            "epochs": scale.cell_epochs, "arch": scale.arch}


def step_em_round(scale: Scale, device, report: Report) -> dict:
    from bench.perf import ONE_ROUND, peak_memory, preset_overrides

    overrides = preset_overrides("em", device, ONE_ROUND)  # official settings on CUDA, the cpu preset's on a CPU
    return {**peak_memory("em", scale.em_images, overrides, str(device), real=True, timeout_s=scale.caps["em_round"]),
            "overrides": overrides}


def step_memory(scale: Scale, device, report: Report) -> dict:
    from bench.perf import ONE_STEP, generation_attacks, peak_memory, preset_overrides

    figures: dict = {}
    for name in generation_attacks()[: scale.memory_attacks]:
        try:
            figures[name] = peak_memory(name, scale.memory_images, preset_overrides(name, device, ONE_STEP), str(device),
                                        timeout_s=scale.caps["memory"])
        except Exception as err:  # one attack's failure is its figure; the others are still measured
            figures[name] = {"error": _one_line(err)}
        report(figures)
    return figures


def step_concurrent(scale: Scale, device, report: Report) -> dict:
    from bench.perf import concurrent_training

    figures: dict = {}
    for copies in scale.concurrent_copies:
        figures[str(copies)] = concurrent_training(scale.arch, scale.concurrent_images, device, copies,
                                                   scale.concurrent_epochs, timeout_s=scale.caps["concurrent"])
        report(figures)
    return figures


def step_rehearsal(scale: Scale, device, report: Report) -> dict:
    command = [sys.executable, "-c", "from bench.cli import main; main()", "run", "--grid", "paper", "--rehearse",
               "--device", str(device), *scale.rehearsal_args]
    start = time.perf_counter()
    lines, failed = [], []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip())
            failed += [line.rstrip()] if line.startswith("FAILED") else []
            passed = sum(item.startswith("passed") for item in lines)
            report({"passed": passed, "failed": failed, "seconds_so_far": time.perf_counter() - start})
    passed = sum(item.startswith("passed") for item in lines)
    if proc.returncode not in (0, 1) or passed + len(failed) == 0:  # 1: some combination failed, listed
        raise RuntimeError(f"the rehearsal exited {proc.returncode}: {lines[-1] if lines else 'no output'}")
    return {"passed": passed, "failed": failed, "combinations": passed + len(failed),
            "seconds": time.perf_counter() - start}


STEP_FUNCTIONS = {"loops": step_loops, "cell": step_cell, "em_round": step_em_round, "memory": step_memory,
                  "concurrent": step_concurrent, "rehearsal": step_rehearsal}


def run_step(name: str, scale_name: str, device: str, result: Path) -> None:
    """The child's side: run one step, writing its figures to `result` as they come and at the end."""
    import torch

    def report(figures: dict) -> None:
        result.write_text(json.dumps(figures, default=str))

    figures = STEP_FUNCTIONS[name](SCALES[scale_name], torch.device(device), report)
    report(figures)


# --- the parent: every step under its cap, then the JSON and the Markdown -------------------------------

def run_all(scale_name: str, out: Path, device: str, steps: tuple[str, ...] = STEPS, echo=print) -> dict:
    """Each step in a child process under its cap; the JSON and Markdown written after each step."""
    import torch

    from bench.perf import device_name

    scale = SCALES[scale_name]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(device)
    summary = {"device": device_name(torch_device), "torch": torch.__version__, "mode": scale_name,
               "date": datetime.date.today().isoformat(), "caps_s": scale.caps, "steps": {}}
    for name in steps:
        echo(f"{name}: up to {scale.caps[name]} s ...")
        summary["steps"][name] = outcome = _child(name, scale_name, device, out, scale.caps[name])
        echo(f"{name}: {outcome['status']} in {outcome['seconds']:.0f} s"
             + (f": {outcome['error']}" if outcome.get("error") else ""))
        write(summary, out)
    return summary


def _child(name: str, scale_name: str, device: str, out: Path, cap: float) -> dict:
    result = out / "logs" / f"{name}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--scale", scale_name,
               "--device", device, "--result", str(result)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with open(out / "logs" / f"{name}.log", "w") as log:
        # A session of its own, so that a step cut at its cap takes its children (memory, concurrent) with it.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            proc.wait(timeout=cap)
            status = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = "timed out"
    outcome = {"status": status, "seconds": time.perf_counter() - start, "cap_s": cap,
               "figures": json.loads(result.read_text()) if result.is_file() else {}}
    if status == "failed":
        outcome["error"] = _last_error(out / "logs" / f"{name}.log")
    elif status == "timed out":
        outcome["error"] = f"ran past its cap of {cap:.0f} s; the figures are what it had measured by then"
    return outcome


def _last_error(log: Path) -> str:
    """The last line of a failed step's log that names an error (the exception line of its traceback)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:300]


def _one_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:300]


def write(summary: dict, out: Path) -> None:
    (out / "device_check.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "device_check.md").write_text(markdown(summary))


def markdown(summary: dict) -> str:
    """The summary as Markdown: a table of the steps, then the peak memory of each attack."""
    lines = [f"# Device check: {summary['device']}", "",
             f"torch {summary['torch']}, {summary['date']}, mode {summary['mode']}", "",
             "| step | status | seconds (cap) | figures |", "|---|---|---|---|"]
    for name, outcome in summary["steps"].items():
        text = FIGURES_TEXT[name](outcome["figures"]) if outcome["figures"] else ""
        if outcome.get("error"):
            text = f"{text}; {outcome['error']}" if text else outcome["error"]
        lines.append(f"| {name} | {outcome['status']} | {outcome['seconds']:.0f} ({outcome['cap_s']:.0f}) | "
                     f"{text.replace('|', '/')} |")
    memory = summary["steps"].get("memory", {}).get("figures", {})
    if memory:
        lines += ["", "| attack | host peak, GiB | GPU allocated, GiB | GPU reserved, GiB | seconds |", "|---|---|---|---|---|"]
        for attack, m in memory.items():
            lines.append(f"| {attack} | " + (f"{m['error']} | | | |" if "error" in m else
                         f"{m['peak_rss_bytes'] / GIB:.2f} | {_gib(m.get('peak_cuda_bytes'))} | "
                         f"{_gib(m.get('peak_cuda_reserved_bytes'))} | {m['seconds']:.1f} |"))
    return "\n".join(lines) + "\n"


def _gib(value) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def _loops_text(f: dict) -> str:
    return "; ".join(f"{p}: ours {v['ours']:,.0f} img/s, conventional {v['conventional']:,.0f}, {v['ratio_best']:.2f}x"
                     for p, v in f.items())


def _cell_text(f: dict) -> str:
    if "seconds" not in f:
        return f"{f.get('epochs_done', 0)} of {f.get('of', '?')} epochs in {f.get('seconds_so_far', 0):.0f} s"
    return (f"{f['epochs']} epochs of {f['arch']} in {f['seconds']:.0f} s, {f['images_per_second']:,.0f} img/s, "
            f"{f['precision']}, test accuracy {100 * f['test_acc_last']:.2f}%")


def _em_text(f: dict) -> str:
    return f"{f['seconds']:.0f} s on {f['images']:,} images, host {f['peak_rss_bytes'] / GIB:.2f} GiB" + (
        f", GPU {_gib(f['peak_cuda_reserved_bytes'])} GiB reserved" if f.get("peak_cuda_reserved_bytes") else "")


def _memory_text(f: dict) -> str:
    failed = [name for name, m in f.items() if "error" in m]
    return f"{len(f) - len(failed)} attacks measured (table below)" + (f", failed: {', '.join(failed)}" if failed else "")


def _concurrent_text(f: dict) -> str:
    alone = f.get("1", {}).get("aggregate")
    return "; ".join(f"{copies} at once: {run['aggregate']:,.0f} img/s" + (f" ({run['aggregate'] / alone:.2f}x)" if alone else "")
                     for copies, run in f.items())


def _rehearsal_text(f: dict) -> str:
    done = f.get("combinations", f.get("passed", 0) + len(f.get("failed", [])))
    text = f"{f.get('passed', 0)} of {done} combinations passed"
    return text + (f"; {'; '.join(f['failed'][:5])}" if f.get("failed") else "")


FIGURES_TEXT = {"loops": _loops_text, "cell": _cell_text, "em_round": _em_text, "memory": _memory_text,
                "concurrent": _concurrent_text, "rehearsal": _rehearsal_text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "device_check"),
                        help="where the JSON, the Markdown and the logs go (default: $OUT, else device_check)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every step shrunk to seconds on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --cpu-smoke")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"a comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--scale", choices=SCALES, default="gpu", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        run_step(args.step, args.scale, args.device, args.result)
        return 0
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown step {unknown[0]!r}; allowed: {', '.join(STEPS)}")
    scale = "cpu-smoke" if args.cpu_smoke else "gpu"
    summary = run_all(scale, args.out, args.device or ("cpu" if args.cpu_smoke else "cuda"), steps)
    print(f"wrote {args.out / 'device_check.json'} and {args.out / 'device_check.md'}")
    return 0 if all(o["status"] == "ok" for o in summary["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

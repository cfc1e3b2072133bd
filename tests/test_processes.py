"""Processes, for real: two runs on one results folder split the work; a kill leaves nothing stuck or running."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.store import Store
from test_cli import ROOT, write_grid


def start(*args: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", *args, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def trained_lines(text: str) -> list[str]:
    return re.findall(r"cell ([0-9a-f]{16}) \([^)]*\): test acc", text)


def test_two_runs_on_one_results_folder_split_the_cells(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean", "random_noise", "ops"], ("none", "jpeg"), epochs=3)
    out = tmp_path / "out"
    first, second = start("--grid", str(grid), out=out), start("--grid", str(grid), out=out)
    logs = [proc.communicate(timeout=600) for proc in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, logs
    ran = [trained_lines(err) for _, err in logs]
    assert sorted(ran[0] + ran[1]) == sorted({cell for cells in ran for cell in cells}), "no cell ran twice"
    assert len(ran[0]) + len(ran[1]) == 6 and len(list((out / "records").glob("*.json"))) == 6
    assert all(json.loads(p.read_text())["status"] == "done" for p in (out / "records").glob("*.json"))


def test_a_cell_held_by_a_killed_run_is_free_at_once(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"], epochs=400)  # long enough to be killed mid-cell
    out = tmp_path / "out"
    holder = start("--grid", str(grid), out=out)
    store = Store(out)
    wait_until(lambda: list(store.claims_dir.glob("*.lock")) and "pid" in store.claim_holder(
        next(store.claims_dir.glob("*.lock")).stem), 120, "the first run to claim its cell")
    cell_id = next(store.claims_dir.glob("*.lock")).stem
    assert store.claim(cell_id) is None, "held by the running process"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    claim = store.claim(cell_id)
    assert claim is not None, "the kernel released the killed process's claim"
    claim.release()


def test_killing_the_driver_leaves_no_worker_processes(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean", "random_noise"], ("none", "jpeg"), epochs=400)
    driver = start("--grid", str(grid), "--workers", "2", out=tmp_path / "out")
    wait_until(lambda: len(list((tmp_path / "out" / "records" / ".claims").glob("*.lock"))) >= 2, 180,
               "both workers to start a cell")
    workers = [pid for pid in children(driver.pid) if "bench" in Path(f"/proc/{pid}/cmdline").read_text()
               or "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert workers, "the pool has worker processes"
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    wait_until(lambda: not any(alive(pid) for pid in workers), 30, "the workers to end with their driver")

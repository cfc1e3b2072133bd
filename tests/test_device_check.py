"""tools/device_check.sh on the CPU (`--cpu-smoke`): every step runs in its own process and lands in
the JSON and the Markdown; a step that fails or runs past its cap is recorded and the next one runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import device_check  # noqa: E402  (tools/ is not a package)


@pytest.mark.slow
def test_the_cpu_smoke_run_writes_every_step_to_the_json_and_the_markdown(tmp_path, cifar10_npz):
    out = tmp_path / "check"
    env = {**os.environ, "BENCH_CIFAR10": str(cifar10_npz), "BENCH_PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "tools" / "device_check.sh"), "--cpu-smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "device_check.json").read_text())
    assert summary["mode"] == "cpu-smoke" and summary["device"].startswith("CPU")
    assert list(summary["steps"]) == list(device_check.STEPS)
    for name, outcome in summary["steps"].items():
        assert outcome["status"] == "ok", (name, outcome, (out / "logs" / f"{name}.log").read_text()[-2000:])
        assert outcome["figures"], name
    figures = summary["steps"]
    assert set(figures["loops"]["figures"]) == {"bf16", "fp32"}
    assert figures["cell"]["figures"]["epochs"] == 1
    assert figures["rehearsal"]["figures"]["passed"] == 1 and figures["rehearsal"]["figures"]["failed"] == []
    assert list(figures["concurrent"]["figures"]) == ["1", "2"]
    text = (out / "device_check.md").read_text()
    assert text.startswith(f"# Device check: {summary['device']}")
    rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ")]
    assert [row for row in rows if row in device_check.STEPS] == list(device_check.STEPS)


def test_a_step_past_its_cap_or_failing_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    scale = device_check.CPU_SMOKE
    caps = {**scale.caps, "loops": 0.01, "cell": 60}
    monkeypatch.setitem(device_check.SCALES, "cpu-smoke", device_check.replace(scale, caps=caps))
    monkeypatch.setenv("BENCH_CIFAR10", str(tmp_path / "missing.npz"))  # the cell cannot load its data
    summary = device_check.run_all("cpu-smoke", tmp_path, "cpu", ("loops", "cell"), echo=lambda line: None)
    loops, cell = summary["steps"]["loops"], summary["steps"]["cell"]
    assert loops["status"] == "timed out" and "cap" in loops["error"]
    assert cell["status"] == "failed" and "missing.npz" in cell["error"]
    text = (tmp_path / "device_check.md").read_text()
    assert "| loops | timed out |" in text and "| cell | failed |" in text

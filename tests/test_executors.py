"""Executors and faults: every executor finishes a grid with the same store semantics; retries,
NaN losses, running out of GPU memory and damaged checkpoints end the way the runner promises."""
from __future__ import annotations

import importlib.util
import logging
import os

import pytest
import torch
from torch import nn

from bench.archs import Classifier
from bench.executors import make_executor
from bench.grid import parse_grid
from bench.registry import ARCHS, Entry
from bench.executors import run_grid
from bench.store import Store
from methods import bilevel


def tiny_grid(data, attacks=("clean", "random_noise"), defenses=("none", "jpeg"), arch="tiny_cnn", epochs=1, config=None):
    return parse_grid({
        "attacks": list(attacks), "defenses": list(defenses), "archs": [arch],
        "recipe": {"preset": "cpu_smoke", "epochs": epochs, "batch_size": 64}, "data": {"name": str(data)},
        "config": {**({"tiny_cnn": {"width": 8}} if arch == "tiny_cnn" else {}), **(config or {})},
    }, "g")


def needs(module: str):
    """Skip where an optional extra is missing, except in CI, which installs them and must run these."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {module} (pip install -e '.[dev]')")
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")


EXECUTORS = {
    "in-process": lambda: make_executor("local"),
    "local-pool": lambda: make_executor("local", workers=2),
    "ray": lambda: make_executor("ray"),
    "slurm": lambda: make_executor("slurm", cluster="local", gpus_per_task=0, cpus_per_task=1),
}


@pytest.fixture(scope="module")
def ray_instance():
    needs("ray")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("name", list(EXECUTORS))
def test_every_executor_finishes_a_grid_shares_poisons_and_never_reruns(name, tmp_path, tiny_npz, request):
    if name == "ray":
        request.getfixturevalue("ray_instance")
    if name == "slurm":
        needs("submitit")
    grid, store = tiny_grid(tiny_npz), Store(tmp_path / "out")
    counts = run_grid(grid, store, torch.device("cpu"), progress=False, executor=EXECUTORS[name]())
    records = list(store.records())
    assert counts == {"done": 4, "failed": 0, "skipped": 0}, [r.error for r in records]
    assert {r.status for r in records} == {"done"} and len(records) == 4
    # One poison per attack, made once and shared by both defenses' cells.
    files = [p.name for p in store.poisons_dir.glob("*.npy")]
    assert sum(not f.startswith("prepared-") for f in files) == 2, files
    assert sum(f.startswith("prepared-") for f in files) == 2, "one JPEG-compressed set per poison"
    made_here = [r.spec["attack"] for r in records if r.timings["generate_s"] > 0]
    assert len(made_here) <= 2 and len(set(made_here)) == len(made_here)
    before = {p.name: p.read_bytes() for p in store.records_dir.glob("*.json")}
    again = run_grid(grid, store, torch.device("cpu"), progress=False, executor=EXECUTORS[name]())
    assert again == {"done": 0, "failed": 0, "skipped": 4}
    assert {p.name: p.read_bytes() for p in store.records_dir.glob("*.json")} == before


@pytest.mark.parametrize("name", ["in-process", "ray"])
def test_a_failing_poison_fails_its_cells_with_the_error_and_the_grid_goes_on(name, tmp_path, tiny_npz, request):
    if name == "ray":
        request.getfixturevalue("ray_instance")
    # A cacheable attack whose generation fails (remote executors make its poison in a phase of its own).
    grid = tiny_grid(tiny_npz, attacks=("lsp", "clean"), defenses=("none",), config={"lsp": {"patch_size": 5}})
    store = Store(tmp_path / "out")
    counts = run_grid(grid, store, torch.device("cpu"), progress=False, executor=EXECUTORS[name](), retries=1)
    assert counts == {"done": 1, "failed": 1, "skipped": 0}
    failed = next(r for r in store.records() if r.status == "failed")
    assert failed.spec["attack"] == "lsp" and "patch_size 5 must divide" in failed.error["message"]
    # Running again tries exactly the failed cell again.
    assert run_grid(grid, store, torch.device("cpu"), progress=False, executor=EXECUTORS[name]()) == \
        {"done": 0, "failed": 1, "skipped": 1}


def test_a_cell_that_fails_once_is_retried_and_the_attempts_recorded(tmp_path, tiny_npz, monkeypatch):
    import bench.runner

    real, calls = bench.runner.train_model, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("NCCL hiccup")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.runner, "train_model", flaky)
    store = Store(tmp_path / "out")
    counts = run_grid(tiny_grid(tiny_npz, attacks=("clean",), defenses=("none",)), store, torch.device("cpu"), progress=False)
    (record,) = store.records()
    assert counts["done"] == 1 and record.attempts == 2 and "NCCL hiccup" in record.earlier_errors[0]["message"]

    calls.clear()
    monkeypatch.setattr(bench.runner, "train_model", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(RuntimeError("always")))
    counts = run_grid(tiny_grid(tiny_npz, attacks=("clean",), defenses=("jpeg",)), store, torch.device("cpu"),
                      progress=False, retries=2)
    assert counts["failed"] == 1 and len(calls) == 3
    failed = next(r for r in store.records() if r.status == "failed")
    assert failed.attempts == 3 and failed.error["message"] == "always"


class Faulty(nn.Module):
    """tiny_cnn's body that returns NaN, or raises CUDA out-of-memory above a batch size."""

    def __init__(self, body: nn.Module, fault: str, max_batch: int):
        super().__init__()
        self.body, self.fault, self.max_batch = body, fault, max_batch

    def forward(self, x):
        if self.fault == "oom" and self.training and len(x) > self.max_batch:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for a batch of {len(x)}")
        out = self.body(x)
        return out * float("nan") if self.fault == "nan" else out


@pytest.fixture
def faulty_arch(monkeypatch):
    ARCHS.names()  # load the built-ins before adding to them

    def make(fault: str, max_batch: int = 0):
        def build(num_classes: int = 10, width: int = 8) -> Classifier:
            inner = ARCHS.create("tiny_cnn", {"width": width}, num_classes=num_classes)
            return Classifier(Faulty(inner.body, fault, max_batch), inner.feature_dim, num_classes)

        name = f"faulty_{fault}_{max_batch}"
        monkeypatch.setitem(ARCHS._entries, name, Entry(name, build, "a failing test net", ""))
        return name

    return make


def test_a_diverging_cell_is_failed_with_the_reason_without_retries_and_the_grid_goes_on(tmp_path, tiny_npz, faulty_arch):
    store = Store(tmp_path / "out")
    nan = faulty_arch("nan")
    grid = tiny_grid(tiny_npz, attacks=("clean",), defenses=("none",), arch=nan)
    counts = run_grid(grid, store, torch.device("cpu"), progress=False, retries=3)
    (record,) = store.records()
    assert counts["failed"] == 1 and record.attempts == 1
    assert record.error["type"] == "TrainingDiverged" and "nan" in record.error["message"].lower()
    ok = run_grid(tiny_grid(tiny_npz, attacks=("clean",), defenses=("none",)), store, torch.device("cpu"), progress=False)
    assert ok["done"] == 1


def test_out_of_memory_halves_the_batch_and_says_so(tmp_path, tiny_npz, faulty_arch, caplog):
    store = Store(tmp_path / "out")
    grid = tiny_grid(tiny_npz, attacks=("clean",), defenses=("none",), arch=faulty_arch("oom", 20))
    with caplog.at_level(logging.WARNING, "bench"):
        counts = run_grid(grid, store, torch.device("cpu"), progress=False)
    (record,) = store.records()
    assert counts["done"] == 1, record.error
    oom = record.out_of_memory
    assert [t["batch_size"] for t in oom["tried"]] == [64, 32] and oom["batch_size"] == 16
    assert oom["lr"] == pytest.approx(grid.recipe.lr / 4)
    assert record.spec["recipe"]["batch_size"] == 64, "the cell keeps its id and its asked-for recipe"
    assert "out of GPU memory; trying batch 32" in caplog.text

    hopeless = tiny_grid(tiny_npz, attacks=("clean",), defenses=("none",), arch=faulty_arch("oom", 1))
    counts = run_grid(hopeless, store, torch.device("cpu"), progress=False, retries=0)
    failed = next(r for r in store.records() if r.status == "failed")
    assert counts["failed"] == 1 and "even at batch size 16" in failed.error["message"]


def test_records_carry_provenance_and_timings(tmp_path, tiny_npz):
    store = Store(tmp_path / "out")
    run_grid(tiny_grid(tiny_npz, attacks=("random_noise",), defenses=("none",)), store, torch.device("cpu"), progress=False)
    (record,) = store.records()
    for key in ("package_version", "git_commit", "torch", "cuda", "device", "python", "host"):
        assert key in record.provenance
    assert record.provenance["torch"] == torch.__version__
    assert record.spec["seed"] == 0 and record.spec["recipe"]["epochs"] == 1
    timings = record.timings
    assert timings["generate_s"] > 0 and timings["train_s"] > 0 and record.wall_seconds >= timings["train_s"]


def test_a_grid_asking_for_the_mi_analysis_records_it_per_cell(tmp_path, tiny_npz):
    grid = parse_grid({"attacks": ["clean", "ops"], "defenses": ["none"], "archs": ["tiny_cnn"], "analysis": ["mi"],
                       "recipe": {"preset": "cpu_smoke", "epochs": 1}, "data": {"name": str(tiny_npz)},
                       "config": {"tiny_cnn": {"width": 8}}}, "g")
    store = Store(tmp_path / "out")
    assert run_grid(grid, store, torch.device("cpu"), progress=False)["done"] == 2
    for record in store.records():
        analysis = record.analysis
        assert analysis["n_images"] == 200 and record.timings["analysis_s"] > 0
        for key in ("mi_gaussian", "mi_ksg", "cond_cov_trace", "intra_class_cosine"):
            assert isinstance(analysis[key], float) and analysis[key] == analysis[key], key  # a number, not NaN
    plain = tiny_grid(tiny_npz, attacks=("clean",), defenses=("none",))
    run_grid(plain, store, torch.device("cpu"), progress=False)
    assert store.read_record(plain.cells()[0].cell_id).analysis is None, "only grids that ask pay for it"


def test_quiet_off_a_terminal_with_a_log_line_per_cell(tmp_path, tiny_npz, caplog, capsys):
    with caplog.at_level(logging.INFO, "bench"):
        run_grid(tiny_grid(tiny_npz, attacks=("clean",)), Store(tmp_path / "out"), torch.device("cpu"), progress=False)
    assert "grid g" not in capsys.readouterr().err, "no progress bar off a terminal"
    assert caplog.text.count("test acc") == 2


def test_an_altered_cached_poison_is_regenerated_and_the_log_says_so(tmp_path, tiny_npz, caplog):
    store = Store(tmp_path / "out")
    run_grid(tiny_grid(tiny_npz, attacks=("random_noise",), defenses=("none",)), store, torch.device("cpu"), progress=False)
    (path,) = [p for p in store.poisons_dir.glob("*.npy") if not p.name.startswith("prepared-")]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "bench"):
        run_grid(tiny_grid(tiny_npz, attacks=("random_noise",), defenses=("cutout",)), store, torch.device("cpu"),
                 progress=False)
    assert "does not match its hash" in caplog.text and "generating it again" in caplog.text
    fresh = next(r for r in store.records() if r.spec["defense"] == "cutout")
    assert fresh.status == "done" and fresh.timings["generate_s"] > 0
    assert store.load_poison(path.stem) is not None, "the regenerated poison replaces the damaged one"


def test_altered_or_truncated_checkpoint_is_detected_and_generation_starts_over(tmp_path, caplog):
    ckpt = bilevel.Checkpoint(tmp_path)
    ckpt.save({"round": torch.tensor(3), "noise": torch.arange(10, dtype=torch.int8)})
    assert ckpt.load(torch.device("cpu"))["round"] == 3
    data = bytearray(ckpt.path.read_bytes())
    data[-5] ^= 0xFF
    ckpt.path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "bench"):
        assert ckpt.load(torch.device("cpu")) is None
    assert "does not match its SHA-256" in caplog.text
    ckpt.path.write_bytes(bytes(data[:100]))
    assert ckpt.load(torch.device("cpu")) is None


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_checkpoint_with_a_matching_hash_runs_no_code(tmp_path, monkeypatch):
    import hashlib
    import io

    monkeypatch.chdir(tmp_path)
    buffer = io.BytesIO()
    torch.save({"model": Evil()}, buffer)
    payload = buffer.getvalue()
    ckpt = bilevel.Checkpoint(tmp_path)
    ckpt.path.write_bytes(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    assert ckpt.load(torch.device("cpu")) is None
    assert not (tmp_path / "pwned").exists()


def test_checkpoints_are_written_at_most_once_per_interval(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(bilevel.time, "monotonic", lambda: clock[0])
    ckpt = bilevel.Checkpoint(tmp_path, every_s=60)
    assert ckpt.due()
    ckpt.save({"round": torch.tensor(1)})
    clock[0] += 59
    assert not ckpt.due()
    ckpt.save({"round": torch.tensor(2)})  # within the interval: skipped
    assert ckpt.load(torch.device("cpu"))["round"] == 1
    clock[0] += 1
    ckpt.save({"round": torch.tensor(3)})
    assert ckpt.load(torch.device("cpu"))["round"] == 3
    every_call = bilevel.Checkpoint(tmp_path / "all")
    for r in range(3):
        every_call.save({"round": torch.tensor(r)})
        assert every_call.load(torch.device("cpu"))["round"] == r

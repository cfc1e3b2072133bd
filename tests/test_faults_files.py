"""Nothing is lost: a full disk or a kill while writing a report or a bundle never leaves an empty or half-written
file in place of a good one, the partial files a killed run left are taken away by the next, and an export never
replaces another bundle unless asked."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def report_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_during_a_report_keeps_the_previous_files(stored, tmp_path, monkeypatch):
    store, records, grid = stored
    out = tmp_path / "reports"
    write_report(records, out, "t", grid.attacks, grid.defenses, arch_order=grid.archs, store=store)
    before = report_files(out)
    assert before and all(before.values())

    import bench.store

    real = os.fsync
    calls = {"n": 0}

    def full_disk(fd):
        calls["n"] += 1
        if calls["n"] > 3:  # a few files in, the disk fills
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(bench.store.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_report(records, out, "t", grid.attacks, grid.defenses, arch_order=grid.archs, store=store)
    after = report_files(out)
    assert set(after) == set(before) and all(after.values()), "no file is missing or empty"
    # The tables are written after the figures: the previous report's, byte for byte (a figure written before
    # the disk filled is a whole new one; a PDF carries its creation time, so it is not compared).
    for name in ("t.md", "t.tex", "t.csv", "t.bib"):
        assert after[name] == before[name], name
    assert not list(out.rglob(".*.tmp")), "the failed write took its partial file away"


def test_a_kill_during_a_report_leaves_whole_files_and_the_next_run_cleans_up(stored, tmp_path):
    store, _, _ = stored
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", "from bench.cli import main; main()", "report", "--results", str(store.root)]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    out = store.root / "reports"
    good = report_files(out)
    # Again, killed while it draws: the figures come last, after the tables.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    figures = out / "all_figures"
    deadline = time.time() + 120
    start = {p: p.stat().st_mtime_ns for p in figures.glob("*.png")}
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_mtime_ns != start.get(p) for p in figures.glob("*.png")):
            break  # the second run is writing figures now
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for name, data in report_files(out).items():
        if not Path(name).name.startswith("."):
            assert data, f"{name} is empty after a kill"
            assert name in good
    # A partial file a killed run left (here made by hand, aged past the grace period) goes with the next report.
    stale = figures / ".accuracy_heatmap.png.abc123.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    assert not stale.exists() and not list(out.rglob(".*.tmp"))
    assert set(report_files(out)) == set(good)


# --- bundles ------------------------------------------------------------------------------------------
def bundle_of(value: int, tmp_path: Path, name: str = "bundle", force: bool = False):
    import numpy as np

    from bench.bundles import write_bundle

    images = np.full((4, 8, 8, 3), value, dtype=np.uint8)
    return write_bundle(tmp_path / name, images, np.arange(4), {
        "attack": f"a{value}", "attack_config": {}, "seed": value, "dataset": "d", "clean_fingerprint": "f",
        "split_size": 4, "norm": "linf", "budget": 0.0, "measured": {"linf": 0.0, "l2": 0.0, "l0": 0.0},
        "source": {}, "provenance": {}}, force=force)


def test_an_export_never_replaces_another_bundle_unless_forced(tmp_path):
    from bench.bundles import BundleError, read_bundle

    first = bundle_of(1, tmp_path)
    assert bundle_of(1, tmp_path).sha256 == first.sha256  # the same poison again: fine
    with pytest.raises(BundleError, match=r"holds another bundle \(a1, seed 1, on d, sha256 .*--force"):
        bundle_of(2, tmp_path)
    assert read_bundle(tmp_path / "bundle").manifest.sha256 == first.sha256, "the first bundle is whole"
    assert bundle_of(2, tmp_path, force=True).attack == "a2"
    assert read_bundle(tmp_path / "bundle").manifest.attack == "a2"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "paper.tex").write_text("mine")
    with pytest.raises(BundleError, match="is not empty .*paper.tex.* holds no bundle"):
        bundle_of(1, tmp_path, "notes")
    assert (tmp_path / "notes" / "paper.tex").read_text() == "mine"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder left"


def test_a_full_disk_during_an_export_leaves_the_bundle_that_was_there(tmp_path, monkeypatch):
    from bench.bundles import read_bundle
    import bench.store

    first = bundle_of(1, tmp_path)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench.store.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        bundle_of(2, tmp_path, force=True)
    monkeypatch.undo()
    assert read_bundle(tmp_path / "bundle").manifest.sha256 == first.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_the_next_export_cleans_up_after_a_killed_one(tmp_path):
    """Killed between its two renames: the bundle it was replacing comes back, its half-made one goes."""
    from bench.bundles import BundleError, read_bundle

    first = bundle_of(1, tmp_path)
    dead = 2 ** 22 + 12345  # above the kernel's default pid_max: no process has it
    (tmp_path / "bundle").rename(tmp_path / f".bundle.replaced-{dead}")
    (tmp_path / f".bundle.partial-{dead}").mkdir()
    with pytest.raises(BundleError, match="holds another bundle"):  # the restored bundle is protected too
        bundle_of(2, tmp_path)
    assert read_bundle(tmp_path / "bundle").manifest.sha256 == first.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_published_bundle_gets_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        bundle_of(1, tmp_path)
    finally:
        os.umask(old)
    folder = tmp_path / "bundle"
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}


# --- records ------------------------------------------------------------------------------------------
def test_a_full_disk_on_a_record_stops_the_grid_with_one_line_and_keeps_every_record_before(tmp_path, tiny_npz,
                                                                                           monkeypatch):
    import json

    from click.testing import CliRunner

    import bench.store
    from bench.cli import main

    grid = tmp_path / "g.toml"
    grid.write_text(f'attacks = ["clean", "random_noise"]\ndefenses = ["none"]\narchs = ["tiny_cnn"]\n'
                    f'seeds = [0, 1]\nrecipe = {{preset = "cpu_smoke", epochs = 1, batch_size = 64}}\n'
                    f'[data]\nname = "{tiny_npz}"\n[config.tiny_cnn]\nwidth = 8\n')
    real = bench.store.atomic_write_json
    written = []

    def fills_up(path, obj):
        if Path(path).parent.name == "records" and len(written) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, obj)
        if Path(path).parent.name == "records":
            written.append(path)

    monkeypatch.setattr(bench.store, "atomic_write_json", fills_up)
    done = CliRunner().invoke(main, ["run", "--grid", str(grid), "--results", str(tmp_path / "results")])
    assert done.exit_code == 1, (done.output, done.stderr, done.exception)
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("Error: cell ") and "could not be written" in message and "No space left" in message
    assert "Traceback" not in done.output
    records = sorted((tmp_path / "results" / "records").glob("*.json"))
    assert len(records) == 2 and all(json.loads(p.read_text())["status"] == "done" for p in records)
    assert not list((tmp_path / "results" / "records").glob(".*.tmp"))


def test_the_next_run_removes_the_partial_files_a_killed_one_left_in_the_store(tmp_path):
    from bench.store import STALE_PARTIAL_SECONDS, Store

    store = Store(tmp_path / "results")
    store.check_writable()
    old = store.records_dir / ".abc.json.x1y2.tmp"
    fresh = store.records_dir / ".def.json.z3w4.tmp"
    cached = store.poisons_dir / ".key.npy.q5.tmp"
    cached.parent.mkdir(parents=True)
    for path in (old, fresh, cached):
        path.write_bytes(b"half")
    aged = time.time() - STALE_PARTIAL_SECONDS - 60
    for path in (old, cached):
        os.utime(path, (aged, aged))
    store.check_writable()  # what run_grid asks before any work
    assert not old.exists() and not cached.exists()
    assert fresh.exists(), "a partial file young enough to be another run's write in progress is left"


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, where the machine lets this process mount one (root on Linux); skipped elsewhere."""
    mount = tmp_path / "disk"
    mount.mkdir()
    import shutil

    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_full_disk_during_bench_report_is_one_line_and_keeps_the_previous_report(stored, small_disk):
    import shutil

    store, _, _ = stored
    results = small_disk / "results"
    shutil.copytree(store.root / "records", results / "records")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", "from bench.cli import main; main()", "report", "--results", str(results),
               "--format", "md,csv,latex"]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    before = report_files(results / "reports")
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # the disk fills up to its last bytes
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("Error: report: could not write") and "No space left" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert report_files(results / "reports") == before, "the previous report, whole"

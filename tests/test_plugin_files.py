"""Plugins from a file (bench.plugin_files): a grid's `plugins`, `--plugins FILE`, worker processes,
the errors, and the README's example as examples/my_attacks.py with examples/my_grid.toml."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from bench.config import ConfigError
from bench.executors import LocalPool, run_grid
from bench.grid import load_grid
from bench.plugin_files import forget_plugin_files, load_plugin_file, loaded_plugin_files
from bench.registry import ATTACKS
from bench.store import Store
from tests.test_cli import README, bench, readme_block, records, write_grid

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "my_attacks.py"


@pytest.fixture(autouse=True)
def no_plugin_files_left():
    yield
    forget_plugin_files()


def plugin(tmp_path: Path, name: str = "my_attacks.py", body: str | None = None) -> Path:
    path = tmp_path / name
    path.write_text(EXAMPLE.read_text() if body is None else body)
    return path


def test_the_readme_example_is_the_example_file_and_shows_the_file_way_first():
    assert readme_block("plugin-example", "python") == EXAMPLE.read_text()
    assert README.index("<!-- plugin-file -->") < README.index("<!-- plugin-entry-point -->")
    assert 'plugins = ["my_attacks.py"]' in (ROOT / "examples" / "my_grid.toml").read_text()


def test_a_grid_imports_its_plugin_files_relative_to_itself(tmp_path, tiny_npz):
    (tmp_path / "sub").mkdir()
    plugin(tmp_path / "sub")
    grid_file = write_grid(tmp_path / "sub" / "g.toml", tiny_npz, ["clean", "classwise_noise"],
                           extra='plugins = ["my_attacks.py"]')
    grid = load_grid(str(grid_file))
    assert grid.plugins == (str((tmp_path / "sub" / "my_attacks.py").resolve()),)
    entry = ATTACKS.entry("classwise_noise")
    assert entry.origin["file"] == grid.plugins[0] and len(entry.origin["sha256"]) == 64


def test_the_cell_id_does_not_depend_on_where_the_file_is(tmp_path, tiny_npz):
    ids = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        plugin(tmp_path / folder)
        grid_file = write_grid(tmp_path / folder / "g.toml", tiny_npz, ["classwise_noise"], extra='plugins = ["my_attacks.py"]')
        ids.append([c.cell_id for c in load_grid(str(grid_file)).cells()])
        forget_plugin_files()
    assert ids[0] == ids[1]


def test_a_missing_file_names_it_and_where_it_was_looked_for(tmp_path, tiny_npz):
    grid_file = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"], extra='plugins = ["nope.py"]')
    with pytest.raises(ConfigError, match=re.escape(f"grid g: plugins: 'nope.py' (relative to {tmp_path})")
                       + ".*no such file"):
        load_grid(str(grid_file))
    with pytest.raises(ConfigError, match="plugins must be a list of paths"):
        load_grid(str(write_grid(tmp_path / "h.toml", tiny_npz, ["clean"], extra='plugins = "my.py"')))


def test_a_file_that_fails_to_import_is_one_line_naming_file_line_and_error(tmp_path):
    bad = plugin(tmp_path, "bad.py", EXAMPLE.read_text() + "\nraise RuntimeError('boom')\n")
    with pytest.raises(ConfigError) as err:
        load_plugin_file(bad)
    message = str(err.value)
    assert "\n" not in message and str(bad.resolve()) in message and "RuntimeError: boom" in message
    assert re.search(r"line \d+", message)
    assert "classwise_noise" not in ATTACKS  # what it registered before failing is taken back
    syntax = plugin(tmp_path, "syntax.py", "def f(:\n")
    with pytest.raises(ConfigError, match=r"syntax\.py: import failed, line 1: SyntaxError"):
        load_plugin_file(syntax)
    with pytest.raises(ConfigError, match="registers no attack, defense or architecture"):
        load_plugin_file(plugin(tmp_path, "empty.py", "x = 1\n"))


def test_a_name_clash_names_both_sources(tmp_path):
    clash = plugin(tmp_path, "clash.py", EXAMPLE.read_text().replace('"classwise_noise"', '"ops"'))
    with pytest.raises(ConfigError, match=rf"attack 'ops' is registered twice: by plugin file {re.escape(str(clash))} "
                                          r"and by methods\.ops\.OnePixelShortcut"):
        load_plugin_file(clash)
    load_plugin_file(plugin(tmp_path))
    (tmp_path / "other").mkdir()
    second = plugin(tmp_path / "other")
    with pytest.raises(ConfigError, match=rf"by plugin file {re.escape(str(second))} and by plugin file "
                                          rf"{re.escape(str(tmp_path / 'my_attacks.py'))}"):
        load_plugin_file(second)


def test_a_changed_file_is_imported_again(tmp_path):
    path = plugin(tmp_path)
    first = load_plugin_file(path)
    assert load_plugin_file(path) is first  # same content: once
    path.write_text(path.read_text().replace("One uniform", "A single uniform"))
    second = load_plugin_file(path)
    assert second.sha256 != first.sha256 and ATTACKS.entry("classwise_noise").summary.startswith("A single uniform")


@pytest.mark.slow  # two spawned workers import torch: ~20 s on 2 cores
def test_worker_processes_load_the_grids_plugin_files(tmp_path, tiny_npz):
    """The local pool's workers are spawned processes: they start with the built-ins only."""
    plugin(tmp_path)
    grid_file = write_grid(tmp_path / "g.toml", tiny_npz, ["clean", "classwise_noise"], ("none", "jpeg"),
                           extra='plugins = ["my_attacks.py"]')
    grid = load_grid(str(grid_file))
    counts = run_grid(grid, Store(tmp_path / "out"), torch.device("cpu"), progress=False,
                      executor=LocalPool(cpu_workers=2))
    assert counts == {"done": 4, "failed": 0, "skipped": 0}
    stored = {(r["spec"]["attack"], r["spec"]["defense"]): r for r in records(tmp_path / "out")}
    sha = ATTACKS.entry("classwise_noise").origin["sha256"]
    for defense in ("none", "jpeg"):
        record = stored[("classwise_noise", defense)]
        assert record["provenance"]["plugins"] == {"attack classwise_noise": {"file": grid.plugins[0], "sha256": sha}}
        assert record["poison"]["origin"]["sha256"] == sha
    assert "plugins" not in stored[("clean", "none")]["provenance"]  # built-ins only: the record as before


@pytest.mark.slow
def test_the_example_grid_runs_end_to_end_and_plugins_work_on_the_commands(tmp_path, cifar10_npz):
    env = {"BENCH_CIFAR10": str(cifar10_npz)}
    out = tmp_path / "out"
    bench("run", "--grid", "examples/my_grid.toml", "--results", str(out), "--set", "recipe.epochs=1",
          "--set", "data.train_size=200", "--set", "data.test_size=200", env=env)
    done = {(r["spec"]["attack"], r["spec"]["defense"]): r for r in records(out)}
    assert len(done) == 4 and all(r["status"] == "done" for r in done.values())
    assert done[("classwise_noise", "none")]["poison"]["measured"] <= 8 / 255 + 1e-6
    assert done[("classwise_noise", "none")]["provenance"]["plugins"]["attack classwise_noise"]["file"] == str(EXAMPLE)
    listing = bench("list", "attacks", "--plugins", "examples/my_attacks.py").stdout
    assert re.search(r"classwise_noise\s+Class-wise noise\s+One uniform L-inf noise pattern per class", listing)
    report = bench("report", "--results", str(out), "--format", "md", "--plugins", "examples/my_attacks.py", env=env)
    assert "| Class-wise noise (Linf 8/255) |" in report.stdout  # its display name, from the plugin file
    missing = bench("list", "--plugins", "nope.py", check=False)
    assert missing.returncode != 0 and "--plugins 'nope.py'" in missing.stderr and "Traceback" not in missing.stderr

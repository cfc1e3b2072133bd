"""The `bench` command end to end: listing, plugins from outside, failures, kill and resume."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import ATTACKS, DEFENSES, ARCHS
from methods.base import check_budget

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def bench(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [full_env.get("PYTHONPATH"), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=full_env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def readme_block(marker: str, language: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```{language}\n(.*?)```", README, re.S)
    assert match, f"README has no {language} block after <!-- {marker} -->"
    return match.group(1)


def write_grid(path: Path, data: Path, attacks, defenses=("none",), epochs: int = 1, extra: str = "") -> Path:
    path.write_text(
        f"attacks = {json.dumps(list(attacks))}\ndefenses = {json.dumps(list(defenses))}\narchs = [\"tiny_cnn\"]\n"
        f"recipe = {{preset = \"cpu_smoke\", epochs = {epochs}}}\n{extra}\n"
        f"[data]\nname = \"{data}\"\n[config.tiny_cnn]\nwidth = 8\n"
    )
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]


def test_list_shows_every_plugin_with_description_and_paper():
    out = bench("list").stdout
    for registry in (ATTACKS, DEFENSES, ARCHS):
        for name in registry.names():
            entry = registry.entry(name)
            line = next((l for l in out.splitlines() if l.strip().startswith(name + " ")), None)
            assert line and entry.summary in line and entry.paper in line
    assert re.search(r"^  smoke\s+CPU smoke grid", out, re.M)
    vggs = [l.split()[0] for l in bench("list", "archs", "--pattern", "vgg*").stdout.splitlines()[1:]]
    assert vggs == ["vgg11", "vgg13", "vgg16", "vgg19"]


def test_readme_plugin_is_short_and_works_from_outside(tmp_path, tiny_npz):
    code = readme_block("plugin-example", "python")
    assert len(code.strip().splitlines()) < 40
    entry_points = tomllib.loads(readme_block("plugin-entry-point", "toml"))["project"]["entry-points"]
    # An installed distribution, as pip would leave it: a module and its dist-info on sys.path.
    site = tmp_path / "site"
    (site / "my_attacks_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "my_attacks.py").write_text(code)
    (site / "my_attacks_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: my-attacks-plugin\nVersion: 0.1\n")
    (site / "my_attacks_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entry_points.items()))
    env = {"PYTHONPATH": str(site)}
    listing = bench("list", "attacks", env=env).stdout
    assert re.search(r"classwise_noise\s+Class-wise noise\s+One uniform L-inf noise pattern per class", listing)
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean", "classwise_noise"])
    bench("run", "--grid", str(grid), "--out", str(tmp_path / "out"), env=env)
    done = {r["spec"]["attack"]: r for r in records(tmp_path / "out")}
    assert set(done) == {"clean", "classwise_noise"} and all(r["status"] == "done" for r in done.values())
    assert done["classwise_noise"]["poison"]["measured"] <= 8 / 255 + 1e-6
    # The same plugin, imported in-process, satisfies the attack contract.
    namespace: dict = {}
    sys.modules.pop("my_attacks", None)
    exec(compile(code, "my_attacks.py", "exec"), namespace)
    try:
        data = ImageSet(torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8), torch.arange(20) % 10, torch.arange(20), 10, 20)
        poison = ATTACKS.create("classwise_noise")(data, RunContext())
        assert check_budget(data.images, poison) <= 8 / 255 + 1e-6
        delta = poison.images.float() - data.images.float()
        assert not torch.equal(delta[0], delta[1])  # classes 0 and 1 get different patterns
    finally:
        ATTACKS._entries.pop("classwise_noise", None)


def test_failed_cells_are_recorded_and_the_grid_goes_on(tmp_path, tiny_npz):
    x = np.load(tiny_npz)["x_train"].astype(np.int16)
    np.savez(tmp_path / "p.npz", x_train=np.clip(x + 20, 0, 255).astype(np.uint8))  # 20/255 > its 8/255 claim
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["external", "clean"],
                      extra=f'[config.external]\npath = "{tmp_path / "p.npz"}"\neps = 0.0313725')
    proc = bench("run", "--grid", str(grid), "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 1 and "1 failed" in proc.stdout
    by_attack = {r["spec"]["attack"]: r for r in records(tmp_path / "out")}
    assert by_attack["clean"]["status"] == "done"
    assert by_attack["external"]["status"] == "failed"
    assert by_attack["external"]["error"]["type"] == "BudgetError" and "linf budget" in by_attack["external"]["error"]["message"]


def test_bad_grid_is_one_line_error_before_work(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean", "opz"])
    proc = bench("run", "--grid", str(grid), "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode != 0 and "unknown attack 'opz'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_killed_grid_resumes_without_losing_finished_cells(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean", "random_noise", "lsp", "ops"], ("none", "jpeg"), epochs=6)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--grid", str(grid), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "records").glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.read_bytes() for p in (out / "records").glob("*.json")}
    assert 2 <= len(before) < 8, "the kill must land mid-grid"
    bench("run", "--grid", str(grid), "--out", str(out))
    after = {p.name: p.read_bytes() for p in (out / "records").glob("*.json")}
    assert len(after) == 8 and all(json.loads(v)["status"] == "done" for v in after.values())
    assert all(after[name] == data for name, data in before.items()), "finished records must be untouched"
    assert not list((out / "records").glob(".*.tmp")), "no temporary file may be left"
    again = bench("run", "--grid", str(grid), "--out", str(out)).stdout
    assert "0 cells run, 8 already done" in again


# The smoke grid's model-based attacks, shrunk again so the test takes about a minute: same code paths.
SMOKE_TEST_SHRINK = {"em": {"max_rounds": 2}, "tap": {"surrogate_epochs": 1, "steps": 2}, "miue": {"epochs": 1, "steps": 2}}


@pytest.mark.slow
def test_smoke_grid_end_to_end_on_a_small_real_subset(tmp_path, cifar10_npz):
    """The shipped smoke grid, shrunk to 1,000 images and 3 epochs, through run and report, MI included."""
    smoke = tomllib.loads((ROOT / "bench" / "grids" / "smoke.toml").read_text())
    plugins = set(smoke["attacks"]) | set(smoke["defenses"])
    tables = {name: {**table, **SMOKE_TEST_SHRINK.get(name, {})} for name, table in smoke.get("config", {}).items()
              if name in plugins}
    config = "".join(f"[config.{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
                     for name, table in tables.items())
    grid = write_grid(tmp_path / "smoke_small.toml", cifar10_npz, smoke["attacks"], smoke["defenses"], epochs=3,
                      extra=f"analysis = {json.dumps(smoke['analysis'])}\n" + config)
    text = grid.read_text().replace("[data]\n", "[data]\ntrain_size = 1000\ntest_size = 500\n")
    grid.write_text(text)
    out = tmp_path / "out"
    bench("run", "--grid", str(grid), "--out", str(out))
    done = records(out)
    n_cells = len(smoke["attacks"]) * len(smoke["defenses"])
    assert len(done) == n_cells and all(r["status"] == "done" for r in done)
    assert all(0 <= r["metrics"]["test_acc_last"] <= 1 and len(r["history"]) == 3 for r in done)
    assert {r["poison"]["norm"] for r in done} == {"linf", "l2", "l0"}
    assert all(r["analysis"]["mi_cca"] >= 0 and r["analysis"]["n_images"] == 1000 for r in done)
    printed = bench("report", "--grid", str(grid), "--out", str(out)).stdout
    report = (out / "reports" / "smoke_small.md").read_text()
    assert f"report: {out / 'reports' / 'smoke_small.md'}" in printed
    from bench.registry import ATTACKS, DEFENSES

    for attack in map(ATTACKS.display, smoke["attacks"]):
        assert re.search(rf"^\| {re.escape(attack)}\b", printed, re.M), f"no row for {attack}"
    # The MI analysis: a table per defense (the smoke grid has several), a row per attack in each.
    mi = report[report.index("### Mutual information (MI-UE analysis)"):]
    for defense in map(DEFENSES.display, smoke["defenses"]):
        part = mi[mi.index(f", defense {defense}\n"):]
        for attack in map(ATTACKS.display, smoke["attacks"]):
            assert re.search(rf"^\| {re.escape(attack)}\b.* / Tiny CNN \|", part, re.M), f"no MI row for {attack}"
    mi_figures = sorted((out / "reports" / "smoke_small_figures").glob("mi_by_attack_*.png"))
    assert len(mi_figures) == len(smoke["defenses"])  # MI against attack, one figure per defense
    tex = (out / "reports" / "smoke_small.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "Random noise" in tex
    csv = (out / "reports" / "smoke_small.csv").read_text().splitlines()
    assert len(csv) == 1 + n_cells * (3 + 6)  # one row per cell and metric: 3 accuracies, 6 MI-analysis values


GOOD_GRID = 'attacks = ["clean", "random_noise"]\ndefenses = ["none"]\narchs = ["tiny_cnn"]\nrecipe = {preset = "cpu_smoke", epochs = 1}\n'
BAD_GRIDS = {  # kind of bad input -> (grid file, what the one line must say)
    "typo in a key": (GOOD_GRID + "seed = [0]\n", "grid bad: unknown key 'seed'; allowed keys: description, data, attacks"),
    "unknown attack": (GOOD_GRID.replace('"random_noise"', '"random_nosie"'),
                       "unknown attack 'random_nosie' (did you mean 'random_noise'?); known attacks: ar, clean"),
    "negative eps": (GOOD_GRID + "[config.random_noise]\neps = -0.03\n", "attack random_noise.eps: must be in (0, 1]"),
    "zero epochs": (GOOD_GRID.replace("epochs = 1", "epochs = 0"), "recipe.epochs: must be at least 1, got 0"),
}


def invoke(*args: str):
    from click.testing import CliRunner

    from bench.cli import main

    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, message: str) -> None:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kind", BAD_GRIDS)
def test_bad_grid_files_stop_with_one_line_before_any_work(tmp_path, tiny_npz, kind):
    text, message = BAD_GRIDS[kind]
    grid = tmp_path / "bad.toml"
    grid.write_text(text + f'[data]\nname = "{tiny_npz}"\n')
    out = tmp_path / "out"
    assert_one_line_error(invoke("run", "--grid", str(grid), "--out", str(out)), message)
    assert not out.exists(), "nothing may run or be written"


@pytest.mark.parametrize("args,message", [
    (("--set", "em.steps=1"), "--set em.steps=1: 'em' is not an attack, defense or arch of grid good; allowed: recipe, data"),
    (("--set", "random_noise.eps=-1"), "attack random_noise.eps: must be in (0, 1]"),
    (("--attacks", "clean,opz"), "unknown attack 'opz'"),
    (("--seeds", "0,one"), "--seeds: expected whole numbers separated by commas, got '0,one'"),
])
def test_bad_overrides_stop_with_one_line_before_any_work(tmp_path, tiny_npz, args, message):
    grid = tmp_path / "good.toml"
    grid.write_text(GOOD_GRID + f'[data]\nname = "{tiny_npz}"\n')
    out = tmp_path / "out"
    assert_one_line_error(invoke("run", "--grid", str(grid), "--out", str(out), *args), message)
    assert not out.exists()


def _grid_with_records(tmp_path):
    """A grid whose data file does not exist (so nothing can load it) and a store with one done, one failed cell."""
    from bench.grid import load_grid
    from bench.records import CellResult
    from bench.store import Store

    path = tmp_path / "g.toml"
    path.write_text(GOOD_GRID + 'seeds = [0, 1]\n[data]\nname = "no/such/data.npz"\n')
    cells = {c.label: c for c in load_grid(str(path)).cells()}
    store = Store(tmp_path / "out")
    done, failed = cells["clean / none / tiny_cnn / seed 0"], cells["random_noise / none / tiny_cnn / seed 1"]
    store.write_record(CellResult.from_json({"cell_id": done.cell_id, "grid": "g", "spec": done.to_dict(), "status": "done",
                        "provenance": {"device": "cpu"}, "timings": {"train_s": 12.0, "poison_generate_s": 0.5},
                        "metrics": {"test_acc_last": 0.5, "test_acc_best": 0.5, "best_epoch": 1, "train_acc": 0.5}}))
    store.write_record(CellResult.from_json({"cell_id": failed.cell_id, "grid": "g", "spec": failed.to_dict(), "status": "failed",
                        "error": {"type": "TrainingDiverged", "message": "training loss became nan in epoch 1"}}))
    return path, store


def test_dry_run_lists_cells_poisons_and_cost_and_does_nothing(tmp_path):
    path, store = _grid_with_records(tmp_path)
    before = sorted(p.name for p in store.root.rglob("*"))
    result = invoke("run", "--grid", str(path), "--out", str(store.root), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "grid g: 4 cells: 1 done, 1 failed, 2 pending"
    assert sum(l.startswith("  pending ") for l in lines) == 2
    assert any(l.endswith("random_noise / none / tiny_cnn / seed 1  (TrainingDiverged: training loss became nan in epoch 1)")
               for l in lines)
    assert "poisons to generate: 3" in lines  # clean seed 1 and random_noise seeds 0 and 1; clean seed 0 is done
    assert lines[-1].startswith("cost: about 36 s of device time")  # 3 undefended cells x 12 s, poisons not timed
    assert sorted(p.name for p in store.root.rglob("*")) == before, "a dry run writes nothing"
    subset = invoke("run", "--grid", str(path), "--out", str(store.root), "--dry-run", "--attacks", "clean", "--seeds", "0")
    assert subset.stdout.splitlines()[0] == "grid g: 1 cell: 1 done, 0 failed, 0 pending"


def test_status_counts_per_grid_with_each_failure(tmp_path):
    path, store = _grid_with_records(tmp_path)
    named = invoke("status", "--grid", str(path), "--out", str(store.root))
    assert named.exit_code == 0, named.output
    failed_id = next(r.cell_id for r in store.records() if r.status == "failed")
    assert named.stdout.splitlines() == ["grid g: 1 done, 1 failed, 2 pending",
                                         f"  failed  {failed_id}  random_noise / none / tiny_cnn / seed 1: "
                                         "TrainingDiverged: training loss became nan in epoch 1"]
    # Without --grid, a grid that is not shipped is known by the name in its records only.
    assert invoke("status", "--out", str(store.root)).stdout.splitlines()[0] == (
        "grid g: 1 done, 1 failed, pending unknown (name its grid file with --grid)")
    assert invoke("status", "--out", str(tmp_path / "empty")).stdout.strip() == f"no records in {tmp_path / 'empty' / 'records'}"
    assert_one_line_error(invoke("status", "--out", str(store.root), "--seeds", "0"), "need --grid")


@pytest.mark.parametrize("device,message", [
    ("foo", "--device: 'foo' is not a device; allowed: auto, cpu, cuda or cuda:N"),
    ("mps", "--device: 'mps' is not supported"),
    ("cuda:7", "--device: 'cuda:7', but this machine has"),
])
def test_a_device_this_machine_lacks_is_one_line_before_any_work(tmp_path, tiny_npz, device, message):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"])
    for command in (["run", "--grid", str(grid)], ["run", "--grid", str(grid), "--dry-run"], ["bench", "--quick"]):
        result = invoke(*command, "--device", device, *(["--out", str(tmp_path / "out")] if command[0] == "run" else []))
        assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seeds,message", [
    ("[true]", "seeds must be a non-empty list of whole numbers from 0 to 4294967295; True is not"),
    ("[4294967296]", "4294967296 is not"),
    ("[-1]", "-1 is not"),
    ("[0.5]", "0.5 is not"),
])
def test_seeds_that_are_not_whole_numbers_in_range_are_refused(tmp_path, tiny_npz, seeds, message):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"], extra=f"seeds = {seeds}")
    assert_one_line_error(invoke("run", "--grid", str(grid), "--out", str(tmp_path / "out")), message)
    assert not (tmp_path / "out").exists()


def test_a_repeated_seed_runs_once_with_a_note(tmp_path, tiny_npz, caplog):
    from bench.grid import load_grid

    grid = load_grid(str(write_grid(tmp_path / "g.toml", tiny_npz, ["clean"], extra="seeds = [3, 0, 3]")))
    assert grid.seeds == (3, 0) and len(grid.cells()) == 2
    assert "seed(s) 3 listed more than once; each runs once" in caplog.text


def test_a_grid_file_that_is_not_utf8_text_is_one_line(tmp_path):
    path = tmp_path / "g.toml"
    path.write_bytes(b"\xff\xfeattacks = [\"clean\"]\n")
    assert_one_line_error(invoke("run", "--grid", str(path)), f"grid {path}: not UTF-8 text")


def test_an_arch_width_below_one_names_the_arch(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"])
    for width in ("0", "-3"):
        assert_one_line_error(invoke("run", "--grid", str(grid), "--set", f"tiny_cnn.width={width}", "--dry-run"),
                              f"arch tiny_cnn.width: must be a whole number of channels >= 1, got {width}")


def test_a_results_folder_that_cannot_be_written_stops_before_training(tmp_path, tiny_npz, monkeypatch):
    import bench.train

    trained = []
    monkeypatch.setattr(bench.train, "train_model", lambda *a, **k: trained.append(1))
    (tmp_path / "a_file").write_text("not a folder")
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"])
    result = invoke("run", "--grid", str(grid), "--out", str(tmp_path / "a_file" / "out"))
    assert_one_line_error(result, f"--results {tmp_path / 'a_file' / 'out'}: results cannot be written there")
    assert not trained


COLLIDING = '''
from dataclasses import dataclass

from methods.base import Attack, Poison


@dataclass(frozen=True)
class Config:
    pass


class Impostor(Attack):
    """An attack that would shadow a built-in."""

    Config = Config

    def generate(self, data, ctx):
        return Poison(data.images.clone(), "linf", 0.0)


class NotAPlugin:
    """A class outside the contract."""
'''


def install_fake_package(site: Path, name: str, module: str, code: str, entry_points: dict[str, str]) -> None:
    """A module and its dist-info on `site`, as pip would leave an installed distribution."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(code)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench.attacks]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


def test_third_party_plugins_that_collide_are_skipped_with_a_warning_and_every_command_works(tmp_path, tiny_npz):
    site = tmp_path / "site"
    install_fake_package(site, "shadowing_pkg", "shadowing", COLLIDING,
                         {"em": "shadowing:Impostor", "unique_one": "shadowing:Impostor", "loose": "shadowing:NotAPlugin"})
    install_fake_package(site, "second_pkg", "second", COLLIDING, {"unique_one": "second:Impostor"})
    env = {"PYTHONPATH": str(site)}
    listing = bench("list", "attacks", env=env)
    assert re.search(r"^  em\s+EM\s+Sample-wise error-minimising noise", listing.stdout, re.M), "the built-in keeps its name"
    assert "shadowing_pkg 0.1" in listing.stderr and "'em' is already methods.em." in listing.stderr
    assert "must be a class that subclasses Plugin" in listing.stderr and "'loose'" in listing.stderr
    # Two third-party plugins with one name: the first found keeps it, the other is named and skipped.
    assert listing.stdout.count("unique_one") == 1 and "'unique_one' is already" in listing.stderr
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean", "unique_one"])
    bench("run", "--grid", str(grid), "--out", str(tmp_path / "out"), env=env)
    bench("status", "--out", str(tmp_path / "out"), env=env)
    bench("report", "--out", str(tmp_path / "out"), "--format", "md", env=env)
    assert {r["spec"]["attack"] for r in records(tmp_path / "out")} == {"clean", "unique_one"}

"""The commands a new user meets first: `bench show`, `list`, `--version`, `-h`, `--results`, `clean`,
what `run` says without `--grid`, the report's order without `--grid`, status and the cost estimate."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.config import argument_help, field_help
from bench.registry import ARCHS, ATTACKS, DEFENSES, REGISTRIES
from bench.records import CellResult
from bench.store import Store
from bench.train import Recipe

ROOT = Path(__file__).resolve().parent.parent
GRID = ('attacks = ["clean", "random_noise"]\ndefenses = ["none"]\narchs = ["tiny_cnn"]\n'
        'recipe = {preset = "cpu_smoke", epochs = 1}\nseeds = [0, 1]\n[data]\nname = "no/such/data.npz"\n')
METRICS = {"test_acc_last": 0.5, "test_acc_best": 0.5, "best_epoch": 1, "train_acc": 0.5}


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def write(store: Store, cell, grid: str, status: str = "done", spec: dict | None = None, **extra) -> CellResult:
    rec = {"cell_id": cell.cell_id, "grid": grid, "spec": spec or cell.to_dict(), "status": status,
           "provenance": {"device": "cpu"}, **extra}
    if status == "done":
        rec.setdefault("metrics", METRICS)
        rec.setdefault("timings", {"train_s": 12.0})
    else:
        rec.setdefault("error", {"type": "TrainingDiverged", "message": "training loss became nan in epoch 1"})
    record = CellResult.from_json(rec)
    store.write_record(record)
    return record


# --- bench show ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["attacks", "defenses"])
def test_every_config_field_of_every_plugin_has_help(kind):
    registry = REGISTRIES[kind]
    missing = [f"{name}.{field}" for name in registry.names()
               for field, text in field_help(registry.get(name).Config).items() if not text.strip()]
    assert not missing, f"fields without a comment (their help in `bench show`): {missing}"


def test_every_arch_argument_and_recipe_field_has_help():
    missing = [f"{name}.{arg}" for name in ARCHS.names() for arg, text in argument_help(ARCHS.get(name)).items()
               if arg != "num_classes" and not text.strip()]
    missing += [f"recipe.{field}" for field, text in field_help(Recipe).items() if not text.strip()]
    assert not missing


def test_help_is_the_comment_on_the_line_or_above_and_never_a_neighbours():
    @dataclasses.dataclass(frozen=True)
    class Config:
        eps: float = 8 / 255  # budget, [0, 1] units
        text: str = "# not a comment"
        # a comment block
        # over two lines
        steps: int = 3
        quiet: int = 1

    @dataclasses.dataclass(frozen=True)
    class Child(Config):
        steps: int = 5  # re-declared without help would take the parent's; this one has its own
        quiet: int = 2

    assert field_help(Config) == {"eps": "budget, [0, 1] units", "text": "", "steps": "a comment block over two lines",
                                  "quiet": ""}
    assert field_help(Child)["steps"].startswith("re-declared") and field_help(Child)["eps"] == "budget, [0, 1] units"

    def build(num_classes: int = 10, width: int = 8,  # shared by two parameters: says nothing of either
              depth: int = 2,  # blocks per stage
              ):
        pass

    assert argument_help(build) == {"num_classes": "", "width": "", "depth": "blocks per stage"}


def test_show_prints_fields_defaults_units_help_and_what_each_preset_changes():
    result = invoke("show", "em")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("attack em: ") and "Huang et al." in out
    assert re.search(r"^  eps +float +8/255 +L-inf budget, \[0, 1\] pixel units$", out, re.M)
    assert re.search(r"^  step_size +float +0.8/255 ", out, re.M)
    assert re.search(r"^    cpu$", out, re.M) and re.search(r"^      max_rounds: +200 -> 15$", out, re.M)
    assert invoke("show", "attack:em").stdout == out
    arch = invoke("show", "resnet18").stdout
    assert re.search(r"^  width +int +64 +channels of the first stage", arch, re.M) and "num_classes" not in arch
    recipe = invoke("show", "recipe").stdout
    assert re.search(r"^  epochs +int +60 +passes over the training set$", recipe, re.M)
    assert re.search(r"^    apbench200\n      epochs: +60 -> 200$", recipe, re.M)
    em60 = invoke("show", "em60").stdout
    assert re.search(r"^  grad_clip +float or none +5 ", em60, re.M) and "grad_clip: none -> 5" in em60
    both = invoke("show", "jpeg+cutout").stdout
    assert both.startswith("defense jpeg: ") and "\n\ndefense cutout: " in both


def test_show_says_which_names_match_and_which_are_close():
    result = invoke("show", "emm")
    assert result.exit_code == 1 and "no attack, defense, arch or recipe is called 'emm'; close names: em" in result.stderr
    wrong_kind = invoke("show", "attack:jpeg")
    assert "'jpeg' is no attack; it is a defense (bench show defense:jpeg)" in wrong_kind.stderr
    assert "unknown kind 'foo'" in invoke("show", "foo:em").stderr


def test_a_name_of_two_kinds_is_refused_with_how_to_say_which():
    from defenses.base import Defense

    @dataclasses.dataclass(frozen=True)
    class Config:
        strength: int = 1  # how much

    class EmDefense(Defense):
        """A defense that shares a name with an attack."""

    EmDefense.Config = Config
    DEFENSES._load()
    DEFENSES.register("em")(EmDefense)
    try:
        result = invoke("show", "em")
        assert result.exit_code == 1
        assert "'em' is an attack and a defense; say which: bench show attack:em or bench show defense:em" in result.stderr
        assert invoke("show", "defense:em").stdout.startswith("defense em: A defense that shares a name")
    finally:
        DEFENSES._entries.pop("em")


def test_list_aligns_its_columns_whatever_the_name_lengths():
    ATTACKS._load()
    long = "a_third_party_attack_with_a_long_name"
    ATTACKS._entries[long] = dataclasses.replace(ATTACKS.entry("clean"), name=long)
    try:
        lines = [l for l in invoke("list").stdout.splitlines() if l.startswith("  ")]
    finally:
        ATTACKS._entries.pop(long)
    # Three columns for every kind: the name, the display name (none for a grid), the description.
    from bench.registry import REGISTRIES

    shown = max(len(r.display(n)) for r in REGISTRIES.values() for n in r.names())
    at = 2 + len(long) + 2 + shown + 2
    assert all(l[at - 2:at] == "  " and l[at] != " " for l in lines), "every description starts in one column"
    assert any(l.startswith(f"  miue{' ' * (len(long) - 2)}MI-UE  ") for l in lines), "display names in their own column"


# --- manners -----------------------------------------------------------------------------------------
def test_version_and_h_on_every_command():
    from bench import __version__

    assert invoke("--version").stdout.strip() == f"bench {__version__} (unlearnable-bench)"
    commands = [[name] for name in main.commands] + [["poison", name] for name in main.commands["poison"].commands]
    for command in [[]] + commands:
        short, long = invoke(*command, "-h"), invoke(*command, "--help")
        assert short.exit_code == 0 and short.stdout == long.stdout and "Usage:" in short.stdout, command


def test_help_loads_no_torch():
    code = ("import sys\nfrom bench.cli import main\nfor args in ([], ['run'], ['report'], ['show'], ['poison', 'list']):\n"
            "    try:\n        main(args + ['--help'])\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0 and proc.stderr.strip().splitlines()[-1] == "False", proc.stderr


def test_results_is_the_folder_option_and_out_still_works_hidden(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    store = Store(tmp_path / "res")
    from bench.grid import load_grid

    write(store, load_grid(str(grid)).cells()[0], "g")
    for option in ("--results", "--out"):
        result = invoke("status", "--grid", str(grid), option, str(store.root))
        assert result.stdout.splitlines()[0] == "grid g: 1 done, 0 failed, 3 pending", (option, result.output)
    for command in (["run"], ["report"], ["status"], ["clean"], ["poison", "list"], ["poison", "export"]):
        text = invoke(*command, "--help").stdout
        assert "--results" in text and "--out" not in text, command
    clash = invoke("status", "--results", str(store.root), "--out", str(tmp_path / "other"))
    assert clash.exit_code == 2 and "name two folders" in clash.stderr


def test_run_without_grid_says_which_grid_it_runs(tmp_path):
    result = invoke("run", "--dry-run", "--results", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == "no --grid: running the shipped grid smoke (bench list grids shows the others)"
    assert result.stdout.startswith("grid smoke: ")


def test_report_without_grid_orders_defenses_as_the_grid_of_the_records(tmp_path):
    from bench.grid import load_grid

    smoke = load_grid("smoke")  # defenses none, jpeg, iss_gray: not alphabetical
    store = Store(tmp_path / "res")
    for cell in smoke.cells():
        if cell.attack in ("clean", "ops") and cell.seed == 0:
            write(store, cell, "smoke")
    result = invoke("report", "--results", str(store.root), "--format", "md")
    assert result.exit_code == 0, result.output
    header = next(l for l in result.stdout.splitlines() if l.startswith("| attack |"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == ["No defense", "JPEG", "ISS-Gray"]
    rows = [l.split("|")[1].strip() for l in result.stdout.splitlines() if re.match(r"\| (Clean|OPS)\b", l)]
    assert rows[:2] == ["Clean", "OPS"]  # the records carry no poison, so no budget


def test_poison_list_prints_budgets_as_reports_do(tmp_path):
    import numpy as np

    store = Store(tmp_path)
    store.save_poison("k1", np.zeros((3, 2, 2, 3), np.uint8), {"attack": "em", "seed": 0, "norm": "linf",
                                                                "budget": 8 / 255, "data": {"name": "cifar10"}})
    out = invoke("poison", "list", "--results", str(tmp_path)).stdout
    assert out.splitlines()[1] == "  k1  em  seed 0  3 images of cifar10  Linf 8/255"


# --- status and clean ----------------------------------------------------------------------------------
def test_status_shows_ids_and_what_differs_between_same_named_failures(tmp_path):
    from bench.grid import load_grid

    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    cell = load_grid(str(grid)).cells()[0]
    other = load_grid(str(grid), __import__("bench.grid").grid.GridOverrides(sets=("recipe.epochs=3",))).cells()[0]
    store = Store(tmp_path / "res")
    a, b = write(store, cell, "mine", "failed"), write(store, other, "mine", "failed")
    lines = invoke("status", "--results", str(store.root)).stdout.splitlines()
    assert lines[0] == "grid mine: 0 done, 2 failed, pending unknown (name its grid file with --grid)"
    for record, epochs in ((a, 1), (b, 3)):
        i = lines.index(f"  failed  {record.cell_id}  clean / none / tiny_cnn / seed 0: "
                        "TrainingDiverged: training loss became nan in epoch 1")
        assert lines[i + 1] == f"          differs in recipe.epochs = {epochs}"


def test_clean_failed_lists_asks_and_never_touches_a_finished_record(tmp_path):
    from bench.grid import load_grid

    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    cells = load_grid(str(grid)).cells()
    store = Store(tmp_path / "res")
    done = write(store, cells[0], "g")
    failed = [write(store, c, "g", "failed") for c in cells[1:3]]
    before = store.record_path(done.cell_id).read_bytes()
    assert invoke("clean", "--results", str(store.root)).exit_code == 2  # says what to remove
    no = invoke("clean", "--failed", "--results", str(store.root), input="n\n")
    assert no.exit_code == 0 and "2 failed records in" in no.stdout and "nothing removed" in no.stdout
    assert all(f"  {r.cell_id}  " in no.stdout for r in failed) and done.cell_id not in no.stdout
    assert len(list(store.records())) == 3
    yes = invoke("clean", "--failed", "--yes", "--results", str(store.root))
    assert yes.exit_code == 0 and "removed 2" in yes.stdout
    assert [r.cell_id for r in store.records()] == [done.cell_id]
    assert store.record_path(done.cell_id).read_bytes() == before
    assert "no failed records" in invoke("clean", "--failed", "-y", "--results", str(store.root)).stdout
    # Removal re-reads each record under the cell's claim: one that became done meanwhile stays.
    write(store, cells[1], "g")
    assert store.remove_failed(cells[1].cell_id) is False and store.read_record(cells[1].cell_id).done
    held = store.claim(cells[2].cell_id)
    write(store, cells[2], "g", "failed")
    try:
        assert store.remove_failed(cells[2].cell_id) is False  # a run holds the cell
    finally:
        held.release()


# --- the cost estimate -------------------------------------------------------------------------------------
def test_dry_run_scales_cost_from_the_same_arch_by_images_and_epochs_and_says_so(tmp_path):
    from bench.grid import GridOverrides, load_grid

    grid = tmp_path / "g.toml"
    grid.write_text(GRID.replace('name = "no/such/data.npz"', 'name = "cifar10"\ntrain_size = 1000'))
    store = Store(tmp_path / "res")
    # 12 s for 500 images x 2 epochs on tiny_cnn: 0.012 s per image and epoch.
    small = load_grid(str(grid), GridOverrides(sets=("data.train_size=500", "recipe.epochs=2"))).cells()
    for cell in small:
        write(store, cell, "small")
    result = invoke("run", "--grid", str(grid), "--results", str(store.root), "--dry-run", "--set", "recipe.epochs=6")
    assert result.exit_code == 0, result.output
    # 4 cells x 1,000 images x 6 epochs x 0.012 s = 288 s
    assert result.stdout.splitlines()[-1].startswith(
        "cost: about 5 min of device time, one cell at a time, on cpu (4 cells scaled from 4 records of tiny_cnn / none "
        "at 500 images x 2 epochs")
    unknown = invoke("run", "--grid", str(grid), "--results", str(store.root), "--dry-run", "--archs", "resnet18")
    assert unknown.stdout.splitlines()[-1] == ("cost: unknown: none of the 4 timed records matches what is left to run "
                                               "(no timing of resnet18 to scale from)")

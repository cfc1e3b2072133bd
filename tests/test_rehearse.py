"""`bench run --rehearse`: how a grid is shrunk, which combinations run, the lines it prints, its exit
status, that it leaves the results folder alone, and the paper grid rehearsed end to end."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.grid import parse_grid, read_grid
from bench.rehearse import Rehearsal, combinations, shrink
from broken_plugins import broken_defense

BROKEN = broken_defense("rehearsal_broken", "prepare(self, images, labels)", "broken on purpose\nsecond line",
                        "Fails in its set-level stage, as a crashing plugin would.")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_paper_is_shrunk_to_toy_scale_with_each_plugins_smallest_preset():
    raw, name, _ = read_grid("paper")
    small = shrink(raw)
    grid = parse_grid(small, name)
    assert (grid.data.train_size, grid.data.test_size) == (Rehearsal().train_size, Rehearsal().test_size)
    assert grid.data.name == "cifar10" and grid.seeds == (0,) and grid.recipe.epochs == 1
    assert grid.recipe.lr == 0.1 and grid.recipe.grad_clip is None  # the grid's recipe (iss60) otherwise
    em = grid.config["em"]
    assert (em["surrogate"], em["max_rounds"], em["steps"]) == ("tiny_cnn", 1, 1)  # cpu, then one_step on top
    assert grid.config["early_stop"]["val_size"] == 10  # its tiny preset, not cpu's 200
    assert grid.config["at"]["steps"] == 2  # at's only small preset, cpu_smoke
    at_4 = grid.variants["at_4"].config
    assert at_4["steps"] == 2 and at_4["eps"] == pytest.approx(4 / 255)  # the variant keeps what makes it one
    assert grid.robust["steps"] == 1 and grid.robust_defenses == ("at", "at_4")
    assert grid.attacks == tuple(raw["attacks"]) and grid.defenses == tuple(raw["defenses"])
    assert raw["recipe"] == "iss60" and "train_size" not in raw["data"]  # the grid's own TOML is left as it was


def test_names_that_shrink_to_one_config_are_one_combination():
    raw = {"attacks": ["clean", "em", "em_long"], "defenses": ["none", "jpeg", "jpeg+at", "jpeg+at_long"],
           "archs": ["tiny_cnn"], "seeds": [3, 4], "poison_ratio": [0.2, 0.5, 1.0],
           "variants": {"em_long": {"plugin": "em", "steps": 50}, "at_long": {"plugin": "at", "steps": 40}},
           "config": {"at": {"steps": 7}}}
    grid = parse_grid(shrink(raw), "g")
    assert grid.attacks == ("clean", "em") and grid.defenses == ("none", "jpeg", "jpeg+at")
    assert grid.variants == {} and grid.seeds == (3,) and grid.poison_ratios == (1.0, 0.5)


def test_every_attack_meets_every_defense_on_the_first_arch_and_each_defense_every_arch():
    raw = {"attacks": ["clean", "random_noise", "lsp", "ops"], "defenses": ["none", "jpeg"],
           "archs": ["tiny_cnn", "vgg11", "resnet18"]}
    grid = parse_grid(shrink(raw), "g")
    chosen = combinations(grid, grid.cells())
    triples = [(c.attack, c.defense, c.arch) for c in chosen]
    assert len(triples) == len(set(triples)) == 4 * 2 + 2 * 2
    assert {(a, d) for a, d, arch in triples if arch == "tiny_cnn"} == {(a, d) for a in raw["attacks"]
                                                                      for d in raw["defenses"]}
    others = [(d, arch) for _, d, arch in triples if arch != "tiny_cnn"]
    assert sorted(others) == sorted((d, arch) for d in raw["defenses"] for arch in ("vgg11", "resnet18"))
    assert {a for a, _, arch in triples if arch != "tiny_cnn"} == {"random_noise", "lsp", "ops"}  # taken in turn


def test_a_failing_combination_is_one_line_and_the_exit_status_and_the_results_folder_is_left_alone(tmp_path,
                                                                                                     tiny_npz):
    (tmp_path / "broken.py").write_text(BROKEN)
    grid = tmp_path / "g.toml"
    grid.write_text(f'plugins = ["broken.py"]\nattacks = ["clean", "random_noise"]\n'
                    f'defenses = ["none", "rehearsal_broken"]\narchs = ["tiny_cnn"]\nrecipe = "cpu_smoke"\n'
                    f'analysis = ["mi"]\n[data]\nname = "{tiny_npz}"\n')
    results = tmp_path / "results"
    done = invoke("run", "--grid", str(grid), "--rehearse", "--results", str(results))
    assert done.exit_code == 1, done.output
    lines = done.output.strip().splitlines()
    assert lines[0].startswith("rehearsing grid g: 4 combinations of its 4 cells, 30 training images")
    passed = [line for line in lines if line.startswith("passed  ")]
    failed = [line for line in lines if line.startswith("FAILED  ")]
    assert sorted(re.sub(r" \(.*", "", line) for line in passed) == [
        "passed  clean / none / tiny_cnn + mi", "passed  random_noise / none / tiny_cnn + mi"]
    assert failed == ["FAILED  clean / rehearsal_broken / tiny_cnn + mi: RuntimeError: broken on purpose",
                      "FAILED  random_noise / rehearsal_broken / tiny_cnn + mi: RuntimeError: broken on purpose"]
    assert lines[-1].startswith("rehearsal of ") and "2 of 4 combinations passed, 2 failed" in lines[-1]
    assert not results.exists()


def test_rehearse_runs_here_only():
    for extra in (["--dry-run"], ["--executor", "ray"]):
        done = invoke("run", "--grid", "smoke", "--rehearse", *extra)
        assert done.exit_code == 2 and "--rehearse runs on this machine" in done.output


@pytest.mark.slow
@pytest.mark.parametrize("grid, combinations", [("paper", 13 * 13), ("depth", 19)])
def test_the_paper_and_depth_grids_rehearse_with_every_combination_passing(grid, combinations, cifar10_npz,
                                                                           monkeypatch, tmp_path):
    """paper: every attack x defense; depth: every architecture (VGG-11 to ResNet-50) with the MI analysis."""
    monkeypatch.setenv("BENCH_CIFAR10", str(cifar10_npz))
    monkeypatch.chdir(tmp_path)  # so that the default results folder, were it written, would show here
    done = invoke("run", "--grid", grid, "--rehearse")
    lines = done.output.strip().splitlines()
    assert [line for line in lines if not line.startswith("passed  ")][1:-1] == []  # no FAILED line
    assert sum(line.startswith("passed  ") for line in lines) == combinations, done.output
    assert done.exit_code == 0 and not Path("results").exists()

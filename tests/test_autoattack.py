"""The AutoAttack analysis (bench.robust.autoattack_accuracy): a model whose robust accuracy is known, its
grid settings, the missing-package error, the record and the report column. Tiny synthetic tasks on the
CPU; one grid of four one-epoch cells on 20 attacked images."""
import importlib.util

import pytest
import torch
from torch import nn

from bench.config import ConfigError, as_dict
from bench.data import ImageSet
from bench.executors import run_grid
from bench.grid import GridOverrides, parse_grid
from bench.report import ROBUST_METRICS, tidy, write_report
from bench.robust import AUTOATTACK_ATTACKS, AutoAttackConfig, autoattack_accuracy, robust_accuracy, RobustConfig
from bench.store import Store

pytest.importorskip("pyautoattack")  # the dev extra installs it

BASE = {"attacks": ["clean", "ops"], "defenses": ["none", "jpeg"], "archs": ["tiny_cnn"], "recipe": "cpu_smoke"}
CENTRES = 0.05 + 0.1 * torch.arange(10)  # class k: images whose mean brightness is 0.05 + 0.1 k


class Brightness(nn.Module):
    """Classifies an image by its mean brightness, the nearest of CENTRES: 0.05 apart from the boundaries."""

    def forward(self, x):
        return -1000 * (x.mean(dim=(1, 2, 3)).unsqueeze(1) - CENTRES.to(x.device)) ** 2


def brightness_task(n: int = 40) -> ImageSet:
    """Ten classes of 3x8x8 images at their class's brightness, give or take less than 0.01 per image."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    images = CENTRES[labels].view(n, 1, 1, 1) + 0.04 * (torch.rand(n, 3, 8, 8, generator=g) - 0.5)
    return ImageSet((images * 255).round().to(torch.uint8), labels, torch.arange(n), 10, n)


def test_autoattack_cannot_move_a_brightness_classifier_within_a_small_ball_and_breaks_it_in_a_large_one():
    model, test = Brightness(), brightness_task()
    # 8/255 moves the mean by at most 0.031 < the 0.04 left to the nearest boundary: every image is robust.
    small = autoattack_accuracy(model, test, AutoAttackConfig(test_size=None), seed=0)
    assert small["autoattack_clean_acc"] == 1.0 and small["autoattack_acc"] == 1.0
    # 0.2 moves it two classes: none is.
    large = autoattack_accuracy(model, test, AutoAttackConfig(eps=0.2, test_size=None), seed=0)
    assert large["autoattack_clean_acc"] == 1.0 and large["autoattack_acc"] == 0.0
    assert large["autoattack_attacks"] == list(AUTOATTACK_ATTACKS) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert large["autoattack_version"] == "standard" and large["autoattack_precision"] == "fp32"
    assert large["autoattack_images"] == 40 and large["autoattack_package"].startswith("pyautoattack 0.")
    # PGD-20 agrees at both radii: it bounds AutoAttack from above, and here both are exact.
    assert robust_accuracy(model, test, RobustConfig(), seed=0)["robust_acc"] == 1.0
    assert robust_accuracy(model, test, RobustConfig(eps=0.2, step_size=0.05), seed=0)["robust_acc"] == 0.0


def test_it_attacks_a_class_balanced_subset_and_leaves_the_model_and_the_random_state_as_found():
    model, test = Brightness().train(), brightness_task()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    result = autoattack_accuracy(model, test, AutoAttackConfig(eps=0.2, test_size=20), seed=0)
    assert torch.equal(torch.rand(3), expected), "AutoAttack's torch.manual_seed calls must not leak"
    assert model.training and result["autoattack_images"] == 20
    with pytest.raises(ConfigError, match=r"autoattack\.test_size: 500 is more than the cell's 40 test images"):
        autoattack_accuracy(model, test, AutoAttackConfig(test_size=500), seed=0)


def test_fewer_than_ten_classes_is_an_error_naming_the_targets():
    test = brightness_task()
    two = ImageSet(test.images, test.labels % 2, test.index, 2, len(test))
    with pytest.raises(ConfigError, match=r"targets the 9 most likely wrong classes and needs at least 10; .* has 2"):
        autoattack_accuracy(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), two, AutoAttackConfig(), seed=0)


def test_without_the_package_a_grid_that_asks_for_it_stops_before_any_work(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyautoattack" else real(name, *a))
    # The data path does not exist: the install message comes first, before any data is loaded.
    grid = parse_grid({**BASE, "data": {"name": str(tmp_path / "absent.npz")}, "analysis": ["autoattack"]}, "g")
    with pytest.raises(ConfigError, match=r"analysis autoattack needs the pyautoattack package .*pip install "
                                          r"\"unlearnable-bench\[autoattack\]\""):
        run_grid(grid, Store(tmp_path / "out"), torch.device("cpu"), progress=False)
    assert not (tmp_path / "out" / "records").exists()


@pytest.mark.parametrize("fields,message", [
    ({"eps": 0}, r"eps: must be in \(0, 1\] pixel units, got 0"),
    ({"test_size": 0}, r"test_size: must be at least 1 image, or unset"),
])
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        AutoAttackConfig(**fields)


@pytest.mark.parametrize("change,message", [
    ({"autoattack": {"test_size": 10}}, r"grid g: \[autoattack\] is set but analysis does not list \"autoattack\""),
    ({"analysis": ["autoattack"], "autoattack": {"steps": 10}},
     r"grid g: autoattack: unknown key 'steps'; allowed: eps, test_size, defenses$"),
    ({"analysis": ["autoattack"], "autoattack": {"eps": "0/255"}}, r"autoattack\.eps: must be in \(0, 1\] pixel units"),
    ({"analysis": ["autoattack"], "autoattack": {"defenses": ["at"]}},
     r"grid g: autoattack\.defenses: 'at' is not one of the grid's defenses; allowed: none, jpeg"),
    ({"analysis": ["autoattack"], "autoattack": [1]}, r"grid g: autoattack must be a table \[autoattack\]"),
])
def test_grid_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid({**BASE, **change}, "g")


def test_the_grid_key_sets_the_cells_that_run_it_and_the_others_keep_their_ids():
    plain = {c.label: c for c in parse_grid(BASE, "g").cells()}
    grid = parse_grid({**BASE, "analysis": ["robust", "autoattack"], "autoattack": {"defenses": ["jpeg"]}}, "g")
    for cell in grid.cells():
        assert cell.robust, "robust runs everywhere: its own table names no defenses"
        if cell.defense == "jpeg":
            assert cell.analysis == ("autoattack", "robust") and cell.autoattack == as_dict(AutoAttackConfig())
            assert cell.autoattack["test_size"] == 1000 and cell.autoattack["eps"] == 8 / 255
        else:
            assert cell.analysis == ("robust",) and not cell.autoattack and "autoattack" not in cell.to_dict()
    robust_only = {c.label: c.cell_id for c in parse_grid({**BASE, "analysis": ["robust"]}, "g").cells()}
    assert all(c.cell_id == robust_only[c.label] for c in grid.cells() if c.defense == "none")
    assert all(c.cell_id != plain[c.label].cell_id for c in grid.cells())
    changed = parse_grid(GridOverrides(sets=("autoattack.test_size=50",)).apply(
        {**BASE, "analysis": ["autoattack"]}, "g"), "g")
    assert changed.autoattack["test_size"] == 50
    with pytest.raises(ConfigError, match=r"'autoattack' is not an attack, defense or arch of grid g; allowed: recipe, "
                                          r"data, clean"):
        GridOverrides(sets=("autoattack.test_size=50",)).apply(BASE, "g")


@pytest.mark.slow  # 15 s on the project's 2-core CPU: four trainings and two AutoAttacks
def test_a_grid_with_autoattack_records_it_and_the_report_shows_it_beside_pgd(tmp_path, tiny_npz):
    grid = parse_grid({"attacks": ["clean", "random_noise"], "defenses": ["none", "jpeg"], "archs": ["tiny_cnn"],
                       "recipe": {"preset": "cpu_smoke", "epochs": 1, "batch_size": 64}, "data": {"name": str(tiny_npz)},
                       "config": {"tiny_cnn": {"width": 8}}, "analysis": ["robust", "autoattack"],
                       "robust": {"defenses": ["jpeg"], "steps": 2, "step_size": "4/255", "test_size": 20},
                       "autoattack": {"defenses": ["jpeg"], "test_size": 20}}, "g")
    store = Store(tmp_path / "out")
    assert run_grid(grid, store, torch.device("cpu"), progress=False)["done"] == 4
    records = {r.spec["defense"] + "/" + r.spec["attack"]: r for r in store.records()}
    for key, record in records.items():
        if key.startswith("jpeg"):
            analysis = record.analysis
            assert 0 <= analysis["autoattack_acc"] <= analysis["autoattack_clean_acc"] <= 1
            assert analysis["autoattack_images"] == 20 == analysis["robust_images"]
            assert record.timings["autoattack_s"] > 0 and record.spec["autoattack"]["test_size"] == 20
        else:
            assert record.analysis is None and "autoattack_s" not in record.timings and "autoattack" not in record.spec
    rows = tidy(store.records())
    rows = rows[rows.metric == "autoattack_acc"]
    assert "autoattack_acc" in ROBUST_METRICS and len(rows) == 2 and set(rows.unit) == {"%"}
    md = write_report(store.records(), tmp_path / "reports", "g", grid.attacks, grid.defenses, formats=("md",)).markdown
    section = md.split("### Robust accuracy")[1]
    assert "| attack | JPEG clean (%) | JPEG robust (%) | JPEG AutoAttack (%) |" in section
    assert "AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) at Linf 8/255, fp32, on 20 test images" in section
    assert f"{100 * records['jpeg/clean'].analysis['autoattack_acc']:.2f}" in section

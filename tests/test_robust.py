"""Robust accuracy (bench.robust): the PGD loop, the analysis on a trained model, its grid settings, the
record and the report. Tiny synthetic tasks on the CPU; one grid of two one-epoch cells."""
import json
import tomllib

import pytest
import torch
from torch import nn

from bench.config import ConfigError, as_dict
from bench.data import ImageSet
from bench.executors import run_grid
from bench.grid import GridOverrides, load_grid, parse_grid, shipped_grids
from bench.report import ROBUST_METRICS, tidy, write_report
from bench.robust import RobustConfig, pgd_linf, robust_accuracy
from bench.store import Store

BASE = {"attacks": ["clean", "ops"], "defenses": ["none", "jpeg"], "archs": ["tiny_cnn"], "recipe": "cpu_smoke"}


def brightness_task(n: int = 200, seed: int = 0) -> ImageSet:
    """Two classes of 3x8x8 images told apart by their brightness: class 0 near 0.35, class 1 near 0.65."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    level = 0.35 + 0.3 * labels.float()
    images = (level.view(n, 1, 1, 1) + 0.05 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return ImageSet((images * 255).round().to(torch.uint8), labels, torch.arange(n), 2, n)


@pytest.fixture(scope="module")
def trained():
    """A linear model that separates `brightness_task` (clean accuracy ~1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    task = brightness_task()
    x, y = task.images.float() / 255, task.labels
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for _ in range(60):  # ~100% training accuracy from step 40
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, brightness_task(seed=1)


class Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_pgd_at_a_large_budget_breaks_a_model_that_is_right_on_clean_images(trained):
    model, test = trained
    weak = robust_accuracy(model, test, RobustConfig(eps=1 / 255, step_size=0.5 / 255, steps=5), seed=0)
    strong = robust_accuracy(model, test, RobustConfig(eps=0.3, step_size=0.05, steps=20), seed=0)
    assert strong["robust_clean_acc"] >= 0.95, "the task must be learnt for the test to mean anything"
    assert strong["robust_acc"] <= 0.05 < weak["robust_acc"]
    for result in (weak, strong):
        assert result["robust_acc"] <= result["robust_clean_acc"]
        assert result["robust_images"] == len(test) and result["robust_precision"] == "fp32"
    assert strong["robust_eps"] == 0.3 and strong["robust_steps"] == 20 and strong["robust_random_start"] is True


def test_pgd_stays_in_the_ball_and_the_image_range_and_takes_its_steps(trained):
    model, test = trained
    x, y = test.images.float() / 255, test.labels
    counting = Counting(model)
    x_adv = pgd_linf(counting, x, y, eps=4 / 255, step_size=1 / 255, steps=7)
    assert counting.calls == 7
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # One step longer than the radius from the clean image lands on the ball's corners (away from 0 and 1).
    corner = pgd_linf(model, x, y, eps=4 / 255, step_size=10 / 255, steps=1, random_start=False)
    inside = (x > 4 / 255) & (x < 1 - 4 / 255)
    assert torch.allclose((corner - x)[inside].abs(), torch.full_like(x[inside], 4 / 255), atol=1e-6)


def test_the_random_start_is_drawn_from_the_generator_it_is_given(trained):
    model, test = trained
    x, y = test.images.float() / 255, test.labels

    def attack(seed):
        g = torch.Generator().manual_seed(seed)
        return pgd_linf(model, x, y, eps=8 / 255, step_size=1 / 255, steps=1, generator=g)

    assert torch.equal(attack(3), attack(3)) and not torch.equal(attack(3), attack(4))
    config = RobustConfig(eps=8 / 255, step_size=1 / 255, steps=1)
    assert robust_accuracy(model, test, config, seed=5) == robust_accuracy(model, test, config, seed=5)


def test_a_test_size_attacks_a_class_balanced_subset(trained):
    model, test = trained
    result = robust_accuracy(model, test, RobustConfig(test_size=50), seed=0)
    assert result["robust_images"] == 50
    with pytest.raises(ConfigError, match=r"robust\.test_size: 500 is more than the cell's 200 test images"):
        robust_accuracy(model, test, RobustConfig(test_size=500), seed=0)


@pytest.mark.parametrize("fields,message", [
    ({"eps": 0}, r"eps: must be in \(0, 1\] pixel units, got 0"),
    ({"step_size": 2.0}, r"step_size: must be in \(0, 1\] pixel units"),
    ({"steps": 0}, r"steps: must be at least 1, got 0"),
    ({"test_size": 0}, r"test_size: must be at least 1 image, or unset"),
])
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        RobustConfig(**fields)


@pytest.mark.parametrize("change,message", [
    ({"robust": {"steps": 10}}, r"grid g: \[robust\] is set but analysis does not list \"robust\""),
    ({"analysis": ["robust"], "robust": {"stpes": 10}},
     r"grid g: robust: unknown key 'stpes'; allowed: eps, step_size, steps, random_start, test_size, defenses"),
    ({"analysis": ["robust"], "robust": {"eps": "0/255"}}, r"robust\.eps: must be in \(0, 1\] pixel units, got 0"),
    ({"analysis": ["robust"], "robust": {"defenses": ["at"]}},
     r"grid g: robust\.defenses: 'at' is not one of the grid's defenses; allowed: none, jpeg"),
    ({"analysis": ["robust"], "robust": {"defenses": "none"}}, None),  # text, as --set gives it, is a list
    ({"analysis": ["robust"], "robust": ["at"]}, r"grid g: robust must be a table \[robust\]"),
])
def test_grid_errors_name_the_key(change, message):
    if message is None:
        assert parse_grid({**BASE, **change}, "g").robust_defenses == ("none",)
        return
    with pytest.raises(ConfigError, match=message):
        parse_grid({**BASE, **change}, "g")


def test_cells_without_the_robust_analysis_keep_their_ids():
    plain = {c.label: c for c in parse_grid(BASE, "g").cells()}
    grid = parse_grid({**BASE, "analysis": ["robust"], "robust": {"defenses": ["jpeg"], "eps": "4/255"}}, "g")
    for cell in grid.cells():
        if cell.defense == "jpeg":
            assert cell.analysis == ("robust",) and cell.robust == {**cell.robust, "eps": 4 / 255, "steps": 20}
            assert cell.cell_id != plain[cell.label].cell_id and cell.poison_key == plain[cell.label].poison_key
        else:
            assert cell.to_dict() == plain[cell.label].to_dict() and cell.cell_id == plain[cell.label].cell_id
    everywhere = parse_grid({**BASE, "analysis": ["robust"]}, "g")
    assert all(c.robust == as_dict(RobustConfig()) for c in everywhere.cells())
    steps = parse_grid({**BASE, "analysis": ["robust"], "robust": {"steps": 10}}, "g").cells()
    assert {c.cell_id for c in steps}.isdisjoint(c.cell_id for c in everywhere.cells()), "its settings are in the id"


def test_overrides_set_the_robust_fields_and_keep_its_defenses_in_the_list():
    raw = {**BASE, "analysis": ["robust"], "robust": {"defenses": ["jpeg"]}}
    grid = parse_grid(GridOverrides(sets=("robust.steps=5", "robust.eps=4/255")).apply(raw, "g"), "g")
    assert grid.robust["steps"] == 5 and grid.robust["eps"] == 4 / 255
    only_none = parse_grid(GridOverrides(defenses=("none",)).apply(raw, "g"), "g")
    assert only_none.robust_defenses == () and not any(c.analysis for c in only_none.cells())
    with pytest.raises(ConfigError, match=r"'robust' is not an attack, defense or arch of grid g; allowed: recipe, data, "
                                          r"clean"):
        GridOverrides(sets=("robust.steps=5",)).apply(BASE, "g")


def test_the_paper_and_full_grids_ask_for_it_on_their_at_cells_only():
    for name, at in (("paper", {"at", "at_4"}), ("full", {"at"})):
        grid = load_grid(name)
        without = {c.label: c.cell_id for c in parse_grid(
            {k: v for k, v in _raw(name).items() if k not in ("analysis", "robust")}, name).cells()}
        for cell in grid.cells():
            if cell.name("defense") in at:
                assert cell.analysis == ("robust",) and cell.robust == as_dict(RobustConfig()), cell.label
            else:
                assert not cell.analysis and not cell.robust and cell.cell_id == without[cell.label], cell.label
        assert sum(c.name("defense") in at for c in grid.cells()) == len(grid.cells()) // len(grid.defenses) * len(at)


def _raw(name: str) -> dict:
    return tomllib.loads(shipped_grids()[name].read_text())


def test_a_grid_with_the_robust_analysis_records_it_and_the_report_shows_it(tmp_path, tiny_npz):
    grid = parse_grid({"attacks": ["clean", "random_noise"], "defenses": ["none", "jpeg"], "archs": ["tiny_cnn"],
                       "recipe": {"preset": "cpu_smoke", "epochs": 1, "batch_size": 64}, "data": {"name": str(tiny_npz)},
                       "config": {"tiny_cnn": {"width": 8}}, "analysis": ["robust"],
                       "robust": {"defenses": ["jpeg"], "steps": 2, "step_size": "4/255"}}, "g")
    store = Store(tmp_path / "out")
    assert run_grid(grid, store, torch.device("cpu"), progress=False)["done"] == 4
    records = {r.spec["defense"] + "/" + r.spec["attack"]: r for r in store.records()}
    for key, record in records.items():
        if key.startswith("jpeg"):
            analysis = record.analysis
            assert 0 <= analysis["robust_acc"] <= analysis["robust_clean_acc"] <= 1
            assert analysis["robust_images"] == 100 and analysis["robust_steps"] == 2
            assert record.timings["robust_s"] > 0 and record.spec["robust"]["step_size"] == 4 / 255
        else:
            assert record.analysis is None and "robust_s" not in record.timings and "robust" not in record.spec
    df = tidy(store.records())
    robust_rows = df[df.metric.isin(ROBUST_METRICS)]
    assert len(robust_rows) == 2 and set(robust_rows.unit) == {"%"}
    jpeg_clean = records["jpeg/clean"]
    assert robust_rows[robust_rows.cell_id == jpeg_clean.cell_id].value.item() == 100 * jpeg_clean.analysis["robust_acc"]
    report = write_report(store.records(), tmp_path / "reports", "g", grid.attacks, grid.defenses,
                          formats=("md", "csv", "latex"))
    md = report.markdown
    assert "### Robust accuracy" in md and "PGD-2 at Linf 8/255 in steps of 4/255 from a random start, fp32" in md
    assert "| attack | JPEG clean (%) | JPEG robust (%) |" in md and "No defense robust" not in md
    assert f"{100 * jpeg_clean.analysis['robust_acc']:.2f}" in md.split("### Robust accuracy")[1]
    assert "tab:g-robust" in report.paths["tex"].read_text()
    assert "Mutual information" not in md, "robust records alone make no MI section"
    assert json.loads(json.dumps(jpeg_clean.analysis)) == jpeg_clean.analysis

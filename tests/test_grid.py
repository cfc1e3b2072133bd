import pytest

from bench.config import ConfigError
from bench.grid import load_grid, parse_grid, shipped_grids

BASE = {"attacks": ["clean", "ops"], "defenses": ["none", "jpeg"], "archs": ["tiny_cnn"], "recipe": "cpu_smoke"}


def test_cells_are_the_product_and_ids_are_stable():
    grid = parse_grid({**BASE, "seeds": [0, 1]}, "g")
    cells = grid.cells()
    assert len(cells) == 2 * 2 * 2
    assert len({c.cell_id for c in cells}) == 8
    assert [c.cell_id for c in cells] == [c.cell_id for c in parse_grid({**BASE, "seeds": [0, 1]}, "g").cells()]
    # One poison per attack and seed, shared by the defenses.
    assert len({c.poison_key for c in cells}) == 4


def test_config_changes_the_ids():
    a = parse_grid(BASE, "g").cells()
    b = parse_grid({**BASE, "config": {"jpeg": {"quality": 50}}}, "g").cells()
    assert [c.cell_id for c in a if c.defense == "none"] == [c.cell_id for c in b if c.defense == "none"]
    assert {c.cell_id for c in a if c.defense == "jpeg"}.isdisjoint({c.cell_id for c in b if c.defense == "jpeg"})
    assert b[1].defense_config == {"quality": 50}


@pytest.mark.parametrize("change,message", [
    ({"attack": ["ops"]}, r"unknown key 'attack'; allowed keys: description, data, attacks"),
    ({"attacks": ["opz"]}, r"unknown attack 'opz' \(did you mean 'ops'\?\); known attacks: clean, .*\bem\b.*\blsp\b.*\bops\b"),
    ({"defenses": []}, r"defenses must be a non-empty list"),
    ({"recipe": {"preset": "cpu_smoke", "epochs": 0}}, r"recipe\.epochs: must be at least 1, got 0"),
    ({"recipe": "fast"}, r"recipe\.preset: unknown preset 'fast'; known presets: em60, apbench200, cpu_smoke"),
    ({"config": {"jpeg": {"quality": 0}}}, r"defense jpeg\.quality: must be in 1\.\.100, got 0"),
    ({"config": {"lsp": {"eps": 1.0}}}, r"\[config\.lsp\] names no attack, defense or arch of this grid"),
    ({"config": {"tiny_cnn": {"depth": 3}}}, r"arch tiny_cnn: unknown argument 'depth'"),
    ({"seeds": [-1]}, r"seeds must be a non-empty list of whole numbers >= 0"),
    ({"data": {"train_size": 0}}, r"data\.train_size: must be at least 1"),
])
def test_bad_grids_fail_before_any_work_with_the_key_named(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid({**BASE, **change}, "g")


def test_shipped_grids_load(tmp_path):
    assert "smoke" in shipped_grids()
    for name in shipped_grids():
        assert load_grid(name).cells()
    user = tmp_path / "mine.toml"
    user.write_text('attacks = ["clean"]\ndefenses = ["none"]\narchs = ["tiny_cnn"]\n')
    assert load_grid(str(user)).name == "mine"
    with pytest.raises(ConfigError, match="neither a shipped grid"):
        load_grid("nope")
    user.write_text("attacks = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_grid(str(user))

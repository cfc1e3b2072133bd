from dataclasses import dataclass

import pytest

from bench.config import ConfigError, build_config, require
from bench.registry import ARCHS, ATTACKS, DEFENSES, Registry


@dataclass(frozen=True)
class DemoConfig:
    steps: int = 10  # iterations
    eps: float = 8 / 255
    mode: str = "a"

    def __post_init__(self):
        require(self.steps >= 1, "steps", f"must be at least 1, got {self.steps}")


def make_registry() -> Registry:
    reg = Registry("widget", "bench.test-widgets", ("bench.config",))

    @reg.register("alpha")
    class Alpha:
        """Alpha widget: the first one."""

        Config = DemoConfig
        paper = "Someone et al., 2020"

        def __init__(self, config):
            self.config = config

    @reg.register("beta", paper="Other, 2021")
    def beta(size: int = 3):
        """Beta builder."""
        return ("beta", size)

    return reg


def test_listing_with_glob_and_descriptions():
    reg = make_registry()
    assert reg.names() == ["alpha", "beta"]
    assert reg.names("b*") == ["beta"]
    assert reg.entry("alpha").summary == "Alpha widget: the first one."
    assert reg.entry("alpha").paper == "Someone et al., 2020"
    assert reg.entry("beta").paper == "Other, 2021"


def test_create_with_overrides_and_kwargs():
    reg = make_registry()
    alpha = reg.create("alpha", {"steps": "20", "eps": "4/255"})
    assert alpha.config == DemoConfig(steps=20, eps=4 / 255)
    assert reg.create("beta", {"size": 5}) == ("beta", 5)


def test_unknown_name_lists_known_names():
    reg = make_registry()
    with pytest.raises(ConfigError, match=r"unknown widget 'alpah' \(did you mean 'alpha'\?\); known widgets: alpha, beta"):
        reg.get("alpah")


def test_unknown_field_lists_valid_fields():
    reg = make_registry()
    with pytest.raises(ConfigError, match=r"widget alpha: unknown config field 'step'; valid fields: steps, eps, mode"):
        reg.create("alpha", {"step": 3})
    with pytest.raises(ConfigError, match=r"widget beta: unknown argument 'width'; valid: size"):
        reg.create("beta", {"width": 3})


def test_bad_values_name_the_field():
    reg = make_registry()
    with pytest.raises(ConfigError, match=r"widget alpha\.steps: must be at least 1, got 0"):
        reg.create("alpha", {"steps": 0})
    with pytest.raises(ConfigError, match=r"alpha\.steps: expected a whole number"):
        reg.create("alpha", {"steps": 2.5})
    with pytest.raises(ConfigError, match=r"alpha\.eps: expected a number, got 'big'"):
        reg.create("alpha", {"eps": "big"})


def test_duplicate_name_is_an_error():
    reg = make_registry()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha")(type("Other", (), {}))


def test_literal_fields_list_allowed_values():
    from typing import Literal

    @dataclass(frozen=True)
    class C:
        norm: Literal["linf", "l2"] = "linf"

    with pytest.raises(ConfigError, match=r"x\.norm: 'l1' is not allowed; choose one of 'linf', 'l2'"):
        build_config(C, {"norm": "l1"}, "x")


@pytest.mark.parametrize("registry", [ATTACKS, DEFENSES, ARCHS], ids=lambda r: r.kind)
def test_every_builtin_plugin_is_described(registry):
    for name in registry.names():
        entry = registry.entry(name)
        assert entry.summary, f"{registry.kind} {name} needs a docstring"
        if registry is not ARCHS and name not in ("clean", "none", "external"):
            assert entry.paper, f"{registry.kind} {name} must name its paper"

"""The published numbers as data (bench.published): the files hold what /work/shared/REFERENCE.md holds."""
from __future__ import annotations

import dataclasses
import fnmatch
import math
import tomllib
from pathlib import Path

import pytest

from bench.config import ConfigError
from bench.published import ALL, Budget, parse_source, select_sources, shipped_sources
from bench.registry import ATTACKS, DEFENSES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = shipped_sources()

# Typed again from /work/shared/REFERENCE.md, so that a slip in a data file shows here: clean test
# accuracy (%) per source -> row label -> column label.
ISS = {"clean data": (94.68, 92.41, 85.38), "EM": (21.05, 93.01, 81.50), "REM": (25.44, 92.84, 81.50),
       "TAP": (8.17, 9.11, 83.87), "LSP": (19.07, 82.47, 83.01), "OPS": (36.55, 42.44, 82.53),
       "AR": (13.28, 34.04, 85.15), "SEP": (3.85, 3.57, 84.37)}
APBENCH = {"EM": (20.78, 18.79, 22.28, 31.14, 37.94, 92.03, 80.72, 82.51),
           "REM": (17.47, 21.96, 26.22, 43.07, 58.60, 92.27, 85.44, 77.46),
           "TAP": (6.27, 9.88, 14.21, 15.46, 70.75, 11.01, 84.08, 79.92),
           "LSP": (13.06, 14.96, 17.69, 18.77, 53.86, 64.70, 80.14, 81.38),
           "OPS": (14.69, 52.98, 64.72, 49.27, 37.32, 19.88, 78.48, 14.95)}
EXPECTED = {
    "iss2023": {row: dict(zip(("none", "gray", "JPEG-10"), values)) for row, values in ISS.items()},
    "apbench2023": {row: dict(zip(("std", "cutout", "cutmix", "mixup", "BDR", "gray", "JPEG", "AT"), values))
                    for row, values in APBENCH.items()},
    "fowl2021_tap": {"TAP, untargeted (released)": {"none": 7.26}},
    "huang2021_em": {"EM, sample-wise": {"none": 23.6}},
    "cuda_rsk": {"CUDA": {"none": 23.25, "AT": 44.40}},
}
UNVERIFIED = {"cuda_rsk"}  # REFERENCE.md: "third-party, RSK paper; unverified"
BUDGETS = {("iss2023", "LSP"): ("l2", 1.0), ("iss2023", "AR"): ("l2", 1.0), ("iss2023", "OPS"): ("l0", 1.0),
           ("iss2023", "clean data"): ("none", 0.0), ("apbench2023", "LSP"): ("l2", math.sqrt(3072) * 6 / 255),
           ("apbench2023", "OPS"): ("l0", 1.0)}


def test_the_shipped_sources_hold_the_numbers_of_reference_md_exactly():
    assert set(SOURCES) == set(EXPECTED)
    for source_id, rows in EXPECTED.items():
        source = SOURCES[source_id]
        assert {row.label: row.acc for row in source.attacks} == rows, source_id
        assert source.unverified == (source_id in UNVERIFIED)
        assert not any(row.unverified for row in source.attacks)
        for row in source.attacks:
            norm, eps = BUDGETS.get((source_id, row.label), ("linf", 8 / 255) if source_id != "cuda_rsk" else (None, None))
            assert (row.budget.norm, row.budget.eps) == (norm, pytest.approx(eps, rel=1e-4) if eps else eps), row.label


def test_each_source_states_where_it_comes_from_and_its_recipe():
    for source in SOURCES.values():
        assert source.title and source.paper and source.table and "REFERENCE.md" in source.read_from
        assert source.link.startswith("https://") and source.recipe["dataset"] == "cifar10"
    iss, apbench = SOURCES["iss2023"], SOURCES["apbench2023"]
    assert iss.arxiv == "2301.13838" and apbench.arxiv == "2308.03258"
    assert {k: iss.recipe[k] for k in ("arch", "epochs", "batch_size", "lr", "weight_decay", "schedule")} == {
        "arch": "resnet18", "epochs": 60, "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine"}
    assert {k: apbench.recipe[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay")} == {
        "epochs": 200, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


@pytest.mark.parametrize("source_id", sorted(SOURCES))
def test_every_name_a_source_maps_is_registered_with_the_config_fields_it_names(source_id):
    for kind, registry, entries in (("attack", ATTACKS, SOURCES[source_id].attacks),
                                    ("defense", DEFENSES, SOURCES[source_id].defenses)):
        for entry in entries:
            for name in entry.ours:
                assert name in registry.names(), f"{source_id}: {entry.label} maps to unknown {kind} {name!r}"
                fields = {f.name for f in dataclasses.fields(registry.get(name).Config)}
                assert set(entry.config) <= fields, f"{source_id}: {name} has no field {set(entry.config) - fields}"


def test_the_data_files_are_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bench"]
    files = sorted((ROOT / "bench" / "published").glob("*.toml"))
    assert len(files) == len(SOURCES)
    for path in files:
        assert any(fnmatch.fnmatch(f"published/{path.name}", glob) for glob in package_data), path.name


MINIMAL = {"title": "t", "paper": "p", "table": "x", "read_from": "r", "recipe": {"dataset": "cifar10"},
           "defenses": {"none": {"ours": ["none"]}}, "attacks": {"EM": {"ours": ["em"], "budget": "Linf 8/255",
                                                                          "acc": {"none": 20.0}}}}


@pytest.mark.parametrize("change,message", [
    ({"acuracy": 1}, r"published source bad: unknown key 'acuracy'"),
    ({"recipe": {"epoch": 60}}, r"bad, recipe: unknown key 'epoch'; allowed: .*epochs"),
    ({"attacks": {"EM": {"acc": {"std": 20.0}}}}, r"bad, attacks.EM.acc: 'std' is no column; columns: none"),
    ({"attacks": {"EM": {"acc": {"none": 120.0}}}}, r"attacks.EM.acc.none: must be an accuracy in % \(0-100\), got 120.0"),
    ({"metric": "best"}, r"bad, metric: must be test_acc_last or test_acc_best, got 'best'"),
])
def test_a_bad_source_file_names_the_source_and_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_source("bad", {**MINIMAL, **change})
    missing = {k: v for k, v in MINIMAL.items() if k != "recipe"}
    with pytest.raises(ConfigError, match="published source bad: missing recipe"):
        parse_source("bad", missing)


def test_budgets_parse_as_papers_write_them():
    assert Budget.parse("Linf 8/255") == Budget("Linf 8/255", "linf", 8 / 255)
    assert Budget.parse("L2 1.3041").eps == 1.3041 and Budget.parse("L0 1 px").norm == "l0"
    assert Budget.parse("none").eps == 0.0 and Budget.parse("class-wise blur kernels").norm is None


def test_compare_takes_published_or_source_ids_and_names_the_allowed_ones():
    assert [s.id for s in select_sources(ALL)] == sorted(SOURCES)
    assert [s.id for s in select_sources("iss2023,apbench2023")] == ["iss2023", "apbench2023"]
    with pytest.raises(ValueError, match=r"--compare: unknown published source 'iss'; allowed: published, apbench2023, "):
        select_sources("iss")

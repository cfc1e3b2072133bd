"""Model-based attacks on real CIFAR-10 (CPU presets) and their resumable generation."""
from __future__ import annotations

import pytest
import torch

from bench.context import RunContext
from bench.grid import parse_grid
from bench.registry import ATTACKS
from bench.executors import run_grid
from bench.store import Store
from methods import bilevel
from tests.test_attacks import TINY

MODEL_BASED = ["em", "em_classwise", "rem", "tap", "miue", "hypo", "sep"]
# Each attack runs its CPU preset (same code path as the official settings, smaller numbers).
REAL = ["em", "rem", "miue", "tap", "sep"]
# Attacks that do not remove 10 points at this scale, and the drop each must make instead: half the
# smallest of three seeds' drops measured outside the suite (docs/attacks.md, "HYPO and SEP").
# HYPO's CPU preset removed 3.3, 2.1 and 4.1 points at seeds 0, 1 and 2.
WEAK = {"hypo": 0.01}


def real_grid(cifar10_npz, attacks, **keys) -> dict:
    """The raw grid of 2,000 CIFAR-10 images, tiny_cnn for 10 epochs, each attack at its CPU preset."""
    return {"attacks": ["clean", *attacks], "defenses": ["none"], "archs": ["tiny_cnn"],
            "recipe": {"preset": "cpu_smoke", "epochs": 10},
            "data": {"name": str(cifar10_npz), "train_size": 2000, "test_size": 1000},
            "config": {"tiny_cnn": {"width": 16}, **{a: {"preset": "cpu"} for a in attacks}}, **keys}


@pytest.fixture(scope="module")
def real_store(cifar10_npz, tmp_path_factory) -> Store:
    """The records and cached poisons of tiny_cnn trained on each poison of 2,000 CIFAR-10 images (one grid)."""
    store = Store(tmp_path_factory.mktemp("attacks_real"))
    counts = run_grid(parse_grid(real_grid(cifar10_npz, [*REAL, *WEAK]), "attacks_real"), store, torch.device("cpu"),
                      progress=False)
    assert counts["failed"] == 0, [r.error for r in store.records() if r.status == "failed"]
    return store


@pytest.fixture(scope="module")
def real_results(real_store) -> dict[str, float]:
    """Clean test accuracy per attack of the fully poisoned cells."""
    return {r.spec["attack"]: r.metrics["test_acc_last"] for r in real_store.records() if not r.poisoned}


@pytest.mark.slow
@pytest.mark.parametrize("attack", REAL)
def test_poison_lowers_clean_test_accuracy_by_ten_points(real_results, attack):
    drop = real_results["clean"] - real_results[attack]
    print(f"{attack}: clean {real_results['clean']:.1%} -> {real_results[attack]:.1%} ({100 * drop:.1f} points)")
    assert drop >= 0.10, f"{attack} removes only {100 * drop:.1f} points"


@pytest.mark.slow
@pytest.mark.parametrize("attack", WEAK)
def test_a_weak_poison_lowers_clean_test_accuracy_by_its_measured_margin(real_results, attack):
    drop = real_results["clean"] - real_results[attack]
    print(f"{attack}: clean {real_results['clean']:.1%} -> {real_results[attack]:.1%} ({100 * drop:.1f} points)")
    assert drop >= WEAK[attack], f"{attack} removes only {100 * drop:.1f} points (its bar: {100 * WEAK[attack]:.1f})"


def test_em_on_a_fifth_of_the_set_barely_lowers_accuracy(cifar10_npz, real_store, real_results):
    """EM's finding (Huang et al., ICLR 2021): below 100% poisoned, EM barely lowers clean accuracy. The
    fixture's EM poison serves the ratio too: one more victim, no generation.

    Measured (2-core EPYC, seeds 0/1/2): clean 45.7 / 46.0 / 46.9%, EM on 20% 46.1 / 45.3 / 46.7%, on
    100% 11.4 / 14.8 / 14.0% (docs/grids.md). EM on a fifth is within the seeds' noise of clean, on
    either side of it (above it at seed 0, the one run here), so the test asks that it sit nearer the
    clean cell than the fully poisoned one, not strictly below clean."""
    grid = parse_grid(real_grid(cifar10_npz, ["em"], poison_ratio=0.2), "attacks_real_partial")
    counts = run_grid(grid, real_store, torch.device("cpu"), progress=False)
    assert counts["failed"] == 0 and counts["skipped"] == 1  # clean is the fixture's cell
    (record,) = [r for r in real_store.records() if r.spec.get("poison_ratio") == 0.2]
    assert record.poison["cached"] and record.poisoned["count"] == 400
    clean, fifth, em = real_results["clean"], record.metrics["test_acc_last"], real_results["em"]
    print(f"clean {clean:.1%}, em on 20% {fifth:.1%}, em on 100% {em:.1%}")
    assert fifth - em > abs(clean - fifth), "EM on a fifth of the set should sit nearer clean than EM on all of it"


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("name", MODEL_BASED)
def test_interrupted_generation_resumes_to_the_same_poison(name, tiny_set, tmp_path, monkeypatch):
    """Killed after its second checkpoint, a generation resumes there and ends where an unbroken one does."""
    overrides = {**TINY[name]}
    if name == "rem":
        overrides.update(train_steps=4)
    if name in ("em", "em_classwise"):
        overrides.update(max_rounds=4, stop_accuracy=1.0)
    if name == "miue":
        overrides.update(epochs=4)
    if name == "tap":
        overrides.update(batch_size=16)  # 4 batches x 2 restarts: checkpoints mid-restart
    if name in ("hypo", "sep"):
        overrides.update(batch_size=16)  # 4 batches, a checkpoint after each
    attack = ATTACKS.create(name, overrides)
    saves = []
    original = bilevel.Checkpoint.save

    def counting_save(self, state):
        original(self, state)
        saves.append(1)
        if die_after and len(saves) == die_after:
            raise Interrupted

    monkeypatch.setattr(bilevel.Checkpoint, "save", counting_save)
    die_after = 0
    # checkpoint_every_s=0: a checkpoint at every chance, so that the kill below lands after a known one.
    unbroken = attack(tiny_set, RunContext(seed=3, work_dir=tmp_path / "unbroken", checkpoint_every_s=0))
    total = len(saves)
    assert total >= 3, "the generation must checkpoint more than twice for this test to mean anything"

    saves.clear()
    die_after = 2
    ctx = RunContext(seed=3, work_dir=tmp_path / "work", checkpoint_every_s=0)
    with pytest.raises(Interrupted):
        attack(tiny_set, ctx)
    saves.clear()
    die_after = 0
    resumed = attack(tiny_set, ctx)
    assert len(saves) == total - 2, "the resumed run must do only the work left after the last checkpoint"
    assert torch.equal(resumed.images, unbroken.images)

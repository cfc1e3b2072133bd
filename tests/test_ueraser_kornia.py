"""UEraser's default augmentations against kornia 0.6.12's own outputs (APBench's pinned version)."""
import numpy as np
import pytest
import torch

from defenses import kornia0612 as k

REF = np.load(__file__.rsplit("/", 1)[0] + "/data/ueraser_kornia0612.npz")


def test_the_op_table_is_kornia_0_6_12s_default_policy():
    assert list(k.TRIVIAL_OPS) == list(REF["ops"])  # 12 ops, no identity or colour


@pytest.mark.parametrize("name", list(REF["ops"]))
def test_each_trivial_augment_op_gives_kornia_0_6_12s_pixels(name):
    x = torch.from_numpy(REF["pixels"]).float() / 255
    mag = torch.from_numpy(REF[f"{name}_magnitude"])
    if name == "posterize":
        mag = mag.int()
    op, _ = k.TRIVIAL_OPS[name]
    out = op(x, mag)
    assert torch.allclose(out, torch.from_numpy(REF[f"{name}_out"]).float(), atol=2e-3)


def test_magnitudes_are_drawn_in_0_6_12s_ranges_never_negative():
    torch.manual_seed(0)
    for name, lo, hi in [("rotate", 0, 30), ("shear_x", 0, 0.3), ("translate_x", 0, 16), ("solarize", 0, 1),
                         ("contrast", 0.1, 1.9)]:
        m = k.TRIVIAL_OPS[name][1](4000, 32, 32, "cpu")
        assert lo <= m.min() < lo + 0.05 * (hi - lo) and hi - 0.05 * (hi - lo) < m.max() <= hi, name
    bits = k.TRIVIAL_OPS["posterize"][1](8000, 32, 32, "cpu")
    counts = torch.bincount(bits, minlength=5) / 8000.0  # round(U(0, 4)): 0 and 4 half as often
    assert torch.allclose(counts, torch.tensor([0.125, 0.25, 0.25, 0.25, 0.125]), atol=0.02)


def test_one_op_per_call_for_the_whole_batch_each_op_reached(monkeypatch):
    calls = []
    fake = {name: ((lambda x, m, name=name: calls.append((name, len(x))) or x), draw)
            for name, (op, draw) in k.TRIVIAL_OPS.items()}
    monkeypatch.setattr(k, "TRIVIAL_OPS", fake)
    torch.manual_seed(0)
    for _ in range(200):
        k.trivial_augment(torch.rand(8, 3, 32, 32))
    assert len(calls) == 200 and all(n == 8 for _, n in calls)  # one op, on all 8 images, per call
    assert {name for name, _ in calls} == set(fake)


def test_diamond_square_gives_kornia_0_6_12s_maps_under_one_seed():
    torch.manual_seed(0)
    maps = k.diamond_square((3, 2, 32, 32), torch.from_numpy(REF["plasma_roughness"]))
    assert torch.allclose(maps, torch.from_numpy(REF["plasma"]).float(), atol=2e-3)

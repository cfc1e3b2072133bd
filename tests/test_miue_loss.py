import math

import pytest
import torch

from methods.bilevel import signed_steps
from methods.miue_loss import intra_class_cosine, supcon_loss


def simplex(classes: int, dim: int) -> torch.Tensor:
    """Unit vectors with pairwise cosine -1/(C-1): the best-separated class means."""
    e = torch.eye(classes, dim)
    centred = e - e[:classes].mean(0, keepdim=True)
    return torch.nn.functional.normalize(centred, dim=1)


def test_matches_the_definition_with_self_pairs():
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(12, 5, generator=g), torch.arange(12) % 3
    z = torch.nn.functional.normalize(f, dim=1)
    s = torch.exp(z @ z.T / 0.1)
    expected = -torch.stack([torch.log(s[i, y == y[i]].sum() / s[i].sum()) for i in range(12)]).mean()
    assert torch.allclose(supcon_loss(f, y, 0.1), expected, atol=1e-5)


def test_collapsed_features_are_at_the_minimum():
    classes, per_class, tau = 4, 6, 0.5  # tau 0.5 keeps the minimum well above float32 rounding
    y = torch.arange(classes).repeat_interleave(per_class)
    collapsed = simplex(classes, 8)[y].clone().requires_grad_(True)
    loss = supcon_loss(collapsed, y, tau)
    (grad,) = torch.autograd.grad(loss, collapsed)
    # No descent direction on the sphere: the gradient is normal to it (parallel to the feature).
    tangential = grad - (grad * collapsed).sum(1, keepdim=True) * collapsed
    assert tangential.norm() < 1e-5
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        moved = collapsed.detach() + 0.1 * torch.randn(collapsed.shape, generator=g)
        assert supcon_loss(moved, y, tau) > loss.item()
    # The closed form at the minimum: only the other classes' terms remain in the denominator.
    n, c = per_class, classes
    own, other = n * math.exp(1 / tau), n * (c - 1) * math.exp(-1 / (c - 1) / tau)
    assert math.isclose(loss.item(), math.log((own + other) / own), rel_tol=1e-4)


class RandomLinearFeatures(torch.nn.Module):
    """Features of a random projection: spread out (cosine near 0), like a trained network's.

    A freshly initialised CNN is a poor probe: its ReLU features of any two images have cosine
    above 0.9, so the loss falls there by pushing classes apart rather than pulling them together.
    """

    def __init__(self, g: torch.Generator):
        super().__init__()
        self.weight = torch.randn(3 * 32 * 32, 64, generator=g) / math.sqrt(3 * 32 * 32)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - 0.5) @ self.weight


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_descent_step_raises_intra_class_cosine(seed):
    g = torch.Generator().manual_seed(seed)
    model = RandomLinearFeatures(g)
    x = torch.rand(64, 3, 32, 32, generator=g)
    y = torch.arange(64) % 10

    def loss_fn(m, inputs, labels):
        return supcon_loss(m.features(inputs), labels)

    before = intra_class_cosine(model.features(x), y)
    delta = signed_steps(model, x, torch.zeros_like(x), y, loss_fn, steps=1, step_size=2 / 255, eps=8 / 255)
    after = intra_class_cosine(model.features((x + delta).clamp(0, 1)), y)
    assert after > before

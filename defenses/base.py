"""The defense interface: up to three points where a defense acts on training.

- `prepare(images, labels)`: once, on the whole (poisoned) training set, uint8 in and out;
  `prepare_test(images)` where the defense also changes test inputs.
- `augment(x, y)`: per batch on the device, float images in [0, 1]; may return soft labels.
- `adversary(model, x, y) -> x`: an inner maximisation run each step (adversarial training).
- `holdout(labels) -> rows`: rows of the training split the defender keeps out of training, in
  their clean form, as a validation set; the runner validates on them after every epoch and
  records the test accuracy at the epoch of best validation accuracy (early stopping).

The identity at every point is the default, so a defense overrides only where it acts.
`ComposedDefense` chains several (`jpeg+cutout` in a grid): see its docstring for the order.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from bench.config import ConfigError
from bench.plugin import Plugin
from bench.registry import DEFENSES, defense_parts

POINTS = ("prepare", "prepare_test", "augment", "adversary", "holdout")


class Defense(Plugin):
    """Base of every defense: `Plugin`'s contract, and the identity at each point it does not override."""

    adversary: Callable | None = None  # (model, x, y) -> x: set by defenses that train adversarially
    mixes_labels: ClassVar[bool] = False  # augment returns soft labels mixed from two images (mixup, cutmix)
    # The uint8 code of a black ([0, 1] value 0) pixel in the images `prepare` returns: the victim's
    # random crop pads with it. 0 unless a defense stores its images in other units (orthogonal_projection).
    crop_fill: int = 0

    def __init__(self, config, num_classes: int = 10):
        super().__init__(config)
        self.num_classes = num_classes  # for one-hot labels in augment

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return images

    def prepare_test(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def holdout(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Sorted rows of the training split (whose `labels` are given) kept out as a clean validation set; None: none."""
        return None

    def stages(self, point: str) -> list[Defense]:
        """The plugins that act at `point` (one of POINTS), in the order they run."""
        if point == "adversary":
            return [self] if self.adversary is not None else []
        return [self] if getattr(type(self), point) is not getattr(Defense, point) else []


class ComposedDefense(Defense):
    """Several defenses as one, named `a+b+...` in a grid.

    Order: `prepare` runs every part's prepare in the order written (`jpeg+bdr` compresses, then
    reduces bit depth), `prepare_test` likewise, then per batch every part's `augment` in the order
    written, then the one adversary. At most one part may be an adversary (two inner maximisations
    have no defined order), at most one may mix labels (mixup and cutmix both expect hard labels),
    and at most one may hold out a validation split, and no part may appear twice or be `none`;
    each of these is a ConfigError.
    """

    paper = ""

    def __init__(self, parts: Sequence[Defense]):
        names = [p.name for p in parts]
        where = "defense " + "+".join(names)
        if len(parts) < 2:
            raise ConfigError(f"{where}: a composition needs at least two defenses")
        if "none" in names:
            raise ConfigError(f"{where}: 'none' cannot be composed; leave it out")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"{where}: {repeated[0]!r} appears twice; each defense may appear once")
        adversaries = [p.name for p in parts if p.adversary is not None]
        if len(adversaries) > 1:
            raise ConfigError(f"{where}: at most one adversary per composition, got {', '.join(adversaries)}")
        mixers = [p.name for p in parts if p.mixes_labels]
        if len(mixers) > 1:
            raise ConfigError(f"{where}: at most one label-mixing defense per composition, got {', '.join(mixers)}")
        holdouts = [p.name for p in parts if p.stages("holdout")]
        if len(holdouts) > 1:
            raise ConfigError(f"{where}: at most one validation split per composition, got {', '.join(holdouts)}")
        self.parts = list(parts)
        self.name = "+".join(names)
        self.config = {p.name: p.config for p in parts}
        self.num_classes = parts[0].num_classes
        self.mixes_labels = bool(mixers)
        self.crop_fill = next((p.crop_fill for p in parts if p.crop_fill), 0)  # the part that changes the units
        self.adversary = next((p.adversary for p in parts if p.adversary is not None), None)

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        for part in self.stages("prepare"):
            images = part.prepare(images, labels)
        return images

    def prepare_test(self, images: torch.Tensor) -> torch.Tensor:
        for part in self.stages("prepare_test"):
            images = part.prepare_test(images)
        return images

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for part in self.stages("augment"):
            x, y = part.augment(x, y)
        return x, y

    def holdout(self, labels: torch.Tensor) -> torch.Tensor | None:
        return next((part.holdout(labels) for part in self.stages("holdout")), None)

    def stages(self, point: str) -> list[Defense]:
        return [stage for part in self.parts for stage in part.stages(point)]

    def __repr__(self) -> str:
        return "ComposedDefense(" + ", ".join(map(repr, self.parts)) + ")"


def create_defense(name: str, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Defense:
    """A defense from its name; `a+b` builds a ComposedDefense of the registered `a` and `b`.

    `config` holds the overrides of a single defense, or for a composed name one table of
    overrides per part (`{"cutout": {"size": 8}}`), so plain names keep their config and cell ids.
    """
    parts = defense_parts(name)
    if len(parts) == 1:
        return DEFENSES.create(name, config, **kwargs)
    config = dict(config or {})
    unknown = sorted(set(config) - set(parts))
    if unknown:
        raise ConfigError(f"defense {name}: config for {unknown[0]!r}, which is not a part; parts: {', '.join(parts)}")
    return ComposedDefense([DEFENSES.create(part, config.get(part), **kwargs) for part in parts])

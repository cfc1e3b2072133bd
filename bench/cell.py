"""What one cell is: `CellSpec`, the training run a grid expands to, with its id and poison key.

It sits below the grids (which build cells), the executors (which schedule them) and the one-cell
layer (which runs them), so each of those imports it from here and none imports a layer above.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.config import added_field, as_dict
from bench.data import DataSpec
from bench.records import classes_text, is_partial, poisoned_label
from bench.registry import ATTACKS
from bench.store import canonical_hash
from bench.train import Recipe


def cell_label(attack: str, defense: str, arch: str, seed: int) -> str:
    """How people name a cell: `em / jpeg / resnet18 / seed 0`."""
    return f"{attack} / {defense} / {arch} / seed {seed}"


@dataclass(frozen=True)
class CellSpec:
    """One training run: data x attack x defense x architecture x recipe x seed.

    Plugin configs are kept as the plain dicts of their checked dataclasses (`as_dict`): the form the
    cell id hashes, the record stores and worker processes receive. The worker builds each plugin
    from that dict again (`ATTACKS.create`), which runs the config's checks a second time, on
    purpose: the grid is checked on load so a bad value fails before any work, and what runs is
    built from exactly the dict that was hashed and recorded. The second check costs microseconds.

    `attack`, `defense` and `arch` are the registered plugins that run. Where the grid lists a variant
    (`[variants.NAME]`, bench/grid.py), `variants` maps that factor to the grid's name for it, which
    labels, logs and reports show (`name`). The names are left out of the id: a cell is the experiment
    its plugins and configs make, so renaming a variant keeps its records, and grids that run one
    experiment under different names share its cells and poisons.
    """

    data: DataSpec
    attack: str
    attack_config: dict
    defense: str
    defense_config: dict
    arch: str
    arch_config: dict
    recipe: Recipe
    recipe_name: str
    seed: int
    # Added after cells had ids: left out of the spec while empty, so those cells keep theirs.
    analysis: tuple[str, ...] = added_field(())  # measurements beyond accuracy, from ANALYSES
    variants: dict = added_field(default_factory=dict)  # factor ("attack", "defense", "arch") -> its variant name
    # Partial poisoning (the grid's poison_ratio and poison_classes): the poison goes on this fraction
    # of the training images of these classes (every class where empty), the rest stays clean.
    poison_ratio: float = added_field(1.0)
    poison_classes: tuple[int, ...] = added_field(())
    robust: dict = added_field(default_factory=dict)  # bench.robust.RobustConfig, where analysis has "robust"
    autoattack: dict = added_field(default_factory=dict)  # bench.robust.AutoAttackConfig, where analysis has "autoattack"

    def to_dict(self) -> dict:
        return as_dict(self)

    @property
    def cell_id(self) -> str:
        """A hash of the spec without the variant names (the record keeps them)."""
        spec = self.to_dict()
        spec.pop("variants", None)
        return canonical_hash(spec)

    def name(self, factor: str) -> str:
        """What the grid calls the cell's `factor` (attack, defense or arch): its variant name, else the plugin's."""
        return self.variants.get(factor, getattr(self, factor))

    @property
    def partial(self) -> bool:
        """Whether part of the training set stays clean (`bench.data.poisoned_subset` picks the rest)."""
        return is_partial(self.poison_ratio, self.poison_classes)

    @property
    def label(self) -> str:
        label = cell_label(self.name("attack"), self.name("defense"), self.name("arch"), self.seed)
        if not self.partial:
            return label
        return f"{label} / poisoned {poisoned_label(self.poison_ratio, classes_text(self.poison_classes))}"

    @property
    def cacheable(self) -> bool:
        """Whether the attack's poison may be stored and reused: `Attack.cacheable`."""
        return ATTACKS.get(self.attack).cacheable

    @property
    def poison_key(self) -> str:
        """One poison serves every defense, architecture, recipe and poison ratio of the same attack and
        seed: its plugin and config, whatever the grid calls it. As in EM's code, the poison is made for
        the whole training set and a partial cell puts it on part of it."""
        return canonical_hash({"data": as_dict(self.data), "attack": self.attack,
                               "attack_config": self.attack_config, "seed": self.seed})

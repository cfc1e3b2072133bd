"""What one cell is: `CellSpec`, the training run a grid expands to, with its id and poison key.

It sits below the grids (which build cells), the executors (which schedule them) and the one-cell
layer (which runs them), so each of those imports it from here and none imports a layer above.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.config import as_dict
from bench.data import DataSpec
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
    analysis: tuple[str, ...] = ()  # measurements beyond accuracy, from ANALYSES

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipe"] = as_dict(self.recipe)
        # Without an analysis the key is left out, so cells (and records) from before it keep their ids.
        if not self.analysis:
            del d["analysis"]
        else:
            d["analysis"] = list(self.analysis)
        return d

    @property
    def cell_id(self) -> str:
        return canonical_hash(self.to_dict())

    @property
    def label(self) -> str:
        return cell_label(self.attack, self.defense, self.arch, self.seed)

    @property
    def cacheable(self) -> bool:
        """Whether the attack's poison may be stored and reused: `Attack.cacheable`."""
        return ATTACKS.get(self.attack).cacheable

    @property
    def poison_key(self) -> str:
        """One poison serves every defense, architecture and recipe of the same attack and seed."""
        return canonical_hash({"data": asdict(self.data), "attack": self.attack,
                               "attack_config": self.attack_config, "seed": self.seed})

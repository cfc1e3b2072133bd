"""The contract every attack and defense declares, once: `Plugin`.

`methods.base.Attack` and `defenses.base.Defense` add their one verb (`generate`; `prepare`,
`augment`, `adversary`) and their own flags; everything the registry, grids, reports and
`bench bench` read from a plugin class is declared here with its default.
"""
from __future__ import annotations

from typing import Any, ClassVar


class Plugin:
    """An attack or defense: a name, a frozen `Config` dataclass, the paper it implements and named presets."""

    name: ClassVar[str]  # set by the registry from the name the class is registered under
    Config: ClassVar[type]  # a frozen dataclass; its defaults are the paper's official settings
    paper: ClassVar[str] = ""  # the paper in words, shown by `bench list`
    cite: ClassVar[str] = ""  # BibTeX key(s) of `paper`, comma-separated, as in \cite{a,b}; see bench.citations
    bibtex: ClassVar[str] = ""  # BibTeX entries for keys bench.citations does not hold (third-party plugins)
    # Named config overrides, chosen in a grid with `preset = NAME`: "cpu" holds small settings for
    # the CPU grids and the tests; "tiny", where "cpu" is too big for a few dozen images, those of a
    # rehearsal (`bench run --rehearse`, bench.rehearse). `bench bench` reads its own presets (see bench.perf).
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config):
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

"""The source of a plugin file whose defense fails on purpose, for tests of how a failure is reported."""
from __future__ import annotations


def broken_defense(name: str, method: str, message: str, doc: str) -> str:
    """A plugin file registering defense `name` whose `method` (a `Defense` signature such as
    `prepare(self, images, labels)`) raises RuntimeError(`message`)."""
    return f'''
from dataclasses import dataclass

from bench.registry import register_defense
from defenses.base import Defense


@dataclass(frozen=True)
class BrokenConfig:
    pass


@register_defense({name!r})
class Broken(Defense):
    """{doc}"""

    Config = BrokenConfig

    def {method}:
        raise RuntimeError({message!r})
'''

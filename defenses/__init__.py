"""Defenses against unlearnable examples; importing this package registers them."""
from defenses import basic  # noqa: F401  (registration)
from defenses.base import Defense

__all__ = ["Defense"]

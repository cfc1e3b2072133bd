"""Defenses against unlearnable examples; importing this package registers them."""
from defenses import adversarial, basic, mixing, squeeze, ueraser  # noqa: F401  (registration)
from defenses.base import ComposedDefense, Defense

__all__ = ["ComposedDefense", "Defense"]

"""Defenses against unlearnable examples; importing this package registers them."""
from defenses import adversarial, basic, dvae, early_stop, mixing, projection, squeeze, ueraser  # noqa: F401  (registration)
from defenses.base import ComposedDefense, Defense

__all__ = ["ComposedDefense", "Defense"]

"""Unlearnable-example attacks, one module each; importing this package registers them."""
from methods import external, lsp, ops, simple  # noqa: F401  (registration)
from methods.base import Attack, Poison

__all__ = ["Attack", "Poison"]

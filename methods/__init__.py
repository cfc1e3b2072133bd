"""Unlearnable-example attacks, one module each; importing this package registers them."""
from methods import ar, cuda, em, external, lsp, miue, ops, rem, simple, tap  # noqa: F401  (registration)
from methods.base import Attack, Poison

__all__ = ["Attack", "Poison"]

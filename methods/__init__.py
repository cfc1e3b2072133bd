"""Unlearnable-example attacks, one module each; importing this package registers them."""
from methods import ar, cuda, em, external, hypo, lsp, miue, ops, rem, sep, simple, tap  # noqa: F401  (registration)
from methods.base import Attack, Poison

__all__ = ["Attack", "Poison"]

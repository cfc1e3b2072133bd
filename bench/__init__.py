"""unlearnable-bench: attacks x defenses x architectures for unlearnable examples."""
__version__ = "0.1.0"

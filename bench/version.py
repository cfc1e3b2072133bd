"""The package's version, on its own so that any layer can name it (the package root is the top one)."""
__version__ = "0.1.0"

"""unlearnable-bench: attacks x defenses x architectures for unlearnable examples.

`bench.evaluate(images, labels, ...)` scores poisoned images from Python (`bench.api`), and
`bench.training_set(data)` gives the clean training split they must follow. Both load on first use:
`import bench` (and `bench --help`) loads no torch.
"""
from bench.version import __version__

__all__ = ["__version__", "evaluate", "training_set", "EvaluationError"]
_API = ("evaluate", "training_set", "EvaluationError")  # bench.api's public functions, exported here


def __getattr__(name: str):
    if name in _API:
        from bench import api  # here, not at the top: torch loads only when the API is used

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")

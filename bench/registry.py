"""One registry type for attacks, defenses and architectures.

Built-in plugins register themselves with a decorator when their package is imported; third-party
plugins come from a Python file (`bench.plugin_files`: a grid's `plugins = [...]`, `--plugins FILE`)
or through the entry-point groups `bench.attacks`, `bench.defenses` and `bench.archs`, so writing a
file or installing another package adds rows to the table with no change here. Each entry keeps
where it came from (`Entry.origin`), which records and clash errors name.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator, Mapping

from bench.config import ConfigError, build_config
from bench.plugin import Plugin


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    summary: str  # first line of the docstring
    paper: str  # citation in words, "" for plain fixtures
    display: str = ""  # the name tables and figures show (`MI-UE`, `ISS-Gray`); "" shows `name`
    # Where it came from, for records and errors: {} for a module of this project (or one imported by
    # hand), {"file": ..., "sha256": ...} for a plugin file, {"package": ..., "entry_point": ...} for an
    # installed package's entry point.
    origin: dict = field(default_factory=dict)


def origin_text(entry: Entry) -> str:
    """Where a plugin came from, in words: `plugin file /x/my_attacks.py`, `package p 0.1 (my:Cls)`, `methods.em.EM`."""
    if "file" in entry.origin:
        return f"plugin file {entry.origin['file']}"
    if "package" in entry.origin:
        return f"package {entry.origin['package']} ({entry.origin['entry_point']})"
    return _describe(entry.obj)


_LOADING: list[dict] = []  # the origin of the plugin file being imported (bench.plugin_files), innermost last


@contextmanager
def registering_from(origin: dict) -> Iterator[list[tuple[Registry, str]]]:
    """Every plugin registered inside the block gets `origin`; yields the (registry, name) pairs it registered,
    so a file that fails half-way can take its entries back (`Registry.unregister`)."""
    added: list[tuple[Registry, str]] = []
    _LOADING.append({**origin, "_added": added})
    try:
        yield added
    finally:
        _LOADING.pop()


class Registry:
    """Name -> plugin. `register` fills it; `create(name, overrides)` builds a configured plugin."""

    def __init__(self, kind: str, group: str, builtin_modules: tuple[str, ...], base: type | None = None):
        self.kind = kind
        self.group = group
        self.builtin_modules = builtin_modules  # imported on first use: their decorators register the built-ins
        self.base = base  # what every class registered here must subclass (the contract it declares)
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, *, display: str | None = None, paper: str | None = None,
                 origin: dict | None = None) -> Callable[[Any], Any]:
        """Register under `name`, the one name grids, records and `--set` use; `display` is what a report
        shows for it (the paper's spelling: `MI-UE`, `ResNet-18`), `name` itself where not given."""
        if display is not None and not (isinstance(display, str) and display.strip()):
            raise ValueError(f"{self.kind} {name!r}: display must be a non-empty string, got {display!r}")

        def decorate(obj: Any) -> Any:
            loading = _LOADING[-1] if _LOADING and origin is None else None
            where = origin if origin is not None else {k: v for k, v in (loading or {}).items() if k != "_added"}
            if name in self._entries and self._entries[name].obj is not obj:
                new = origin_text(Entry(name, obj, "", "", origin=where))
                raise PluginClash(f"{self.kind} {name!r} is registered twice: by {new} and by "
                                  f"{origin_text(self._entries[name])}; rename one of them")
            if self.base is not None and not (inspect.isclass(obj) and issubclass(obj, self.base)):
                raise ValueError(f"{self.kind} {name!r} ({obj}) must be a class that subclasses {self.base.__name__}")
            doc = inspect.getdoc(obj) or ""
            summary = doc.strip().splitlines()[0] if doc.strip() else ""
            if inspect.isclass(obj):
                obj.name = name
            self._entries[name] = Entry(name, obj, summary, paper if paper is not None else getattr(obj, "paper", ""),
                                        display or "", where)
            if loading is not None:
                loading["_added"].append((self, name))
            return obj

        return decorate

    def _load(self) -> None:
        """The built-in plugins, then every entry point of `group`. A third-party plugin that fails to
        load, breaks the contract, or takes a name already registered (a built-in always wins; of two
        third-party plugins, the first found) is skipped with a warning naming its package."""
        if self._loaded:
            return
        self._loaded = True
        for module in self.builtin_modules:
            importlib.import_module(module)
        for ep in entry_points(group=self.group):
            origin = f"{self.kind} plugin {ep.name!r} of package {_package(ep)} ({ep.value})"
            try:
                obj = ep.load()
                if any(entry.obj is obj for entry in self._entries.values()):
                    continue  # it registered itself when its module was imported
                if ep.name in self._entries:
                    raise ValueError(f"the name {ep.name!r} is already {_describe(self._entries[ep.name].obj)}")
                self.register(ep.name, origin={"package": _package(ep), "entry_point": ep.value})(obj)
            except Exception as err:  # a broken third-party plugin must not take the others down
                warnings.warn(f"skipped {origin}: {err}", stacklevel=2)

    def unregister(self, name: str) -> None:
        """Drop `name` (a plugin file that failed to import, or one loaded again after a change)."""
        self._entries.pop(name, None)

    def names(self, pattern: str = "*") -> list[str]:
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entry(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint}; known {self.kind}s: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def display(self, name: str) -> str:
        """What a report shows for `name`: its declared display name, each part's for a composition
        (`jpeg+cutout` -> `JPEG + Cutout`), `name` itself for a plugin that declares none or is not installed."""
        self._load()
        parts = name.split(COMPOSE) if self.kind == "defense" else [name]
        shown = [self._entries[p].display or p if p in self._entries else p for p in parts]
        return " + ".join(shown)

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def config(self, name: str, overrides: Mapping[str, Any] | None = None, owner: str | None = None) -> Any:
        """The checked config dataclass of a class plugin (None for function plugins).

        `preset = NAME` among the overrides starts from the plugin's named preset (its `presets`
        dict, e.g. a small CPU setting); the other overrides apply on top of it. Errors name the
        field after `owner` (default `<kind> <name>`; a grid's variant passes its own key).
        """
        obj = self.get(name)
        config_cls = getattr(obj, "Config", None)
        if not config_cls:
            return None
        owner = owner or f"{self.kind} {name}"
        overrides = dict(overrides or {})
        if "preset" in overrides:
            presets = getattr(obj, "presets", {})
            preset = overrides.pop("preset")
            if preset not in presets:
                raise ConfigError(f"{owner}.preset: unknown preset {preset!r}; "
                                  f"known presets: {', '.join(presets) or '(none)'}")
            overrides = {**presets[preset], **overrides}
        return build_config(config_cls, overrides, owner)

    def create(self, name: str, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """A plugin built from its name and config overrides.

        Class plugins take their `Config` dataclass; function plugins (architectures) take keyword
        arguments, checked against their signature.
        """
        obj = self.get(name)
        if getattr(obj, "Config", None) is not None:
            return obj(self.config(name, overrides), **kwargs)
        params = {**dict(overrides or {}), **kwargs}
        signature = inspect.signature(obj)
        unknown = [k for k in params if k not in signature.parameters]
        if unknown:
            raise ConfigError(
                f"{self.kind} {name}: unknown argument {unknown[0]!r}; valid: {', '.join(signature.parameters)}"
            )
        return obj(**params)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


class PluginClash(ConfigError):
    """Two plugins of one kind under one name; the message names where each came from."""


def _package(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "(unknown)"


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"


ATTACKS = Registry("attack", "bench.attacks", ("methods",), base=Plugin)  # methods.base.Attack
DEFENSES = Registry("defense", "bench.defenses", ("defenses",), base=Plugin)  # defenses.base.Defense
# bench.contrastive: victims trained by self-supervision before their probe (SimCLR).
ARCHS = Registry("arch", "bench.archs", ("bench.archs", "bench.contrastive"))

register_attack = ATTACKS.register
register_defense = DEFENSES.register
register_arch = ARCHS.register
REGISTRIES = {"attacks": ATTACKS, "defenses": DEFENSES, "archs": ARCHS}

COMPOSE = "+"  # `jpeg+cutout` in a grid names the composition of two registered defenses


def defense_parts(name: str) -> list[str]:
    """The registered names a defense name is made of: `jpeg+cutout` -> ['jpeg', 'cutout']."""
    return name.split(COMPOSE)


"""Plugins from a Python file, without packaging: a grid's `plugins = ["my_attacks.py"]` (paths
relative to the grid file) or `--plugins FILE` on the commands.

The file is imported as a module of its own (named after the file and its folder, so two
`my_attacks.py` in different folders do not collide, and no installed module is shadowed), and
whatever it registers with `register_attack`, `register_defense` or `register_arch` joins the
registries like a built-in. The built-ins and the entry points are loaded first, so a name clash
with any of them is an error that names both sources; a file that fails to import is one line
naming the file, the line and the error, and takes back what it registered before it failed.

A cell's id does not depend on where a plugin came from (it hashes names and configs): the record
says where (`provenance.plugins`: the file's path and the SHA-256 of its content, as it says the
git commit of this code), so a changed plugin file is visible in the records it made, and, like a
change to a built-in's code, does not by itself run a finished cell again.

Worker processes (the local pool, Ray, SLURM) load the same files before their first job
(`bench.executors.WorkerSettings.plugin_files`), so the path must be one they can read.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from bench.config import ConfigError
from bench.registry import REGISTRIES, PluginClash, registering_from


@dataclass(frozen=True)
class PluginFile:
    path: str  # absolute
    sha256: str  # of the file's bytes when it was imported
    module: str  # the name it is imported under
    registered: tuple[tuple[str, str], ...]  # (registry kind, name) of what it registered


_LOADED: dict[str, PluginFile] = {}  # absolute path -> the file as imported in this process


def load_plugin_file(path: str | Path, base: str | Path | None = None, where: str = "plugin file") -> PluginFile:
    """Import the plugin file at `path` (relative to `base`, default the working directory) once per
    process and content; a file changed since it was imported is imported again in place of its old
    plugins. ConfigError (one line) for a missing file, one that fails to import or registers nothing,
    and a name another plugin has (`PluginClash`, naming both)."""
    given = Path(path).expanduser()
    resolved = (Path(base) / given if base is not None and not given.is_absolute() else given).resolve()
    if not resolved.is_file():
        relative = f" (relative to {base})" if base is not None and not given.is_absolute() else ""
        raise ConfigError(f"{where} {str(path)!r}{relative}: no such file ({resolved})")
    content = resolved.read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    key = str(resolved)
    known = _LOADED.get(key)
    if known is not None and known.sha256 == sha:
        return known
    for registry in REGISTRIES.values():  # the built-ins and entry points first: a clash with one is the file's
        registry.names()
    if known is not None:
        _forget(known)
    module = _module_name(resolved)
    spec = importlib.util.spec_from_file_location(module, resolved)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded  # before it runs: dataclasses and pickle look their module up there
    with registering_from({"file": key, "sha256": sha}) as added:
        try:
            spec.loader.exec_module(loaded)
        except PluginClash:
            _undo(module, added)
            raise
        except BaseException as err:  # SystemExit, KeyboardInterrupt of a script's main block included
            _undo(module, added)
            if isinstance(err, KeyboardInterrupt):
                raise
            raise ConfigError(f"plugin file {key}: import failed{_line(err, key)}: {type(err).__name__}: "
                              f"{_first_line(err)}") from None
    if not added:
        _undo(module, added)
        raise ConfigError(f"plugin file {key}: registers no attack, defense or architecture; decorate its classes "
                          "with bench.registry.register_attack, register_defense or register_arch")
    found = PluginFile(key, sha, module, tuple((registry.kind, name) for registry, name in added))
    _LOADED[key] = found
    return found


def load_plugin_files(paths: Iterable[str | Path], base: str | Path | None = None,
                      where: str = "plugin file") -> tuple[str, ...]:
    """`load_plugin_file` of each; their absolute paths, in order."""
    return tuple(load_plugin_file(path, base, where).path for path in paths)


def loaded_plugin_files() -> tuple[str, ...]:
    """The absolute paths of every plugin file this process imported: what its workers must import too."""
    return tuple(_LOADED)


def forget_plugin_files() -> None:
    """Drop every plugin file's plugins from the registries (tests; a notebook starting over)."""
    for known in list(_LOADED.values()):
        _forget(known)


def _module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem)
    return f"bench_plugin_file_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _forget(known: PluginFile) -> None:
    kinds = {registry.kind: registry for registry in REGISTRIES.values()}
    for kind, name in known.registered:
        kinds[kind].unregister(name)
    sys.modules.pop(known.module, None)
    del _LOADED[known.path]


def _undo(module: str, added) -> None:
    for registry, name in added:
        registry.unregister(name)
    sys.modules.pop(module, None)


def _line(err: BaseException, path: str) -> str:
    """`, line N` of the deepest frame of the traceback inside the plugin file (or a SyntaxError's line)."""
    if isinstance(err, SyntaxError) and err.filename == path and err.lineno:
        return f", line {err.lineno}"
    lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__) if frame.filename == path]
    return f", line {lines[-1]}" if lines else ""


def _first_line(err: BaseException) -> str:
    if isinstance(err, SyntaxError):
        return err.msg
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"

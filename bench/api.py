"""The Python API: poisoned images in hand -> the cells `bench run` trains -> a DataFrame of their records.

`evaluate` checks the images against the clean training split of the dataset named, writes them to
the results folder as `cache/inputs/<hash>.npz` (the hash of the images: the same images, the same
file), and runs a grid built in memory whose attack is `external` reading that file, under the
defenses, architectures, seeds, recipe and data asked for, through `bench.executors.run_grid`, as
`bench run` does. The cells, their ids and their records are the CLI's: a second call trains
nothing, a killed one resumes where it stopped, and `bench status` and `bench report` count them.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from bench.cell import CellSpec
from bench.config import ConfigError, as_dict, budget_label, build_config, parse_number
from bench.data import DataSpec, ImageSet, load_dataset
from bench.environment import pick_device
from bench.executors import pending_cells, run_grid
from bench.grid import VARIANT_NAME, Grid, parse_grid
from bench.records import CellResult
from bench.registry import REGISTRIES
from bench.store import Store
from methods.base import NORMS, BudgetError, check_claim, largest_perturbation

GRID_NAME = "evaluate"  # the `grid` of every record evaluate writes: what `bench status` lists them under
ATTACK = "external"  # the registered attack that reads the images back
ERRORS = ("raise", "keep")
# The frame's columns, in this order; metrics and analyses a cell records beyond these come after them.
KEY_COLUMNS = ("attack", "defense", "arch", "seed")
METRIC_COLUMNS = ("test_acc_last", "test_acc_best", "best_epoch", "train_acc")
TRAILING_COLUMNS = ("status", "cached", "train_s", "cell_id", "error")


class EvaluationError(RuntimeError):
    """Some cells of an `evaluate` call failed; `frame` holds every cell's row, the failed ones too."""

    def __init__(self, message: str, frame: pd.DataFrame):
        super().__init__(message)
        self.frame = frame


def training_set(data: str | Mapping | DataSpec = "cifar10") -> tuple[np.ndarray, np.ndarray]:
    """The clean training split of `data` as (images uint8 (N, H, W, C), labels int64 (N,)): the
    images and the order that `evaluate`'s poisoned images must follow. The whole split, whatever
    `train_size` says (that picks the subset the cells train on)."""
    train = _full_training_split(_data_spec(data))
    return np.ascontiguousarray(train.images.permute(0, 2, 3, 1).numpy()), train.labels.numpy().copy()


def evaluate(images: Any, labels: Any, *, defenses: Iterable[str] | str = ("none",),
             archs: Iterable[str] | str = ("resnet18",), seeds: Iterable[int] | int = (0,),
             recipe: str | Mapping = "em60", data: str | Mapping | DataSpec = "cifar10", norm: str = "linf",
             eps: float | str = 8 / 255, baseline: bool = False, name: str | None = None,
             config: Mapping[str, Mapping] | None = None, analysis: Iterable[str] = (),
             plugins: Iterable[str] = (), results: str | Path = "results", device: str = "auto",
             progress: bool | None = None, errors: str = "raise") -> pd.DataFrame:
    """Train a victim on `images` for each defense x arch x seed and return one row per cell.

    `images`: the poisoned training split of `data`, all of it, in its order (`training_set(data)`
    gives the clean one): uint8 (N, H, W, C) or (N, C, H, W) in 0..255, or float in [0, 1] (rounded
    to the nearest of 256 levels); a numpy array or a torch tensor. `labels`: its labels, which must
    be the dataset's. `norm` and `eps` are the budget the images claim (checked on every image).
    `baseline=True` adds the clean cells (attack `clean`) for the same defenses, archs and seeds.
    `name` labels the poison in the frame and the reports (default `external`). `defenses`, `archs`,
    `seeds`, `recipe`, `data` (a name, or a dict of `DataSpec` fields: name, train_size, test_size,
    subset_seed, image_size), `config` ({plugin: {field: value}}), `analysis` and `plugins` are a grid
    file's keys of the same names. `results` is the results folder `bench --results` names.

    A row holds the cell's factors, its metrics as the record has them (accuracies as fractions),
    `status`, `cached` (True where the record was there before this call: nothing trained) and the
    cell id. A failed cell raises EvaluationError after the others ran (`errors="keep"`: it is a row).
    """
    if errors not in ERRORS:
        raise ConfigError(f"errors: {errors!r}; allowed: {', '.join(ERRORS)}")
    norm, eps = _budget(norm, eps)
    spec = _data_spec(data)
    torch_device = pick_device(device, option="device")
    raw = _raw_grid(defenses, archs, seeds, recipe, spec, norm, eps, baseline, name, config, analysis, plugins)
    _grid_with(raw, "(checked before the images)")  # a bad name or value fails before any image is read
    store = Store(results)
    path = _save(store, _checked_images(images, labels, spec, norm, eps))
    grid = _grid_with(raw, str(path.resolve()))
    cells = grid.cells()
    pending = {cell.cell_id for cell in pending_cells(cells, store)}
    counts = run_grid(grid, store, torch_device, progress)
    frame = _frame(cells, store, cached={c.cell_id for c in cells} - pending)
    frame.attrs.update({"results": str(store.root), "poison_file": str(path.resolve()), "counts": counts})
    failed = frame[frame.status != "done"]
    if errors == "raise" and len(failed):
        raise EvaluationError(_failure_message(failed, len(frame), store), frame)
    return frame


def _budget(norm: str, eps: float | str) -> tuple[str, float]:
    """`norm` and `eps` checked ('8/255' taken as 8/255): the claim the images are held to."""
    if norm not in NORMS:
        raise ConfigError(f"norm: {norm!r}; allowed: {', '.join(NORMS)}")
    try:
        value = parse_number(eps) if isinstance(eps, str) else float(eps)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ConfigError(f"eps: {eps!r} is not a number; allowed: a budget such as 8/255 or 0.0314") from None
    if not (math.isfinite(value) and value >= 0):  # its upper bound depends on the images: checked with them
        raise ConfigError(f"eps: {eps!r}; allowed: a finite number >= 0")
    return norm, value


def _data_spec(data: str | Mapping | DataSpec) -> DataSpec:
    if isinstance(data, DataSpec):
        return data
    if isinstance(data, str):
        return DataSpec(data)
    if isinstance(data, Mapping):
        return build_config(DataSpec, data, "data")
    raise ConfigError(f"data: {data!r}; allowed: a dataset name (cifar10, cifar100, svhn, a path to an .npz, "
                      "folder:/path) or a dict of name, train_size, test_size, subset_seed, image_size")


def _full_training_split(spec: DataSpec) -> ImageSet:
    return load_dataset(dataclasses.replace(spec, train_size=None, test_size=None)).train


def _names(value: Iterable | str | int, argument: str) -> list:
    """A list of names (or seeds) as a grid holds them; one given alone is a list of one."""
    if isinstance(value, (str, int)):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return list(value)
    raise ConfigError(f"{argument}: {value!r}; allowed: a list (or one) of its names")


def _raw_grid(defenses, archs, seeds, recipe, spec: DataSpec, norm: str, eps: float, baseline: bool,
              name: str | None, config, analysis, plugins) -> dict:
    """The grid file's dict of an evaluate call, but the poison's path (`_grid_with` sets it)."""
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(f"config: {config!r}; allowed: a dict of plugin name -> {{field: value}}")
    config = dict(config or {})
    if ATTACK in config:
        raise ConfigError(f"config: {ATTACK!r} is the attack that reads your images; give their budget as "
                          "norm= and eps=, not in config")
    if name is not None and (not isinstance(name, str) or not VARIANT_NAME.fullmatch(name)):
        raise ConfigError(f"name: {name!r}; allowed: letters, digits, _ and - (what the reports call the poison)")
    taken = next((r.kind for r in REGISTRIES.values() if name in r.names()), None)
    if taken:
        raise ConfigError(f"name: {name!r} is a registered {taken}; allowed: a name of the poison's own")
    poison = name or ATTACK
    raw = {"attacks": (["clean"] if baseline else []) + [poison], "defenses": _names(defenses, "defenses"),
           "archs": _names(archs, "archs"), "seeds": _names(seeds, "seeds"), "recipe": recipe,
           "data": as_dict(spec), "config": config, "analysis": _names(analysis, "analysis"),
           "plugins": _names(plugins, "plugins")}
    raw["config"] = {**config, ATTACK: {"norm": norm, "eps": eps}}  # a variant takes its plugin's config
    if name is not None:
        raw["variants"] = {name: {"plugin": ATTACK}}
    return raw


def _grid_with(raw: dict, path: str) -> Grid:
    """The checked grid of `raw` whose poison is the file at `path`."""
    config = {**raw["config"], ATTACK: {**raw["config"][ATTACK], "path": path}}
    return parse_grid({**raw, "config": config}, GRID_NAME, Path.cwd())


def _to_numpy(value: Any, argument: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{argument}: not an array ({err}); allowed: a numpy array or a torch tensor") from None


def _checked_images(images: Any, labels: Any, spec: DataSpec, norm: str, eps: float) -> np.ndarray:
    """`images` as uint8 (N, H, W, C), once they are the training split of `spec` in its order, with
    its labels, within `norm` `eps` of its clean images; a ConfigError naming the argument if not."""
    clean = _full_training_split(spec)
    x = _uint8_nhwc(_to_numpy(images, "images"), tuple(clean.images.shape[1:]), spec.name)
    if len(x) != len(clean):
        raise ConfigError(f"images: {len(x)} images; the training split of {spec.name} has {len(clean)}: pass all "
                          "of it, poisoned, in its order (data's train_size picks the subset the cells train on)")
    _check_labels(_to_numpy(labels, "labels"), clean.labels.numpy(), spec.name)
    poisoned = torch.from_numpy(x).permute(0, 3, 1, 2)
    try:
        check_claim(norm, eps, tuple(poisoned.shape[1:]))
    except BudgetError as err:
        raise ConfigError(f"eps: {err}") from None
    worst = largest_perturbation(clean.images, poisoned, norm)
    if worst > eps + 1e-6:  # the runner's tolerance: float32 summation only
        raise ConfigError(f"eps: the images' largest {norm} perturbation is {worst:.6g}, above the claimed "
                          f"{budget_label(norm, eps)} ({eps:.6g}); pass the norm and eps they were made for")
    return x


def _uint8_nhwc(x: np.ndarray, shape: tuple[int, int, int], dataset: str) -> np.ndarray:
    """uint8 (N, H, W, C) from uint8 or float in [0, 1], NHWC or NCHW; `shape` is the data's (C, H, W)."""
    channels, height, width = shape
    allowed = f"(N, {height}, {width}, {channels}) or (N, {channels}, {height}, {width})"
    if x.ndim != 4:
        raise ConfigError(f"images: shape {x.shape}; allowed for {dataset}: {allowed}")
    if x.shape[1:] == (height, width, channels):
        nhwc = x
    elif x.shape[1:] == (channels, height, width):
        nhwc = x.transpose(0, 2, 3, 1)
    else:
        raise ConfigError(f"images: shape {x.shape}; allowed for {dataset}: {allowed}")
    if nhwc.dtype == np.uint8:
        return np.ascontiguousarray(nhwc)
    if not np.issubdtype(nhwc.dtype, np.floating):
        raise ConfigError(f"images: dtype {nhwc.dtype}; allowed: uint8 (0 to 255) or float (0 to 1)")
    low, high = float(nhwc.min()), float(nhwc.max())
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= 1):
        hint = " (0 to 255? pass uint8, or divide by 255)" if high > 1 else ""
        raise ConfigError(f"images: float values from {low:g} to {high:g}; allowed: 0 to 1{hint}")
    return np.ascontiguousarray(np.rint(nhwc * 255).astype(np.uint8))


def _check_labels(y: np.ndarray, clean: np.ndarray, dataset: str) -> None:
    if y.shape != clean.shape:
        raise ConfigError(f"labels: shape {y.shape}; allowed: ({len(clean)},), one class index per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"labels: dtype {y.dtype}; allowed: integers (class indices)")
    wrong = np.flatnonzero(y != clean)
    if wrong.size:
        first = wrong[0]
        raise ConfigError(f"labels: differ from {dataset}'s training labels at {wrong.size} of {len(clean)} positions "
                          f"(first at {first}: {y[first]}, the dataset's {clean[first]}); images and labels must be "
                          f"its training split in its order, as bench.training_set({dataset!r}) gives it")


def _save(store: Store, x: np.ndarray) -> Path:
    try:
        return store.save_input(x)
    except OSError as err:
        raise ConfigError(f"results: {store.root} cannot be written ({err.strerror or err})") from None


def _frame(cells: list[CellSpec], store: Store, cached: set[str]) -> pd.DataFrame:
    rows = [_row(cell, store.read_record(cell.cell_id), cell.cell_id in cached) for cell in cells]
    extra = sorted({k for row in rows for k in row} - set(KEY_COLUMNS + METRIC_COLUMNS + TRAILING_COLUMNS))
    return pd.DataFrame(rows, columns=[*KEY_COLUMNS, *METRIC_COLUMNS, *extra, *TRAILING_COLUMNS])


def _row(cell: CellSpec, record: CellResult | None, cached: bool) -> dict:
    """A cell's row: its names in this call, and its record's metrics and analysis (None where it has
    no record: another process was running it)."""
    row = {**{factor: cell.name(factor) for factor in KEY_COLUMNS[:-1]}, "seed": cell.seed,
           "status": record.status if record else "pending", "cached": cached, "cell_id": cell.cell_id,
           "error": None}
    if record is None:
        return row
    if record.status == "failed":
        error = record.error or {}
        return {**row, "error": f"{error.get('type')}: {error.get('message')}"}
    numbers = {**record.metrics, **(record.analysis or {})}
    row.update({k: v for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    row["train_s"] = (record.timings or {}).get("train_s")
    return row


def _failure_message(failed: pd.DataFrame, total: int, store: Store) -> str:
    first = failed.iloc[0]
    where = f"{first.attack} / {first.defense} / {first.arch} / seed {first.seed}"
    return (f"{len(failed)} of {total} cells did not finish; first: {where}: {first.error or first.status}. "
            f"Their records are in {store.records_dir}; errors='keep' returns the frame with them")

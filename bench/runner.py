"""One cell, start to record: its poison, its defended sets, training, retries and the record.

The semantics live here, once, and every executor (`bench.executors`, the layer above, which also
holds `run_grid`) gets them by calling
`CellWorker.run`: a cell whose record says `done` is never run again; a failing cell is tried again
up to `retries` times and then recorded as failed with its error and traceback, and the grid goes
on; CUDA running out of memory halves the batch (and the learning rate with it) instead of failing.
Poisons are generated once per (data, attack, config, seed), cached on disk under that key, and
reused by every defense, architecture, recipe and poison ratio. A set-level defense (JPEG, grayscale,
...) runs once per training set the same way: its output is cached under the poison key and the
SHA-256 of the training images (with the images a partial cell poisons) and the configs of the
defense stages that act on the set. A cell's data and input files are fingerprinted before use and
its record names them; input files that changed while it ran fail the cell instead.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import shutil
import time
import traceback
from dataclasses import replace

import numpy as np
import torch

from bench.context import RunContext
from bench.data import DataSpec, Dataset, load_dataset, poisoned_subset, require_poisons_one
from bench.environment import provenance
from bench.cell import CellSpec
from bench.config import ConfigError, as_dict, require
from bench.records import CellResult
from bench.registry import ARCHS, ATTACKS, DEFENSES, defense_parts
from bench.robust import (AutoAttackConfig, RobustConfig, autoattack_accuracy, require_autoattack,
                          require_autoattack_classes, robust_accuracy)
from defenses.base import create_defense
from bench.store import Store, canonical_hash
from bench.train import Recipe, TrainingDiverged, precision, train_model
from methods.base import BudgetError, Poison, check_budget

log = logging.getLogger("bench")


class PoisonSource:
    """Poisons for cells: from memory (the last one), the disk cache, or the attack itself."""

    def __init__(self, store: Store, device: torch.device):
        self.store = store
        self.device = device
        self._last: tuple[str, Poison, dict, str | None] | None = None
        self._failed: dict[str, BaseException] = {}

    def get(self, cell: CellSpec, data: Dataset) -> tuple[Poison, dict]:
        key = cell.poison_key
        if key in self._failed:
            raise self._failed[key]
        inputs = input_fingerprint(cell)  # the memory's poison only while its input files are unchanged
        if self._last and self._last[0] == key and self._last[3] == inputs:
            return self._last[1], {**self._last[2], "cached": True}
        cached = self.store.load_poison(key) if cell.cacheable else None
        if cached is not None and not made_from(cached[1], data):
            log.warning("cached poison %s was made from other data (fingerprint %s, this data's is %s); "
                        "generating it again", key, cached[1]["data_fingerprint"], data.fingerprint)
            cached = None
        if cached is not None:
            images, meta = cached
            # Where the data lies: on the device, or on the host for a split too big for it (bench.data).
            poison = Poison(torch.from_numpy(images).to(data.train.device), meta["norm"], meta["budget"])
            meta = {**{k: v for k, v in meta.items() if k != "data"}, "cached": True}  # the record has its data
        else:
            try:
                poison, meta = self._generate(cell, data)
            except Exception as err:
                self._failed[key] = err
                raise
        # The budget is checked on every use, whoever made the poison and wherever it was stored.
        meta["measured"] = check_budget(data.train.images, poison)
        self._last = (key, poison, meta, inputs)
        return poison, meta

    def forget_failure(self, key: str) -> None:
        """Let the next `get` try this poison again (a retry), instead of repeating the last error."""
        self._failed.pop(key, None)

    def _generate(self, cell: CellSpec, data: Dataset) -> tuple[Poison, dict]:
        attack = ATTACKS.create(cell.attack, cell.attack_config)
        log.info("generating poison %s: %s (seed %d)", cell.poison_key, cell.name("attack"), cell.seed)
        start = time.perf_counter()
        work_dir = self.store.root / "cache" / "work" / cell.poison_key
        ctx = RunContext(device=self.device, seed=cell.seed, cache_dir=self.store.root / "cache", work_dir=work_dir,
                         full_train=lambda: load_dataset(replace(cell.data, train_size=None), self.device).train,
                         stamp=work_stamp(cell, data))
        poison = attack(data.train, ctx)
        meta = {"key": cell.poison_key, "attack": cell.attack, "attack_config": cell.attack_config, "seed": cell.seed,
                "norm": poison.norm, "budget": poison.budget, "generate_seconds": time.perf_counter() - start,
                "precision": attack.precision(self.device), "cached": False, "data_fingerprint": data.fingerprint,
                "effort": attack.effort(len(data.train.images))}
        origin = ATTACKS.entry(cell.attack).origin
        if origin:  # a plugin file's path and SHA-256 (or a package's): which version made this poison
            meta["origin"] = origin
        if cell.cacheable:
            # The cache entry names its data spec too, so `bench poison export` can find the clean images.
            self.store.save_poison(cell.poison_key, poison.images.cpu().numpy(), {**meta, "data": as_dict(cell.data)})
        shutil.rmtree(work_dir, ignore_errors=True)  # resumable state is no longer needed
        return poison, meta


class PreparedSets:
    """Training and test sets after a defense's set-level stages, computed once per poison.

    Keyed by the poison key and the SHA-256 of the training images it is made from (a poison
    generated again under the same key gets its own set), for a partial cell the hash of the
    images it poisons, and the (name, config) of every stage that acts on the set, in order, so `jpeg`, `jpeg+cutout` and
    `jpeg+at` share one compressed set; where the defense holds out a validation split (`kept`
    marks the rows left), the held-out rows leave the set before any stage sees it, and the key names the holdout stage
    too (keys without one are unchanged). Training sets are kept in
    memory for the current poison and on disk beside the poisons (same hash-checked cache); test
    sets, which do not depend on the poison, in memory.
    """

    def __init__(self, store: Store):
        self.store = store
        self._train: dict[str, torch.Tensor] = {}
        self._test: dict[str, torch.Tensor] = {}
        self._poison_key: str | None = None
        self._content: tuple[torch.Tensor, str] | None = None  # the last training set hashed, and its hash

    def content(self, images: torch.Tensor) -> str:
        """`tensor_fingerprint` of `images`, hashed once for cells that share the same tensor."""
        if self._content is None or self._content[0] is not images:
            self._content = (images, tensor_fingerprint(images))
        return self._content[1]

    def get(self, cell: CellSpec, defense, poison: Poison, data: Dataset,
            poisoned: dict | None = None, kept: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`poison` is the training set the cell trains on; `poisoned` what `training_set` says of it,
        where it is partial; `kept` the mask of the rows left to train on where a defense holds some out."""
        if cell.poison_key != self._poison_key:  # cells are grouped by poison: drop the last poison's sets
            self._train.clear()
            self._content = None  # nor keep the last poison alive for its hash
            self._poison_key = cell.poison_key
        images, labels = poison.images, data.train.labels
        if kept is not None:
            images, labels = images[kept], labels[kept]
        train_stages = defense.stages("prepare")
        # A partial cell's set is another set: its key adds the poisoned images (a full one's is unchanged).
        selection = {"poisoned": poisoned["indices_sha256"]} if poisoned else {}
        holdout = {"holdout": _signature(defense.stages("holdout"))} if kept is not None else {}
        # The poison's content too: a poison generated again under the same key never gets the old defended set.
        content = {"content": self.content(poison.images)} if train_stages else {}
        key = "prepared-" + canonical_hash({"poison": cell.poison_key, "stages": _signature(train_stages), **selection,
                                            **holdout, **content})
        if not train_stages:
            train_images = images
        elif key in self._train:
            train_images = self._train[key]
        else:
            cached = self.store.load_poison(key) if cell.cacheable else None
            if cached is not None and made_from(cached[1], data):
                train_images = torch.from_numpy(cached[0]).to(poison.images.device)
            else:
                train_images = defense.prepare(images, labels)
                if cell.cacheable:
                    self.store.save_poison(key, train_images.cpu().numpy(), {
                        "kind": "prepared", "poison_key": cell.poison_key, "stages": _signature(train_stages),
                        **selection, **holdout, "poison_fingerprint": content["content"],
                        "data_fingerprint": data.fingerprint})
            self._train[key] = train_images
        test_stages = defense.stages("prepare_test")
        test_key = canonical_hash(_signature(test_stages))
        if not test_stages:
            test_images = data.test.images
        elif test_key not in self._test:
            test_images = self._test[test_key] = defense.prepare_test(data.test.images)
        else:
            test_images = self._test[test_key]
        return train_images, test_images


def work_stamp(cell: CellSpec, data: Dataset) -> str:
    """What a generation checkpoint is made from: the data's content, the attack, its config and seed.
    A checkpoint carrying another stamp (the dataset replaced at the same path) is not resumed."""
    return canonical_hash({"data_fingerprint": data.fingerprint, "attack": cell.attack,
                           "attack_config": cell.attack_config, "seed": cell.seed})


def tensor_fingerprint(images: torch.Tensor) -> str:
    """SHA-256 (16 hex digits) of a tensor's dtype, shape and bytes: what a set holds, not its name."""
    array = np.ascontiguousarray(images.cpu().numpy())
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def made_from(meta: dict, data: Dataset) -> bool:
    """Whether a cached poison (or prepared set) was made from `data`; one cached before fingerprints existed is trusted."""
    return meta.get("data_fingerprint") in (None, data.fingerprint)


def _signature(stages) -> list:
    return [[stage.name, as_dict(stage.config)] for stage in stages]


def training_set(cell: CellSpec, data: Dataset, poison: Poison) -> tuple[Poison, dict | None]:
    """The training set `cell` trains on, and what of it is poisoned (None where all of it is).

    A partial cell (`poison_ratio` < 1 or `poison_classes`) takes its attack's poison of the whole set
    and keeps it on `bench.data.poisoned_subset`'s images only (drawn with the cell's seed), the clean
    image everywhere else, as EM's code adds its noise to a random subset. The record keeps the
    count and the SHA-256 of the poisoned images' positions in the full split, which identify them.
    """
    if not cell.partial:
        return poison, None
    clean = data.train
    rows = poisoned_subset(clean.labels.cpu().numpy(), cell.poison_ratio, cell.poison_classes, cell.seed)
    mask = torch.zeros(len(clean), dtype=torch.bool, device=clean.device)
    mask[torch.from_numpy(rows).to(clean.device)] = True
    images = torch.where(mask[:, None, None, None], poison.images, clean.images)
    positions = np.ascontiguousarray(clean.index.cpu().numpy()[rows].astype(np.int64))
    poisoned = {"ratio": cell.poison_ratio, "classes": list(cell.poison_classes), "count": int(len(rows)),
                "of": len(clean), "seed": cell.seed, "indices_sha256": hashlib.sha256(positions.tobytes()).hexdigest()}
    return Poison(images, poison.norm, poison.budget), poisoned


def kept_rows(held_out: torch.Tensor, n: int) -> torch.Tensor:
    """A mask of the `n` rows of a split that are not in `held_out`."""
    kept = torch.ones(n, dtype=torch.bool, device=held_out.device)
    kept[held_out] = False
    return kept


def early_stop_metrics(history: list[dict]) -> dict:
    """The epoch of best validation accuracy (the first on ties) and the test accuracy there; the
    test set never chooses the epoch."""
    stop = max(history, key=lambda epoch: epoch["val_acc"])
    return {"test_acc_early_stop": stop["test_acc"], "early_stop_epoch": stop["epoch"], "val_acc_best": stop["val_acc"]}


def run_cell(cell: CellSpec, data: Dataset, poison: Poison, poison_meta: dict, prepared: PreparedSets,
             device: torch.device, on_epoch=None, compile: bool = False) -> dict:
    """Train and evaluate one cell on its poison; returns the metrics part of its record."""
    defense = create_defense(cell.defense, cell.defense_config, num_classes=data.train.num_classes)
    start = time.perf_counter()
    poison, poisoned = training_set(cell, data, poison)
    held_out = defense.holdout(data.train.labels)
    train, val, kept = data.train, None, None
    if held_out is not None:  # the defender's clean validation images, never trained on in either form
        kept = kept_rows(held_out, len(train))
        train, val = data.train.take(kept), data.train.take(held_out)
    train_images, test_images = prepared.get(cell, defense, poison, data, poisoned, kept)
    if val is not None and defense.stages("prepare_test"):
        val = val.with_images(defense.prepare_test(val.images))  # validated as the test set is tested
    defense_seconds = time.perf_counter() - start
    torch.manual_seed(cell.seed)
    model = ARCHS.create(cell.arch, cell.arch_config, num_classes=data.train.num_classes)
    trained_on = train.with_images(train_images)
    pretraining = None
    if hasattr(model, "pretrain"):  # a self-supervised victim (bench.contrastive): its encoder first, then the recipe probes it
        pretraining = model.pretrain(train_images, seed=cell.seed, device=device, precision=precision(cell.recipe, device))
        clean = train
        if defense.stages("prepare_test"):  # the clean probe set in the space the test images are in
            clean = train.with_images(defense.prepare_test(train.images))
        trained_on = model.probe_set(clean=clean, poisoned=trained_on)
    result = train_model(
        model, trained_on, data.test.with_images(test_images), cell.recipe,
        seed=cell.seed, augment=defense.augment, adversary=defense.adversary, on_epoch=on_epoch, compile=compile,
        device=device, val=val, crop_fill=defense.crop_fill,
    )
    outcome = {
        "metrics": {"test_acc_last": result.test_acc_last, "test_acc_best": result.test_acc_best,
                    "best_epoch": result.best_epoch, "train_acc": result.train_acc,
                    **(early_stop_metrics(result.history) if val is not None else {})},
        "history": result.history,
        "precision": result.precision,
        "poison": poison_meta,
        # generate_s is this cell's share (0 when the poison came from a cache); poison_generate_s is
        # what the poison cost wherever it was made, for cost estimates.
        "timings": {"generate_s": 0.0 if poison_meta.get("cached") else poison_meta["generate_seconds"],
                    "poison_generate_s": poison_meta.get("generate_seconds"),
                    "defense_prepare_s": defense_seconds, "train_s": result.seconds,
                    "compile_s": result.compile_seconds,
                    "images_per_second": result.images_per_second},
    }
    if pretraining is not None:
        outcome["pretraining"] = pretraining
        outcome["timings"]["pretrain_s"] = pretraining["seconds"]
    if poisoned:
        outcome["poisoned"] = poisoned
    if "mi" in cell.analysis:
        from bench.mi import analyze  # scipy's KD-tree and PCA only load when a grid asks for them

        # The images the victim trained on: a partial cell's clean images count as their own poisoned version.
        start = time.perf_counter()
        outcome["analysis"] = analyze(model, data.train.images, poison.images, data.train.labels, device=device)
        outcome["timings"]["analysis_s"] = time.perf_counter() - start
    if "robust" in cell.analysis:
        # On the test images clean accuracy was measured on: after the defense's prepare_test.
        start = time.perf_counter()
        robust = robust_accuracy(model, data.test.with_images(test_images), RobustConfig(**cell.robust), seed=cell.seed,
                                 batch_size=cell.recipe.eval_batch_size, channels_last=cell.recipe.channels_last,
                                 device=device)
        outcome["analysis"] = {**outcome.get("analysis", {}), **robust}
        outcome["timings"]["robust_s"] = time.perf_counter() - start
    if "autoattack" in cell.analysis:
        # The same test images as "robust"; at the same test_size the same subset of them too.
        start = time.perf_counter()
        attacked = autoattack_accuracy(model, data.test.with_images(test_images), AutoAttackConfig(**cell.autoattack),
                                       seed=cell.seed, batch_size=cell.recipe.eval_batch_size, device=device)
        outcome["analysis"] = {**outcome.get("analysis", {}), **attacked}
        outcome["timings"]["autoattack_s"] = time.perf_counter() - start
    return outcome


def preflight(cells: list[CellSpec]) -> dict[DataSpec, str]:
    """Each dataset of `cells` loaded and checked once (`bench.data.check_arrays`), and each of their
    architectures run once on two of its images, each partial poisoning's classes checked against
    its labels, and each attack's input files against the data (`Attack.check_inputs`), before any
    cell starts: bad data, an architecture that cannot take the images, a class the data lacks, a
    poison file made for other data, or AutoAttack asked for but not installed (or on fewer than 10
    classes) stops the run with one error instead of a failed record per cell.
    Returns each dataset's fingerprint, against which the store's records are judged done or not."""
    if any("autoattack" in cell.analysis for cell in cells):
        require_autoattack()  # an optional dependency: say how to install it before loading anything
    fingerprints = {}
    for spec in dict.fromkeys(cell.data for cell in cells):
        data = load_dataset(spec)
        fingerprints[spec] = data.fingerprint
        if any("autoattack" in c.analysis for c in cells if c.data == spec):
            require_autoattack_classes(data.train.num_classes, spec.name)
        images = data.train.images[:2].float() / 255
        archs = {(c.arch, canonical_hash(c.arch_config)): c for c in cells if c.data == spec}
        labels = data.train.labels.numpy()
        for classes in {c.poison_classes for c in cells if c.data == spec and c.poison_classes}:
            poisoned_subset(labels, 1.0, classes, 0)  # a ConfigError names the class and the allowed range
        for ratio, classes in {(c.poison_ratio, c.poison_classes) for c in cells if c.data == spec and c.partial}:
            eligible = int(np.isin(labels, classes).sum()) if classes else len(labels)
            require_poisons_one(ratio, eligible, f"dataset {spec.name}")
        _check_analysis_sizes([c for c in cells if c.data == spec], len(data.test), spec.name)
        for cell in archs.values():
            model = ARCHS.create(cell.arch, cell.arch_config, num_classes=data.train.num_classes).eval()
            try:
                with torch.no_grad():
                    model(images)
            except (RuntimeError, AssertionError) as err:  # torchvision's ViT asserts its input size
                size = "x".join(map(str, images.shape[1:]))
                raise ConfigError(f"arch {cell.arch}: cannot take the {size} images of {spec.name} "
                                  f"({str(err).splitlines()[0][:200]})") from None
        attacks = {(c.attack, canonical_hash(c.attack_config)): c for c in cells if c.data == spec}
        for cell in attacks.values():  # an attack's files against the data (external's bundle manifest)
            ATTACKS.create(cell.attack, cell.attack_config).check_inputs(data.train)
    return fingerprints


def _check_analysis_sizes(cells: list[CellSpec], test_images: int, data: str) -> None:
    """Each analysis's `test_size` against the test split, before training rather than after it."""
    for cell in cells:
        for table, config in (("robust", cell.robust), ("autoattack", cell.autoattack)):
            size = (config or {}).get("test_size")
            if table in cell.analysis and size is not None and size > test_images:
                raise ConfigError(f"{table}.test_size: {size} is more than the {test_images} test images of {data}; "
                                  f"allowed: 1 to {test_images}, or unset for all of them")


def input_fingerprint(cell: CellSpec) -> str | None:
    """`Attack.input_fingerprint` of `cell`'s attack; None where it reads no files, or where they cannot
    be read (the cell's attempt then records why)."""
    try:
        return ATTACKS.create(cell.attack, cell.attack_config).input_fingerprint()
    except Exception:
        return None


def plugin_origins(cell: CellSpec) -> dict:
    """Where each plugin of `cell` that is not this project's came from (`Entry.origin`: a plugin file's
    path and SHA-256, a package's entry point), by `<kind> <name>`; {} where all are built in. The
    architectures a config names (a surrogate, an encoder) count: they run too."""
    named = [(ATTACKS, cell.attack), (ARCHS, cell.arch)] + [(DEFENSES, part) for part in defense_parts(cell.defense)]
    named += [(ARCHS, value) for value in _strings([cell.attack_config, cell.defense_config, cell.arch_config])
              if value in ARCHS]
    return {f"{registry.kind} {name}": registry.entry(name).origin for registry, name in named
            if name in registry and registry.entry(name).origin}


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for item in value for s in _strings(item)] if isinstance(value, (list, tuple)) else []


def changed_inputs(cell: CellSpec, before: str | None) -> str | None:
    """One line where `cell`'s attack's input files hold other content now than `before` (replaced
    while the cell ran); None where they are unchanged."""
    now = input_fingerprint(cell)
    if now == before:
        return None
    path = cell.attack_config.get("path", "its input files")
    return (f"attack {cell.attack}: {path} changed during the run (fingerprint {before}, now {now}); "
            "the cell is not recorded as done: run again")


# Failures that a second try with the same seed would only repeat: recorded at once, not retried.
DETERMINISTIC_FAILURES = (ConfigError, BudgetError, TrainingDiverged)
MIN_OOM_BATCH = 16  # below this, running out of memory is the model's or the device's problem, not the batch's


class CellFailed(RuntimeError):
    """A cell could not finish; the message says why in one line."""


def error_info(err: BaseException) -> dict:
    return {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}


def smaller_batch(recipe: Recipe) -> Recipe:
    """Half the batch with half the learning rate (the linear scaling rule, Goyal et al. 2017)."""
    return replace(recipe, batch_size=recipe.batch_size // 2, lr=recipe.lr / 2,
                   eval_batch_size=max(recipe.eval_batch_size // 2, 1))


def free_cuda_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class CellWorker:
    """Runs cells in this process and writes their records; every executor's workers are one of these.

    The data set, the last poison and the prepared training sets stay loaded between cells, so cells
    that share a poison (the runner groups them) pay for it once.
    """

    def __init__(self, store: Store, device: torch.device, retries: int = 1, compile: bool = False):
        require(retries >= 0, "retries", f"must be >= 0, got {retries}")
        self.store = store
        self.device = device
        self.retries = retries
        self.compile = compile
        self.poisons = PoisonSource(store, device)
        self.prepared = PreparedSets(store)
        self.env = provenance(device)
        self._data: tuple[DataSpec, Dataset] | None = None

    def data(self, spec: DataSpec) -> Dataset:
        if self._data is None or self._data[0] != spec:
            self._data = None  # drop the old set before loading the next one
            self._data = (spec, load_dataset(spec, self.device))
        return self._data[1]

    def fingerprint(self, spec: DataSpec) -> str | None:
        """The fingerprint of `spec`'s data; None where it cannot be loaded (the cell's attempt records why)."""
        try:
            return self.data(spec).fingerprint
        except Exception:
            return None

    def inputs(self, cell: CellSpec) -> str | None:
        """The fingerprint of the files `cell`'s attack reads besides the data (`Attack.input_fingerprint`)."""
        return input_fingerprint(cell)

    def make_poison(self, cell: CellSpec) -> dict:
        """Generate (or find) the poison of `cell` and leave it in the store's cache; for the poison phase."""
        meta, errors = self._attempts(lambda: self.poisons.get(cell, self.data(cell.data))[1], cell,
                                      f"poison {cell.poison_key} ({cell.name('attack')})")
        if meta is None:
            return {"status": "failed", "attempts": len(errors), "error": errors[-1]}
        return {"status": "done", "attempts": len(errors) + 1, "cached": bool(meta.get("cached"))}

    def run(self, cell: CellSpec, grid_name: str, on_epoch=None) -> CellResult | None:
        """Run `cell` unless its record says done; write and return its record. None where another
        process is running the cell (it holds the cell's claim, `Store.claim`): this one leaves it there.

        `run_grid` only hands over cells it found pending, but the store is asked again here, once
        the claim is held: another run on the same results folder, or an executor retrying a task
        whose worker died after writing, may have finished the cell since.
        """
        existing = self.store.read_record(cell.cell_id)
        if existing is not None and existing.done_on(self.fingerprint(cell.data), self.inputs(cell)):
            return replace(existing, skipped=True)
        claim = self.store.claim(cell.cell_id)
        if claim is None:
            log.info("cell %s (%s): %s is running it; leaving it there", cell.cell_id, cell.label,
                     self.store.claim_holder(cell.cell_id))
            return None
        with claim:
            existing = self.store.read_record(cell.cell_id)
            if existing is not None and existing.done_on(self.fingerprint(cell.data), self.inputs(cell)):
                return replace(existing, skipped=True)
            return self._run_claimed(cell, grid_name, on_epoch)

    def _run_claimed(self, cell: CellSpec, grid_name: str, on_epoch) -> CellResult:
        start = time.perf_counter()
        # Before use: the record names what the cell was made on, and is checked against it at the end.
        fingerprint, inputs = self.fingerprint(cell.data), self.inputs(cell)
        outcome, errors = self._attempts(lambda: self._train(cell, on_epoch), cell, f"cell {cell.cell_id} ({cell.label})")
        changed = changed_inputs(cell, inputs) if outcome is not None else None
        if changed is not None:  # a mix of two files' results is never recorded as done
            outcome, errors = None, errors + [{"type": "InputChanged", "message": changed, "traceback": ""}]
        origins = plugin_origins(cell)  # only where a plugin is not built in, so other records keep their form
        env = {**self.env, "plugins": origins} if origins else self.env
        if outcome is None:
            record = CellResult.failed(cell, grid_name, errors[-1], provenance=env, attempts=len(errors),
                                       earlier_errors=errors[:-1], wall_seconds=time.perf_counter() - start,
                                       data_fingerprint=fingerprint, input_fingerprint=inputs)
            log.error("cell %s (%s) failed after %d attempt(s): %s: %s", cell.cell_id, cell.label, len(errors),
                      errors[-1]["type"], errors[-1]["message"])
        else:
            record = CellResult.finished(cell, grid_name, outcome, provenance=env, attempts=len(errors) + 1,
                                         earlier_errors=errors, wall_seconds=time.perf_counter() - start,
                                         data_fingerprint=fingerprint, input_fingerprint=inputs)
            log.info("cell %s (%s): test acc %.2f%% (best %.2f%%) in %.0f s", cell.cell_id, cell.label,
                     100 * record.metrics["test_acc_last"], 100 * record.metrics["test_acc_best"], record.wall_seconds)
        self.store.write_record(record)
        return record

    def _attempts(self, work, cell: CellSpec, what: str) -> tuple[object | None, list[dict]]:
        """`work()` until it succeeds or the retries run out: (its result or None, the failed attempts' errors)."""
        errors: list[dict] = []
        while True:
            try:
                return work(), errors
            except Exception as err:
                errors.append(error_info(err))
                if isinstance(err, DETERMINISTIC_FAILURES) or len(errors) > self.retries:
                    return None, errors
                log.warning("%s: attempt %d failed (%s: %s); trying again", what, len(errors), type(err).__name__, err)
                self.poisons.forget_failure(cell.poison_key)
                free_cuda_memory()

    def _train(self, cell: CellSpec, on_epoch) -> dict:
        """One attempt; on CUDA out-of-memory, again with half the batch until MIN_OOM_BATCH."""
        data = self.data(cell.data)
        poison, poison_meta = self.poisons.get(cell, data)  # not the batch size's fault if this fails: raise as it is
        recipe, shrunk = cell.recipe, []
        while True:
            try:
                outcome = run_cell(replace(cell, recipe=recipe), data, poison, poison_meta, self.prepared,
                                   self.device, on_epoch, self.compile)
                break
            except torch.cuda.OutOfMemoryError as err:
                free_cuda_memory()
                if recipe.batch_size // 2 < MIN_OOM_BATCH:
                    raise CellFailed(f"out of GPU memory on {self.env['device']} even at batch size "
                                     f"{recipe.batch_size}: use a smaller architecture or free the GPU") from err
                shrunk.append({"batch_size": recipe.batch_size, "error": str(err).splitlines()[0][:300]})
                recipe = smaller_batch(recipe)
                log.warning("cell %s (%s): out of GPU memory; trying batch %d with lr %g", cell.cell_id,
                            cell.label, recipe.batch_size, recipe.lr)
        if shrunk:
            outcome["out_of_memory"] = {"tried": shrunk, "batch_size": recipe.batch_size, "lr": recipe.lr}
        return outcome

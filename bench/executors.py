"""Where cells run: in this process, in worker processes (one per GPU), on Ray, or on SLURM.

Every executor hands cells to `bench.runner.CellWorker`, so they share one set of rules, read from
the store: a finished cell is never run again, a failing cell is retried `retries` times and then
recorded as failed with its error, and the same command run again does exactly what is missing.

Executors that run cells in other processes first generate every missing poison once, as tasks of
their own, into the store's content-addressed cache; the cells then read them from there, so the
results folder must be on a file system that every worker sees (a cluster's shared disk). Cells
whose poison could not be made are recorded as failed with the poison's error.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from bench.config import ConfigError, require
from bench.environment import provenance
from bench.cell import CellSpec
from bench.grid import Grid
from bench.plan import CellState, poisons_to_generate
from bench.plugin_files import load_plugin_files, loaded_plugin_files
from bench.records import CellResult
from bench.runner import CellWorker, input_fingerprint, preflight
from bench.store import Store

log = logging.getLogger("bench")


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker builds its `CellWorker` from; sent as it is to worker processes (it pickles).

    `device` is the one `run_grid` was given; executors whose workers get a device of their own (a
    pool worker its GPU, a Ray or SLURM task the GPU it was allotted) replace it. `plugin_files` are
    the plugin files (`bench.plugin_files`) the driver imported, which a worker imports before its
    first job: a worker process starts with the built-ins and entry points only.
    """

    store: Store
    device: torch.device
    retries: int = 1
    compile: bool = False
    plugin_files: tuple[str, ...] = ()

    def worker(self) -> CellWorker:
        return CellWorker(self.store, self.device, self.retries, self.compile)


@dataclass(frozen=True)
class Job:
    kind: str  # "poison": make the cell's poison; "cell": train and record the cell
    cell: CellSpec
    grid_name: str


_WORKER = None  # (settings, CellWorker) of this process: data and poisons stay loaded between jobs
_POOL_DEVICE: str | None = None  # the device a pool worker was given when it started


def execute(job: Job, settings: WorkerSettings) -> CellResult | dict:
    """Run one job in this process; returns the cell's record (or the poison's summary)."""
    global _WORKER
    if _POOL_DEVICE is not None:
        settings = replace(settings, device=torch.device(_POOL_DEVICE))
    if _WORKER is None or _WORKER[0] != settings:
        load_plugin_files(settings.plugin_files)  # once per file and content; a no-op in the driver's process
        _WORKER = (settings, settings.worker())
    worker = _WORKER[1]
    if job.kind == "poison":
        return {"poison_key": job.cell.poison_key, **worker.make_poison(job.cell)}
    return worker.run(job.cell, job.grid_name)


def poison_jobs(grid_name: str, cells: Iterable[CellSpec], store: Store) -> list[Job]:
    """One job per poison that the cells need and the cache lacks; an uncacheable one is made by its cell."""
    needed = poisons_to_generate([CellState(cell, "pending") for cell in cells], store)
    return [Job("poison", cell, grid_name) for cell in needed if cell.cacheable]


def settled(handles: Iterable, jobs: dict, result_of: Callable) -> Iterable[tuple[Job, object]]:
    """(job, its result, or the exception that getting it raised: a worker lost, a task cancelled) per handle."""
    for handle in handles:
        try:
            yield jobs[handle], result_of(handle)
        except Exception as err:
            yield jobs[handle], err


def fail_unrunnable(cell: CellSpec, grid_name: str, store: Store, error: dict, progress) -> None:
    """Record a cell that no worker could run (its poison failed, its worker died), unless it finished
    or another process is running it."""
    claim = store.claim(cell.cell_id)
    if claim is None:
        progress.finished(None)
        return
    with claim:
        record = store.read_record(cell.cell_id)
        if record is None or not record.done:
            record = CellResult.failed(cell, grid_name, error, provenance=provenance(torch.device("cpu")), attempts=0)
            store.write_record(record)
    log.error("cell %s (%s) failed: %s: %s", cell.cell_id, cell.label, error["type"], error["message"])
    progress.finished(record)


class RemoteExecutor:
    """Two phases over a `submit(jobs) -> iterator of (job, result or exception)`: poisons, then cells."""

    def submit(self, jobs: list[Job], settings: WorkerSettings):
        raise NotImplementedError

    def opened(self) -> contextlib.AbstractContextManager:
        """Resources kept for both phases (a process pool); nothing by default."""
        return contextlib.nullcontext()

    def run(self, grid_name: str, cells: list[CellSpec], settings: WorkerSettings, progress) -> None:
        with self.opened():
            self._run(grid_name, cells, settings, progress)

    def _run(self, grid_name: str, cells: list[CellSpec], settings: WorkerSettings, progress) -> None:
        store = settings.store
        poisons = poison_jobs(grid_name, cells, store)
        broken: dict[str, dict] = {}
        if poisons:
            log.info("generating %d poison(s) first, once each", len(poisons))
        for job, result in self.submit(poisons, settings):
            if isinstance(result, BaseException) or result["status"] != "done":
                broken[job.cell.poison_key] = (_remote_error(result) if isinstance(result, BaseException)
                                               else result["error"])
        runnable = []
        for cell in cells:
            if cell.poison_key in broken:
                error = broken[cell.poison_key]
                fail_unrunnable(cell, grid_name, store, {**error, "message": f"poison generation failed: {error['message']}"},
                                progress)
            else:
                runnable.append(cell)
        for job, result in self.submit([Job("cell", c, grid_name) for c in runnable], settings):
            if isinstance(result, BaseException):
                fail_unrunnable(job.cell, grid_name, store, _remote_error(result), progress)
            else:
                progress.finished(result)


def _remote_error(err: BaseException) -> dict:
    return {"type": type(err).__name__, "message": f"worker lost: {err}",
            "traceback": "".join(traceback.format_exception(err))}


class InProcess:
    """Cells one after another in this process, with a live line per epoch. The default."""

    def describe(self, device: torch.device) -> str:
        return f"in this process on {device}"

    def run(self, grid_name: str, cells: list[CellSpec], settings: WorkerSettings, progress) -> None:
        worker = settings.worker()
        for cell in cells:
            progress.started(cell)
            progress.finished(worker.run(cell, grid_name, on_epoch=lambda rec, cell=cell: progress.epoch(cell, rec)))


def _start_pool_worker(devices, workers: int) -> None:
    global _POOL_DEVICE
    _exit_with_driver(os.getppid())
    _POOL_DEVICE = devices.get()
    if _POOL_DEVICE == "cpu":  # CPU workers split the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    else:  # so that anything asking CUDA for "the current device" gets this worker's GPU
        torch.cuda.set_device(torch.device(_POOL_DEVICE))


def _exit_with_driver(driver: int) -> None:
    """End this worker process when the driver that started it ends, however it ends (SIGKILL included),
    instead of training on alone: a thread watches for the worker being handed to another parent."""
    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


class LocalPool(RemoteExecutor):
    """Worker processes on this machine: one per visible GPU, `cells_per_gpu` of them per GPU.

    Several cells on one GPU help when one cell alone leaves it idle (small models, small batches).
    On a CPU-only machine, `cpu_workers` processes split the cores.
    """

    def __init__(self, cells_per_gpu: int = 1, cpu_workers: int = 2):
        require(cells_per_gpu >= 1, "cells_per_gpu", f"must be >= 1, got {cells_per_gpu}")
        require(cpu_workers >= 1, "workers", f"must be >= 1, got {cpu_workers}")
        gpus = torch.cuda.device_count()
        self.devices = [f"cuda:{i}" for i in range(gpus)] * cells_per_gpu if gpus else ["cpu"] * cpu_workers

    def describe(self, device: torch.device) -> str:
        return f"{len(self.devices)} worker process(es) on {', '.join(sorted(set(self.devices)))}"

    @contextlib.contextmanager
    def opened(self):
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
        devices = context.Queue(maxsize=len(self.devices))
        for device in self.devices:
            devices.put(device)
        with ProcessPoolExecutor(len(self.devices), mp_context=context, initializer=_start_pool_worker,
                                 initargs=(devices, len(self.devices))) as self._pool:
            yield

    def submit(self, jobs: list[Job], settings: WorkerSettings):
        futures = {self._pool.submit(execute, job, settings): job for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from settled(done, futures, lambda future: future.result())


class RayExecutor(RemoteExecutor):
    """Each poison and each cell a Ray task with one GPU (a CPU on a CPU-only cluster).

    `address=None` joins the cluster of `RAY_ADDRESS` or starts a local one. Nodes need this package
    installed and the results folder on a shared disk. Ray retries a task whose worker died
    `retries` times; errors inside a cell are retried by the cell worker itself.
    """

    def __init__(self, address: str | None = None, cells_per_gpu: int = 1, cpus_per_task: int = 1):
        require(cells_per_gpu >= 1, "cells_per_gpu", f"must be >= 1, got {cells_per_gpu}")
        self.address = address
        self.cells_per_gpu = cells_per_gpu
        self.cpus_per_task = cpus_per_task

    def describe(self, device: torch.device) -> str:
        return f"Ray at {self.address or os.environ.get('RAY_ADDRESS') or 'a local instance'}"

    def submit(self, jobs: list[Job], settings: WorkerSettings):
        if not jobs:
            return
        ray = _optional("ray", "ray")
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
        gpus = ray.cluster_resources().get("GPU", 0)
        resources = ({"num_gpus": 1 / self.cells_per_gpu} if gpus else {"num_cpus": self.cpus_per_task})
        task = ray.remote(max_retries=settings.retries, **resources)(execute)
        device_settings = replace(settings, device=torch.device("cuda" if gpus else "cpu"))  # the task's own GPU
        refs = {task.remote(job, device_settings): job for job in jobs}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield from settled(done, refs, ray.get)


class SlurmExecutor(RemoteExecutor):
    """submitit job arrays: one task per poison, then one per cell, each with one GPU.

    `cluster="local"` runs the same jobs as local processes (submitit's LocalExecutor), which is
    how the tests run it. submitit keeps its own pickled job files under `<out>/slurm`; the results
    themselves are the store's JSON records.
    """

    def __init__(self, partition: str | None = None, timeout_min: int = 240, max_parallel: int = 64,
                 gpus_per_task: int = 1, cpus_per_task: int = 8, cluster: str | None = None):
        require(timeout_min >= 1, "timeout_min", f"must be >= 1 minute, got {timeout_min}")
        self.partition, self.timeout_min, self.max_parallel = partition, timeout_min, max_parallel
        self.gpus_per_task, self.cpus_per_task, self.cluster = gpus_per_task, cpus_per_task, cluster

    def describe(self, device: torch.device) -> str:
        return f"SLURM job arrays ({self.cluster or 'auto'} cluster, partition {self.partition or 'default'})"

    def submit(self, jobs: list[Job], settings: WorkerSettings):
        if not jobs:
            return
        submitit = _optional("submitit", "slurm")
        executor = submitit.AutoExecutor(folder=os.path.join(settings.store.root, "slurm", "%j"), cluster=self.cluster)
        params = {"timeout_min": self.timeout_min, "cpus_per_task": self.cpus_per_task, "tasks_per_node": 1,
                  "slurm_array_parallelism": self.max_parallel}
        if self.gpus_per_task:
            params["gpus_per_node"] = self.gpus_per_task
        if self.partition:
            params["slurm_partition"] = self.partition
        executor.update_parameters(**params)
        # Each task gets the GPU it was allotted, whatever device the submitting machine (a login node) has.
        settings = replace(settings, device=torch.device("cuda" if self.gpus_per_task else "cpu"))
        submitted = executor.map_array(execute, jobs, [settings] * len(jobs))
        yield from settled(submitit.helpers.as_completed(submitted), dict(zip(submitted, jobs)), lambda job: job.result())


def _optional(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"executor needs {module}: pip install 'unlearnable-bench[{extra}]'") from None


def local_executor(workers: int | None = None, cells_per_gpu: int = 1) -> InProcess | LocalPool:
    """In this process on one device; worker processes for several GPUs, several cells per GPU or `workers` CPUs."""
    if torch.cuda.device_count() > 1 or cells_per_gpu > 1 or (workers or 1) > 1:
        return LocalPool(cells_per_gpu, workers or 1)
    return InProcess()


# name -> factory taking the executor's own options; `bench run --executor NAME` picks one.
EXECUTORS: dict[str, Callable[..., object]] = {"local": local_executor, "ray": RayExecutor, "slurm": SlurmExecutor}


def make_executor(name: str, **options):
    if name not in EXECUTORS:
        raise ConfigError(f"executor: unknown {name!r}; allowed: {', '.join(EXECUTORS)}")
    return EXECUTORS[name](**options)


class GridProgress:
    """A bar over cells (done/total, rate, time left) with a live line for the running cell; log lines off a terminal."""

    def __init__(self, grid_name: str, total: int, show: bool, on_record: Callable[[CellResult], None] | None = None):
        self.bar = tqdm(total=total, desc=f"grid {grid_name}", unit="cell", disable=not show, dynamic_ncols=True)
        self.counts = {"done": 0, "failed": 0, "skipped": 0, "elsewhere": 0}
        self.on_record = on_record

    def started(self, cell: CellSpec) -> None:
        self.bar.set_postfix_str(cell.label)

    def epoch(self, cell: CellSpec, rec: dict) -> None:
        self.bar.set_postfix_str(f"{cell.label}: epoch {rec['epoch']} test {rec['test_acc']:.1%}")

    def finished(self, record: CellResult | None) -> None:
        """A cell's outcome: its record, or None where another process is running it."""
        status = "elsewhere" if record is None else "skipped" if record.skipped else record.status
        self.counts[status] += 1
        self.bar.update(1)
        if record is not None and self.on_record is not None:
            self.on_record(record)

    def close(self) -> None:
        self.bar.close()


def content_of(cells: list[CellSpec]) -> Callable[[CellSpec], tuple[str | None, str | None]]:
    """cell -> (its data's fingerprint, its attack's input files' fingerprint), each taken once per
    dataset and poison, after `bench.runner.preflight` has checked the data and architectures (a
    ConfigError if not): what a record must have been made on to count as done, for the run and
    for `bench run --dry-run` and `bench status` alike."""
    fingerprints = preflight(cells)
    inputs = {key: input_fingerprint(cell) for key, cell in {c.poison_key: c for c in cells}.items()}
    return lambda cell: (fingerprints[cell.data], inputs[cell.poison_key])


def pending_cells(cells: list[CellSpec], store: Store) -> list[CellSpec]:
    """The cells without a done record on their data and their attack's input files (`content_of`)."""
    content = content_of(cells)
    return [c for c in cells if not store.is_done(c.cell_id, *content(c))]


def run_grid(grid: Grid, store: Store, device: torch.device, progress: bool | None = None, *,
             executor=None, retries: int = 1, compile: bool = False, cells: list[CellSpec] | None = None,
             on_record: Callable[[CellResult], None] | None = None) -> dict[str, int]:
    """Run every cell of `grid` that has no `done` record on its data. Returns counts of done/failed/skipped,
    and `elsewhere`: cells another process (a second `bench run` on the same folder) was running.

    The data and architectures are checked first (`bench.runner.preflight`): a bad dataset is one error.

    `executor` is one of `bench.executors` (default: in this process on `device`). `cells` (default:
    all of the grid's) are the ones to run; `on_record` gets each cell's record as it finishes.
    """
    cells = grid.cells() if cells is None else cells
    pending = pending_cells(cells, store)
    skipped = len(cells) - len(pending)
    executor = executor or InProcess()
    log.info("grid %s: %d cells, %d already done, %d to run (%s)", grid.name, len(cells), skipped, len(pending),
             executor.describe(device))
    if not pending:
        return {"skipped": skipped, "done": 0, "failed": 0}
    store.check_writable()
    settings = WorkerSettings(store, device, retries, compile, loaded_plugin_files())
    show = sys.stderr.isatty() if progress is None else progress
    bar = GridProgress(grid.name, len(pending), show, on_record)
    try:
        executor.run(grid.name, pending, settings, bar)
    finally:
        bar.close()
    counts = {**bar.counts, "skipped": bar.counts["skipped"] + skipped}
    if not counts["elsewhere"]:  # only where another run on the same folder holds some cells
        del counts["elsewhere"]
    return counts

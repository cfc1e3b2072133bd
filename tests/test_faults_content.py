"""Content decides, at the moment of use: each test replaces an input at the same name (during a cell,
with the same size and modification time, under the same cache key) and asserts what is run and recorded."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bench.cli import main
from bench.config import ConfigError
from bench.data import DataSpec, clear_cache, load_dataset
from bench.executors import content_of, run_grid
from bench.grid import load_grid
from bench.plan import cell_states, format_plan, plan_grid
from bench.runner import CellWorker, PreparedSets
from bench.store import Store
from defenses.base import create_defense
from methods.base import Poison
from methods.external import check_order
from test_cli import write_grid

CPU = torch.device("cpu")


def one_cell(tmp_path: Path, data: Path, attack: str, defense: str = "none", extra: str = "", data_extra: str = ""):
    path = write_grid(tmp_path / "g.toml", data, [attack], (defense,), extra=extra)
    path.write_text(path.read_text().replace("[config.tiny_cnn]", f"{data_extra}\n[config.tiny_cnn]"))
    grid = load_grid(str(path))
    (cell,) = grid.cells()
    return grid, cell


def rewrite_in_place(path: Path, payload: bytes) -> None:
    """New bytes in the same file, with its size and modification time as they were (`cp -p`, `rsync -a`)."""
    before = path.stat()
    assert len(payload) == before.st_size
    with open(path, "r+b") as f:
        f.write(payload)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def npz_bytes(tmp_path: Path, **arrays) -> bytes:
    scratch = tmp_path / "scratch.npz"
    np.savez(scratch, **arrays)
    return scratch.read_bytes()


# 1. An external poison file replaced while its cell trains -------------------------------------

def test_an_external_file_replaced_during_its_cell_fails_the_cell_instead_of_recording_a_mix(tmp_path, tiny_npz):
    clean = np.load(tiny_npz)["x_train"].astype(np.int16)
    first, second = (np.clip(clean + d, 0, 255).astype(np.uint8) for d in (2, -2))
    poison = tmp_path / "p.npz"
    np.savez(poison, x_train=first)
    grid, cell = one_cell(tmp_path, tiny_npz, "external", extra=f'[config.external]\npath = "{poison}"\neps = 0.0313725')
    store = Store(tmp_path / "out")
    worker = CellWorker(store, CPU, retries=0)
    old = worker.inputs(cell)

    def swap(_epoch):  # the same size and modification time: only the content differs
        rewrite_in_place(poison, npz_bytes(tmp_path, x_train=second))

    record = worker.run(cell, grid.name, on_epoch=swap)
    assert record.status == "failed" and record.error["type"] == "InputChanged"
    assert f"{poison} changed during the run" in record.error["message"] and record.error["message"].endswith("run again")
    assert record.input_fingerprint == old, "the record names the file the cell started with"
    assert not store.is_done(cell.cell_id, *content_of([cell])(cell))
    again = CellWorker(store, CPU, retries=0).run(cell, grid.name)  # nothing changes now: done, on the new file
    assert again.status == "done" and again.input_fingerprint not in (None, old)
    assert store.is_done(cell.cell_id, *content_of([cell])(cell))


def test_a_worker_never_reuses_a_poison_from_memory_after_its_file_changed(tmp_path, tiny_npz):
    clean = np.load(tiny_npz)["x_train"].astype(np.int16)
    poison = tmp_path / "p.npz"
    np.savez(poison, x_train=np.clip(clean + 2, 0, 255).astype(np.uint8))
    grid, cell = one_cell(tmp_path, tiny_npz, "external", extra=f'[config.external]\npath = "{poison}"\neps = 0.0313725')
    worker = CellWorker(Store(tmp_path / "out"), CPU)
    data = worker.data(cell.data)
    before, _ = worker.poisons.get(cell, data)
    rewrite_in_place(poison, npz_bytes(tmp_path, x_train=np.clip(clean - 2, 0, 255).astype(np.uint8)))
    after, meta = worker.poisons.get(cell, data)
    assert not meta.get("cached") and not torch.equal(before.images, after.images)
    assert torch.equal(after.images.permute(0, 2, 3, 1), torch.from_numpy(np.clip(clean - 2, 0, 255).astype(np.uint8)))


# 2. An image-folder image replaced by one of the same size and modification time ------------------

def write_png(path: Path, seed: int, size: int = 32) -> None:
    """A PNG stored without compression: its byte size depends on its dimensions only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)


def test_a_folder_image_replaced_with_the_same_size_and_mtime_is_decoded_again_and_reruns_its_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "root"))
    clear_cache()
    root = tmp_path / "pets"
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            for i in range(3):
                write_png(root / split / name / f"{i}.png", seed=100 * c + 10 * (split == "test") + i)
    grid, cell = one_cell(tmp_path, Path(f"folder:{root}"), "clean", data_extra="image_size = 32")
    store = Store(tmp_path / "out")
    assert run_grid(grid, store, CPU, progress=False)["done"] == 1
    old = load_dataset(cell.data)
    target = root / "train" / "cat" / "0.png"
    replacement = tmp_path / "other.png"
    write_png(replacement, seed=999)
    rewrite_in_place(target, replacement.read_bytes())

    new = load_dataset(cell.data)
    assert new.fingerprint != old.fingerprint
    expected = torch.from_numpy(np.array(Image.open(replacement).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(new.train.images[0], expected), "the new image is used, not the old decode"
    assert len([p for p in (tmp_path / "root" / "folders").iterdir()]) == 2, "another decode cache"
    content = content_of([cell])
    assert not store.is_done(cell.cell_id, *content(cell))
    # 6. The dry run and the status say what the run will do, before it does it.
    dry = CliRunner().invoke(main, ["run", "--grid", str(tmp_path / "g.toml"), "--results", str(store.root),
                                    "--dry-run", "--device", "cpu"])
    assert dry.exit_code == 0, dry.output
    assert "0 done, 0 failed, 1 pending" in dry.output and "would rerun: data changed" in dry.output
    status = CliRunner().invoke(main, ["status", "--grid", str(tmp_path / "g.toml"), "--results", str(store.root)])
    assert status.exit_code == 0, status.output
    assert "0 done, 0 failed, 1 pending" in status.output
    assert "1 pending cell with a done record made on other data or input files (would rerun: data changed)" in status.output
    counts = run_grid(grid, store, CPU, progress=False)
    assert counts == {"done": 1, "failed": 0, "skipped": 0}
    assert store.read_record(cell.cell_id).data_fingerprint == new.fingerprint


# 6. The dry run judges records as the run does (an .npz replaced at the same path) ----------------

def test_dry_run_and_status_count_a_record_on_other_data_as_pending(tmp_path, tiny_npz):
    data = tmp_path / "data.npz"
    data.write_bytes(tiny_npz.read_bytes())
    grid, cell = one_cell(tmp_path, data, "clean")
    store = Store(tmp_path / "out")
    run_grid(grid, store, CPU, progress=False)
    records = {cell.cell_id: store.read_record(cell.cell_id)}
    assert [s.status for s in cell_states([cell], records, content_of([cell]))] == ["done"]
    arrays = dict(np.load(data))
    arrays["x_train"] = 255 - arrays["x_train"]
    np.savez(data, **arrays)
    (state,) = cell_states([cell], records, content_of([cell]))
    assert state.status == "pending" and state.why == "would rerun: data changed"
    assert "pending" in format_plan(plan_grid(grid, store, content_of([cell]))).splitlines()[1]


def test_an_npz_dataset_rewritten_with_the_same_size_and_mtime_is_read_again_in_the_same_process(tmp_path, tiny_npz):
    data = tmp_path / "data.npz"
    data.write_bytes(tiny_npz.read_bytes())
    spec = DataSpec(name=str(data))
    before = load_dataset(spec)
    arrays = dict(np.load(data))
    arrays["x_train"] = 255 - arrays["x_train"]
    rewrite_in_place(data, npz_bytes(tmp_path, **arrays))
    after = load_dataset(spec)
    assert after.fingerprint != before.fingerprint
    assert torch.equal(after.train.images, 255 - before.train.images)


# 3. A defended set cached under a poison key whose poison was generated again ----------------------

def test_a_defended_set_follows_the_poisons_content_not_its_key(tmp_path, tiny_npz):
    grid, cell = one_cell(tmp_path, tiny_npz, "random_noise", "jpeg")
    data = load_dataset(cell.data)
    store = Store(tmp_path / "out")
    defense = create_defense(cell.defense, cell.defense_config, num_classes=data.train.num_classes)
    first = Poison(data.train.images, "linf", 8 / 255)
    regenerated = Poison(255 - data.train.images, "linf", 8 / 255)
    old, _ = PreparedSets(store).get(cell, defense, first, data)
    new, _ = PreparedSets(store).get(cell, defense, regenerated, data)  # a fresh worker: from the disk cache
    assert torch.equal(new, defense.prepare(regenerated.images, data.train.labels))
    assert not torch.equal(new, old)
    again, _ = PreparedSets(store).get(cell, defense, first, data)
    assert torch.equal(again, old), "each content keeps its own cached set"


# 4. A generation checkpoint resumed only on the data and settings it was made from ----------------

class Killed(BaseException):
    """Stands in for a kill: no `except Exception` catches it, so the attempt ends there."""


def test_a_checkpoint_is_resumed_on_its_own_data_only(tmp_path, tiny_npz, monkeypatch, caplog):
    data = tmp_path / "data.npz"
    data.write_bytes(tiny_npz.read_bytes())
    grid, cell = one_cell(tmp_path, data, "em", extra='[config.em]\npreset = "cpu"\nmax_rounds = 3\nstop_accuracy = 1.0\nsteps = 2\ntrain_steps = 2\nsurrogate_width = 4',
                          data_extra="train_size = 40")
    store = Store(tmp_path / "out")
    from bench.context import RunContext

    def kill_after(round_):
        def log(self, message):
            logging.getLogger("bench").info(message)
            if f"round {round_}:" in message:
                raise Killed
        return log

    monkeypatch.setattr(RunContext, "log", kill_after(1))
    with pytest.raises(Killed):
        CellWorker(store, CPU).make_poison(cell)
    assert (store.root / "cache" / "work" / cell.poison_key / "state.pt").is_file()
    caplog.set_level(logging.INFO, logger="bench")
    monkeypatch.setattr(RunContext, "log", kill_after(2))
    with pytest.raises(Killed):  # the same data: resumed
        CellWorker(store, CPU).make_poison(cell)
    assert "resuming after round 1" in caplog.text
    caplog.clear()
    arrays = dict(np.load(data))
    arrays["x_train"] = 255 - arrays["x_train"]
    np.savez(data, **arrays)  # another dataset at the same path
    monkeypatch.setattr(RunContext, "log", kill_after(99))
    assert CellWorker(store, CPU).make_poison(cell)["status"] == "done"
    assert "made from other data or settings" in caplog.text and "generating from the start" in caplog.text
    assert "resuming" not in caplog.text
    assert "em round 1:" in caplog.text, "the new data's generation starts at round 1"


# 5. An external .npz order-checked on every image, not the first 512 -------------------------------

def test_external_order_is_checked_on_every_image(tmp_path):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (1500, 3, 8, 8), generator=g, dtype=torch.uint8)
    poisoned = (clean.to(torch.int16) + torch.randint(-3, 4, clean.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    check_order(clean, poisoned, tmp_path / "p.npz")  # in order: passes
    shuffled = poisoned.clone()
    shuffled[1100:1400] = poisoned[1100:1400].roll(1, dims=0)  # well past the first 512 images
    with pytest.raises(ConfigError, match=r"p\.npz: images 1024 to 1499 do not follow the dataset's order"):
        check_order(clean, shuffled, tmp_path / "p.npz")

"""Results on disk: one JSON record per cell, poisons in a content-addressed cache.

Every write goes to a temporary file in the same folder, is flushed to disk, and is renamed over
the target, so a crash or a kill leaves either the old file or the new one, never half of one.
Nothing is loaded with pickle: records are JSON, poisons are raw .npy arrays read with
`allow_pickle=False` and checked against the SHA-256 written beside them.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench.config import ConfigError
from bench.readers import check_npz, load_npy_bytes
from bench.records import CellResult, RecordError

log = logging.getLogger("bench")


def umask() -> int:
    """This process's umask, read without changing it where the kernel says it (Linux's
    /proc/self/status), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; a bundle, a report or a record is meant to be read as any file
        # the user writes is: the mode open() would give it under their umask.
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n").encode())


def canonical_hash(obj: Any, length: int = 16) -> str:
    """Short SHA-256 of the canonical JSON of `obj`: the id of a cell or a poison."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


_CONTENT_HASHES: dict[tuple, str] = {}  # (path, what stat says of its files) -> digest, for this process


def content_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files and their names: what a file read by path holds.
    Remembered while the files' inodes, sizes and modification and change times stay the same: a
    file replaced by another of the same size and modification time (`cp -p`, `os.utime`) has a new
    change time, which no program can set, so it is read again."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = tuple((str(f), s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for f in files for s in [f.stat()])
    key = (str(path.resolve()), stats)
    if key not in _CONTENT_HASHES:
        digest = hashlib.sha256()
        for file in files:
            if path.is_dir():
                digest.update(str(file.relative_to(path)).encode() + b"\0")
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        _CONTENT_HASHES[key] = digest.hexdigest()
    return _CONTENT_HASHES[key]


class Claim:
    """A held claim on a cell (`Store.claim`); `release` it, or use it as a context manager."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def remove_partial_files(folders, older_than: float) -> list[Path]:
    """Take away the partial files (`.NAME.*.tmp`, `atomic_write_bytes`) under `folders` older than `older_than`
    seconds: none is ever read, and one that old is no write still going, only what a killed run left."""
    removed = []
    now = time.time()
    for folder in map(Path, folders):
        for partial in folder.rglob(".*.tmp") if folder.is_dir() else ():
            try:
                if now - partial.stat().st_mtime > older_than:
                    partial.unlink()
                    removed.append(partial)
            except OSError:  # gone already, or not ours: never read either way
                pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (one of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


STALE_PARTIAL_SECONDS = 300  # a partial file this old is no write in progress (a cached poison takes seconds)


class RecordNotWritten(ConfigError):
    """A record the results folder could not take (a full disk): said in one line, and the grid stops."""


@dataclass(frozen=True)
class Store:
    """The results folder: `records/<cell_id>.json` and `cache/poisons/<key>.{npy,json}`.

    A value (its folder), so it is sent to worker processes as it is and two stores of one folder
    are equal.
    """

    root: Path

    def __init__(self, root: Path | str):
        object.__setattr__(self, "root", Path(root))

    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    @property
    def poisons_dir(self) -> Path:
        return self.root / "cache" / "poisons"

    def check_writable(self) -> None:
        """ConfigError unless records can be written here: asked before any training, not after it."""
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.records_dir, prefix=".write-check.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ConfigError(f"--results {self.root}: results cannot be written there ({err.strerror or err})") from None
        self.remove_stale_partials()

    def remove_stale_partials(self, older_than: float = STALE_PARTIAL_SECONDS) -> list[Path]:
        """Take away the partial files a killed run left in the records and caches (`remove_partial_files`)."""
        return remove_partial_files((self.records_dir, self.root / "cache"), older_than)

    # --- records -------------------------------------------------------------------------
    def record_path(self, cell_id: str) -> Path:
        return self.records_dir / f"{cell_id}.json"

    def write_record(self, record: CellResult) -> None:
        """Write `record`; a done record of the same cell on other data is kept under records/superseded first."""
        old = self.read_record(record.cell_id)
        if old is not None and old.done and not old.done_on(record.data_fingerprint, record.input_fingerprint):
            kept = self.records_dir / "superseded" / f"{old.cell_id}.{old.content_label()}.json"
            atomic_write_json(kept, old.to_json())
            log.warning("cell %s: its record on other data or input files (%s) is kept as %s", old.cell_id,
                        old.content_label(), kept)
        path = self.record_path(record.cell_id)
        try:
            atomic_write_json(path, record.to_json())
        except OSError as err:  # a full disk, a read-only or vanished folder: every later record would fail too
            raise RecordNotWritten(f"cell {record.cell_id} ({record.spec.get('attack')} / {record.spec.get('defense')} / "
                                   f"seed {record.spec.get('seed')}): its record could not be written to {path} "
                                   f"({err.strerror or err}); the grid stops here, every record written before is "
                                   f"whole: free space (or make {self.records_dir} writable) and run again") from None

    def read_record(self, cell_id: str) -> CellResult | None:
        """The stored record of `cell_id`; None where there is none or it cannot be read as one."""
        path = self.record_path(cell_id)
        try:
            return CellResult.from_json(json.loads(path.read_text()))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, RecordError, OSError) as err:  # OSError: a folder, no permission
            log.warning("ignoring unreadable record %s (%s); the cell will run again", path, err)
            return None
        except RecursionError:  # JSON nested deeper than the parser goes: no record is
            log.warning("ignoring unreadable record %s (nested too deeply to be a record); the cell will run again", path)
            return None

    def is_done(self, cell_id: str, fingerprint: str | None = None, inputs: str | None = None) -> bool:
        """Whether `cell_id` has a done record (on the data of `fingerprint` and with the attack's input
        files of `inputs`, where given): the one test of "is this cell finished?" that every layer asks."""
        record = self.read_record(cell_id)
        if record is not None and record.done and not record.done_on(fingerprint):
            log.warning("cell %s: its record was made on other data (fingerprint %s, this data's is %s); it runs again",
                        cell_id, record.data_fingerprint, fingerprint)
        elif record is not None and record.done and not record.done_on(fingerprint, inputs):
            log.warning("cell %s: its record was made with other input files (its attack's file was replaced: "
                        "fingerprint %s, now %s); it runs again", cell_id, record.input_fingerprint, inputs)
        return record is not None and record.done_on(fingerprint, inputs)

    def remove_failed(self, cell_id: str) -> bool:
        """Remove the record of `cell_id` where it is a failed one; False where it is done, gone or
        unreadable, or where a run holds the cell (it may be about to write it done). The claim is held
        while the record is read and removed, so a record that a run writes meanwhile is never lost."""
        claim = self.claim(cell_id)
        if claim is None:
            return False
        with claim:
            record = self.read_record(cell_id)
            if record is None or record.status != "failed":
                return False
            self.record_path(cell_id).unlink()
            return True

    def records(self) -> Iterator[CellResult]:
        for path in sorted(self.records_dir.glob("*.json")):
            record = self.read_record(path.stem)
            if record is not None:
                yield record

    # --- claims: which process is running a cell ---------------------------------------------
    @property
    def claims_dir(self) -> Path:
        return self.records_dir / ".claims"

    def claim(self, cell_id: str) -> Claim | None:
        """Take `cell_id` for this process while it runs the cell, or None where another process holds it.

        A claim is an exclusive `flock` on `records/.claims/<cell_id>.lock`: the kernel drops it when
        its process ends in any way (SIGKILL included), so a killed run cannot leave a cell taken.
        Two `bench run` on one results folder thus split the cells instead of both running each.
        (Lock files stay behind, empty of meaning once unlocked: removing one while another process
        opens it would let two processes lock two different files.)
        """
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.claims_dir / f"{cell_id}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        owner = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)  # for a person looking: who holds it
        return Claim(fd)

    def claim_holder(self, cell_id: str) -> str:
        """Who holds (or last held) the claim of `cell_id`, as its lock file says."""
        try:
            return (self.claims_dir / f"{cell_id}.lock").read_text().strip() or "another process"
        except OSError:
            return "another process"

    # --- poison cache --------------------------------------------------------------------
    def save_poison(self, key: str, images: np.ndarray, meta: dict) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(images), allow_pickle=False)
        payload = buffer.getvalue()
        atomic_write_bytes(self.poisons_dir / f"{key}.npy", payload)
        # The metadata goes last: a poison without its metadata (and hash) is never trusted.
        atomic_write_json(self.poisons_dir / f"{key}.json", {**meta, "sha256": hashlib.sha256(payload).hexdigest()})

    def has_poison(self, key: str) -> bool:
        """Whether the cache holds `key` (without reading or checking it; `load_poison` does that)."""
        return (self.poisons_dir / f"{key}.json").exists() and (self.poisons_dir / f"{key}.npy").exists()

    def load_poison(self, key: str) -> tuple[np.ndarray, dict] | None:
        """The cached poison and its metadata, or None when absent, altered or truncated."""
        meta_path, data_path = self.poisons_dir / f"{key}.json", self.poisons_dir / f"{key}.npy"
        if not (meta_path.exists() and data_path.exists()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            payload = data_path.read_bytes()
            if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
                log.warning("cached poison %s does not match its hash (altered or truncated); generating it again", key)
                return None
            return load_npy_bytes(payload, str(data_path)), meta
        except (OSError, ValueError, json.JSONDecodeError, RecursionError) as err:  # ConfigError: a bad header
            log.warning("cached poison %s is unreadable (%s); generating it again", key, err)
            return None

    # --- poisons handed in from Python (bench.api), read back by the external attack -------------
    @property
    def inputs_dir(self) -> Path:
        return self.root / "cache" / "inputs"

    def save_input(self, x_train: np.ndarray) -> Path:
        """`x_train` (uint8 N, H, W, C) as `cache/inputs/<hash of its shape and bytes>.npz`, the file
        the `external` attack reads; the same images give the same file, so their cells keep their ids.
        A file already there is kept where it holds these images, and written again where not."""
        x_train = np.ascontiguousarray(x_train)
        digest = hashlib.sha256(repr(x_train.shape).encode())
        digest.update(x_train.data)  # the array's own buffer: no copy of a 150 MB training set
        path = self.inputs_dir / f"{digest.hexdigest()[:16]}.npz"
        if path.exists() and _holds(path, x_train):
            return path
        buffer = io.BytesIO()
        np.savez(buffer, x_train=x_train)
        atomic_write_bytes(path, buffer.getvalue())
        return path


def _holds(path: Path, x_train: np.ndarray) -> bool:
    """Whether the .npz at `path` holds `x_train` as its x_train (False where it cannot be read)."""
    try:
        check_npz(path, str(path))  # a corrupt zip or a header declaring terabytes: not these images
        with np.load(path, allow_pickle=False) as f:
            return "x_train" in f and np.array_equal(f["x_train"], x_train)
    except (OSError, ValueError, zipfile.BadZipFile):  # ConfigError is a ValueError
        return False

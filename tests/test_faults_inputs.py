"""Bad and hostile inputs, one test per kind: each reproduces the fault and asserts its outcome, which
is one line naming the file or field and what is allowed (no traceback, nothing allocated that the
input did not earn, no code run from it). Tiny synthetic data throughout."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bench.data as data_mod
from bench.bundles import read_bundle
from bench.config import ConfigError
from bench.data import DataSpec, load_dataset
from bench.imagefolder import FolderSet
from bench.publish import convert_release
from bench.readers import bombs_refused, read_rgb
from bench.report.tables import select_cells
from bench.store import Store
from conftest import synthetic_arrays
from test_cli import invoke, write_grid

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """An empty data root, and no offline copies named."""
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("BENCH_DATA_ROOT", str(root))
    for env in (s.env for s in data_mod.TORCHVISION_SETS.values()):
        monkeypatch.delenv(env, raising=False)
    data_mod.clear_cache()
    yield root
    data_mod.clear_cache()


def image_folder(root: Path, per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((12, 12, 3), 60 * i + 10, np.uint8)).save(root / split / c / f"{i}.png")
    return root


def folder_grid(tmp_path: Path, folder: Path, image_size: int = 8) -> Path:
    grid = write_grid(tmp_path / "g.toml", Path("x"), ["clean"])
    grid.write_text(grid.read_text().replace('name = "x"', f'name = "folder:{folder}"\nimage_size = {image_size}'))
    return grid


def assert_one_line_error(result, message: str) -> None:
    """Exit status 1, no traceback, and one line on stderr: the error, naming what `message` says. The
    decode's progress bar (redrawn with carriage returns, erased on a terminal) is not a line."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = [line.strip() for line in result.stderr.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and not line.startswith("decoding ")]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def run(grid: Path, out: Path, *extra: str):
    return invoke("run", "--grid", str(grid), "--results", str(out), *extra)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height greyscale pixels, with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def npy_declaring(shape: tuple, dtype: str = "|u1", data: bytes = b"\0" * 64) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    return header.getvalue() + data


# --- no code from data -----------------------------------------------------------------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n/Times-Roman findfont 12 scalefont setfont\nshowpage\n"


def test_a_postscript_file_named_png_is_refused_and_never_handed_to_ghostscript(tmp_path, data_root, monkeypatch):
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self) or 1 / 0)
    folder = image_folder(tmp_path / "set")
    (folder / "train" / "cat" / "evil.png").write_bytes(EPS)
    result = run(folder_grid(tmp_path, folder), tmp_path / "out")
    assert_one_line_error(result, f"cannot read image {folder / 'train' / 'cat' / 'evil.png'}: it is not a PNG or "
                                  "JPEG file")
    assert not opened, "the PostScript decoder must never see the file"
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "0.png").write_bytes(EPS)
    with pytest.raises(ConfigError, match="not a PNG or JPEG file"):
        read_rgb(tmp_path / "release" / "0.png", "external poison")
    assert not opened


def test_curves_is_parsed_and_never_evaluated(tmp_path):
    cells = pd_frame()
    assert select_cells(cells, "attack == 'ops' and seed == 0").index.tolist() == [0]
    assert select_cells(cells, "attack in [ops, em], seed >= 1").index.tolist() == [1, 2]
    assert select_cells(cells, "attack in ['em'] and seed >= 1").index.tolist() == [1]
    assert select_cells(cells, "defense=none").index.tolist() == [0, 1, 2]
    marker = tmp_path / "ran"
    for hostile in (f"__import__('os').system('touch {marker}')", "attack.__class__.__name__ == 'str'",
                    "@pd.io.common.os.getcwd() == 1", "seed == 0 or attack == 'em'"):
        with pytest.raises(ValueError, match="--curves: cannot evaluate") as err:
            select_cells(cells, hostile)
        assert "\n" not in str(err.value) and "column op value" in str(err.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="--curves: 'model' is not a column; allowed: attack, defense, seed"):
        select_cells(cells, "model == 'x'")


def pd_frame():
    import pandas as pd

    return pd.DataFrame({"attack": ["ops", "em", "ops"], "defense": ["none"] * 3, "seed": [0, 1, 1]})


class Payload:
    """What a hostile pickle would carry: any object at all."""


def test_an_array_of_objects_stays_refused_and_names_pickle(tmp_path):
    arrays = synthetic_arrays()
    np.savez(tmp_path / "objects.npz", **{**arrays, "x_train": np.array([Payload()] * 200, dtype=object)})
    with pytest.raises(ConfigError, match=r"objects.npz: x_train.npy: an array of Python objects, which would need "
                                          r"pickle \(read with allow_pickle off"):
        load_dataset(DataSpec(name=str(tmp_path / "objects.npz")))


# --- bounded work ----------------------------------------------------------------------------------

def test_a_symlink_loop_in_an_image_folder_is_one_line_not_a_hang(tmp_path, data_root):
    folder = image_folder(tmp_path / "set")
    (folder / "train" / "cat" / "again").symlink_to(folder / "train" / "cat")
    start = time.perf_counter()
    result = run(folder_grid(tmp_path, folder), tmp_path / "out")
    assert_one_line_error(result, f"{folder / 'train' / 'cat' / 'again'} is {folder / 'train' / 'cat'} again (a "
                                  "symbolic link loop)")
    assert time.perf_counter() - start < 30


def test_a_folder_reached_from_two_classes_is_refused_not_counted_twice(tmp_path, data_root):
    folder = image_folder(tmp_path / "set")
    (folder / "train" / "dog" / "more").symlink_to(folder / "train" / "cat")
    with pytest.raises(ConfigError, match="one folder reached twice"):
        FolderSet(folder, 8, data_root / "folders").listing()


def test_a_label_of_a_billion_is_one_line_before_anything_is_sized_by_it(tmp_path):
    arrays = synthetic_arrays()
    arrays["y_train"] = np.r_[arrays["y_train"][:-1], 10**9]
    np.savez(tmp_path / "labels.npz", **arrays)
    result = run(write_grid(tmp_path / "g.toml", tmp_path / "labels.npz", ["clean"]), tmp_path / "out")
    assert_one_line_error(result, "labels.npz: labels up to 1000000000 make 1000000001 classes, more than the 200 "
                                  "training images")


@pytest.mark.parametrize("where", ["dataset", "bundle", "poison cache"])
def test_an_npy_header_declaring_terabytes_is_refused_before_allocation(tmp_path, tiny_npz, where):
    huge = npy_declaring((10**9, 32, 32, 3))
    if where == "dataset":
        with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
            for name, array in synthetic_arrays().items():
                buffer = io.BytesIO()
                np.save(buffer, array)
                z.writestr(f"{name}.npy", huge if name == "x_train" else buffer.getvalue())
        result = run(write_grid(tmp_path / "g.toml", tmp_path / "huge.npz", ["clean"]), tmp_path / "out")
        assert_one_line_error(result, "huge.npz: x_train.npy: its header declares a uint8 array of shape "
                                      "(1000000000, 32, 32, 3) (3,072.0 GB), the file holds 64 bytes")
    elif where == "bundle":
        bundle = a_bundle(tmp_path, tiny_npz)
        payload = zip_of({"x_train.npy": huge, "index.npy": npy_bytes(np.arange(200))})
        rewrite_images(bundle, payload)
        with pytest.raises(ConfigError, match="its header declares a uint8 array of shape .1000000000, 32, 32, 3."):
            read_bundle(bundle)
    else:
        import hashlib

        store = Store(tmp_path / "results")
        store.save_poison("k", np.zeros((2, 3, 8, 8), np.uint8), {"norm": "linf", "budget": 0.0})
        (store.poisons_dir / "k.npy").write_bytes(huge)
        meta = json.loads((store.poisons_dir / "k.json").read_text())
        (store.poisons_dir / "k.json").write_text(json.dumps({**meta, "sha256": hashlib.sha256(huge).hexdigest()}))
        assert store.load_poison("k") is None  # reported and generated again, never allocated


def test_an_image_size_of_1e11_is_one_line_before_the_cache_is_made(tmp_path, data_root):
    folder = image_folder(tmp_path / "set")
    result = run(folder_grid(tmp_path, folder, image_size=10**11), tmp_path / "out")
    assert_one_line_error(result, "data.image_size: 100000000000 px makes a cache of")
    assert not list(data_root.rglob("*.npy")), "no cache file was begun"


def test_an_architecture_too_big_for_memory_is_one_line_before_it_is_built(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"])
    for width in ("1000000", "100000000000"):
        result = run(grid, tmp_path / "out", "--dry-run", "--set", f"tiny_cnn.width={width}")
        assert_one_line_error(result, f"arch tiny_cnn: the model of width = {width}: needs ")
        assert "this machine has available" in result.stderr


def test_a_decompression_bomb_is_one_line(tmp_path, data_root):
    folder = image_folder(tmp_path / "set")
    (folder / "train" / "dog" / "bomb.png").write_bytes(png_header(20000, 20000))  # past PIL's error threshold
    result = run(folder_grid(tmp_path, folder), tmp_path / "out")
    assert_one_line_error(result, f"cannot read image {folder / 'train' / 'dog' / 'bomb.png'}: more than 89,478,485 "
                                  "pixels (a decompression bomb")
    (tmp_path / "warned.png").write_bytes(png_header(10000, 10000))  # between PIL's warning and its error
    with bombs_refused(), pytest.raises(ConfigError, match="more than 89,478,485 pixels"):
        read_rgb(tmp_path / "warned.png", "folder")  # PIL's warning, raised, is the line
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ConfigError, match="more than 89,478,485 pixels"):
        read_rgb(tmp_path / "warned.png", "folder")  # PIL only warns: the size is refused all the same


# --- one line for every bad input ------------------------------------------------------------------

@pytest.mark.parametrize("setting, message", [
    ("epochs = nan", "recipe.epochs: expected a whole number, got nan"),
    ("epochs = inf", "recipe.epochs: expected a whole number, got inf"),
    ("--set recipe.epochs=1/0", "recipe.epochs: expected a number, got '1/0'"),
    ("--set tiny_cnn.width=nan", "arch tiny_cnn.width: expected a whole number, got nan"),
    ("--set data.train_size=-inf", "data.train_size: expected a whole number, got -inf"),
])
def test_nan_inf_and_division_by_zero_in_whole_number_fields_are_one_line(tmp_path, tiny_npz, setting, message):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"])
    extra = []
    if setting.startswith("--set"):
        extra = ["--set", setting.split(" ", 1)[1]]
    else:
        grid.write_text(grid.read_text().replace("epochs = 1", setting))
    assert_one_line_error(run(grid, tmp_path / "out", "--dry-run", *extra), message)


def test_a_grid_nested_past_the_parsers_depth_is_one_line(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"])
    grid.write_text(grid.read_text() + "[config.clean]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line_error(run(grid, tmp_path / "out", "--dry-run"), "grid g: not valid TOML: arrays or tables nested")


def test_field_errors_name_the_field_once(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"])
    result = run(grid, tmp_path / "out", "--dry-run", "--set", "data.train_size=0")
    assert_one_line_error(result, "Error: data.train_size: must be at least 1, got 0")
    assert "data.data." not in result.stderr


def test_a_negative_subset_seed_is_found_when_the_grid_loads(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"])
    result = run(grid, tmp_path / "out", "--dry-run", "--set", "data.train_size=100", "--set", "data.subset_seed=-1")
    assert_one_line_error(result, "data.subset_seed: must be a whole number from 0 to 4294967295, got -1")


def test_a_robust_test_size_larger_than_the_test_set_is_found_before_training(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["clean"], extra='analysis = ["robust"]\n[robust]\ntest_size = 5000')
    out = tmp_path / "out"
    assert_one_line_error(run(grid, out), "robust.test_size: 5000 is more than the 100 test images of")
    assert not list((out / "records").glob("*.json")), "nothing trained"


@pytest.mark.parametrize("name, files", [
    ("cifar100", ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]),
    ("svhn", ["train_32x32.mat", "test_32x32.mat"]),
])
def test_zero_byte_dataset_files_are_one_line_naming_the_file(tmp_path, data_root, name, files):
    for f in files:
        (data_root / f).parent.mkdir(parents=True, exist_ok=True)
        (data_root / f).write_bytes(b"")
    result = run(write_grid(tmp_path / "g.toml", Path(name), ["clean"]), tmp_path / "out")
    assert_one_line_error(result, f"({data_root / files[0]} is unreadable, ")
    assert "Aborted!" not in result.output


def test_a_16_bit_png_is_scaled_to_8_bits_not_saturated(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 30000], [65535, 257]], np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    pixels = np.asarray(read_rgb(path, "folder"))
    assert pixels[..., 0].tolist() == [[0, 117], [255, 1]] and (pixels == pixels[..., :1]).all()


def test_a_poison_ratio_that_poisons_no_image_is_refused_with_the_smallest_that_does(tmp_path, tiny_npz):
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["random_noise"], extra="poison_ratio = 0.004")
    out = tmp_path / "out"
    assert_one_line_error(run(grid, out), "poison_ratio 0.004 of the 200 training images that may be poisoned "
                                          "poisons none; the smallest ratio that poisons one image is 1/200 = 0.005")
    assert_one_line_error(run(grid, out, "--dry-run", "--set", "data.train_size=100"),
                          "grid g: poison_ratio 0.004 of the 100 training images")  # at load, where the size is known
    assert not list((out / "records").glob("*.json"))


def test_record_files_that_are_not_records_are_skipped_and_reported(tmp_path):
    records = tmp_path / "out" / "records"
    records.mkdir(parents=True)
    (records / "a.json").write_text("[1, 2]")
    (records / "b.json").write_text("3")
    (records / "c.json").write_text("[" * 100_000 + "]" * 100_000)
    (records / "d.json").mkdir()
    assert list(Store(tmp_path / "out").records()) == []
    result = invoke("status", "--results", str(tmp_path / "out"))
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output


def test_a_corrupt_file_under_cache_inputs_is_written_again_not_a_crash(tmp_path):
    store = Store(tmp_path / "out")
    images = np.zeros((3, 8, 8, 3), np.uint8)
    path = store.save_input(images)
    path.write_bytes(b"PK\x03\x04 not a zip")
    assert store.save_input(images) == path
    assert np.array_equal(np.load(path)["x_train"], images)


# --- bundles ---------------------------------------------------------------------------------------

def a_bundle(tmp_path: Path, tiny_npz: Path) -> Path:
    """A bundle converted from an .npz release of tiny_npz's images, 2/255 brighter: it verifies."""
    clean = np.load(tiny_npz)["x_train"]
    np.savez(tmp_path / "release.npz", x_train=np.clip(clean.astype(np.int16) + 2, 0, 255).astype(np.uint8))
    bundle = tmp_path / "bundle"
    convert_release(tmp_path / "release.npz", bundle, fmt="npz", data=str(tiny_npz), attack="shift", norm="linf",
                    eps=8 / 255)
    return bundle


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, body in members.items():
            z.writestr(name, body)
    return buffer.getvalue()


def rewrite_images(bundle: Path, payload: bytes) -> None:
    """New images.npz bytes, the manifest's hash made to match (so only the content is wrong)."""
    import hashlib

    (bundle / "images.npz").write_bytes(payload)
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "sha256": hashlib.sha256(payload).hexdigest()}))


def test_a_corrupt_zip_inside_a_bundle_is_one_line(tmp_path, tiny_npz):
    bundle = a_bundle(tmp_path, tiny_npz)
    rewrite_images(bundle, b"PK\x03\x04" + b"\0" * 200)
    assert_one_line_error(invoke("poison", "verify", str(bundle)),
                          f"{bundle / 'images.npz'}: not a readable .npz (a zip of .npy arrays)")


MANIFEST_FAULTS = {  # field -> (a wrong value, what the line says it must be); the first four passed verify before
    "seed": ("zero", "a whole number from 0, or null"),
    "split_size": (200.0, "a whole number from 1"),
    "attack_config": ([1, 2], "a JSON object"),
    "provenance": (5, "a JSON object"),
    "measured": ([1], "a JSON object of finite numbers >= 0"),
    "budget": (True, "a finite number >= 0"),
    "image_shape": ("32,32,3", "a list of 3 whole numbers from 1 (H, W, C)"),
}


def test_mistyped_and_deeply_nested_manifest_fields_are_one_line(tmp_path, tiny_npz):
    bundle = a_bundle(tmp_path, tiny_npz)
    assert invoke("poison", "verify", str(bundle)).exit_code == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    for field, (value, allowed) in MANIFEST_FAULTS.items():
        (bundle / "manifest.json").write_text(json.dumps({**manifest, field: value}))
        assert_one_line_error(invoke("poison", "verify", str(bundle)), f"manifest field {field} must be {allowed}, got")
    deep: dict = {}
    for _ in range(200):
        deep = {"a": deep}
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "attack_config": deep}))
    assert_one_line_error(invoke("poison", "verify", str(bundle)), "manifest field attack_config is nested more than")
    (bundle / "manifest.json").write_text(json.dumps(manifest)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_one_line_error(invoke("poison", "verify", str(bundle)), "unreadable manifest (nested more than")


# --- what recurs is not retried; debris is cleaned; files keep the umask ---------------------------

def test_a_bad_input_file_fails_its_cell_at_once_instead_of_being_retried(tmp_path, tiny_npz):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["external"], extra=f'[config.external]\npath = "{tmp_path / "bad.npz"}"')
    out = tmp_path / "out"
    result = run(grid, out, "--retries", "3")
    assert result.exit_code == 1
    [record] = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert record["attempts"] == 1 and record["error"]["type"] == "ConfigError"
    assert "bad.npz: not a readable .npz" in record["error"]["message"]


KILLED_DECODE = """
import sys, time
from pathlib import Path
from bench.imagefolder import FolderSet
slow = FolderSet.decode_one
def decode_one(self, path):
    if path.name == "1.png":
        time.sleep(600)  # killed here, mid-decode
    return slow(self, path)
FolderSet.decode_one = decode_one
FolderSet(Path(sys.argv[1]), 8, Path(sys.argv[2])).load()
"""


def test_a_decode_killed_midway_leaves_a_partial_folder_that_the_next_run_removes(tmp_path):
    folder, caches = image_folder(tmp_path / "set"), tmp_path / "folders"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_DECODE, str(folder), str(caches)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not list(caches.glob("*.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [left] = list(caches.glob("*.partial-*"))
    assert left.name.endswith(f".partial-{socket.gethostname()}-{proc.pid}")
    other_host = caches / f"set-8px-0.partial-elsewhere-{proc.pid}"  # a pid of another host says nothing here
    other_host.mkdir()
    alive = caches / f"set-8px-1.partial-{socket.gethostname()}-{os.getpid()}"
    alive.mkdir()
    x_train, *_ = FolderSet(folder, 8, caches).load()
    assert len(x_train) == 4 and not left.exists() and other_host.exists() and alive.exists()
    left.mkdir()  # and a load that decodes nothing, its cache made, removes them too
    FolderSet(folder, 8, caches).load()
    assert not left.exists()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_bundles_and_records_get_the_users_umask_not_0600(tmp_path, tiny_npz, mask):
    old = os.umask(mask)
    try:
        bundle = a_bundle(tmp_path, tiny_npz)
        store = Store(tmp_path / "out")
        store.save_poison("k", np.zeros((2, 3, 8, 8), np.uint8), {"norm": "linf", "budget": 0.0})
    finally:
        os.umask(old)
    for path in (bundle / "images.npz", bundle / "manifest.json", store.poisons_dir / "k.npy"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path

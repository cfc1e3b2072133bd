"""CIFAR-100, SVHN and image folders through the real loading code, on small synthetic files in
each real on-disk format (nothing downloads), and every plugin on 100 classes of 64x64 images."""
from __future__ import annotations

import json
import logging
import os
import pickle
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bench import data as data_mod
from bench.cell import CellSpec
from bench.config import ConfigError, as_dict
from bench.context import RunContext
from bench.data import DataSpec, DataUnavailable, ImageSet, load_dataset
from bench.imagefolder import FolderSet
from bench.registry import ARCHS, ATTACKS, DEFENSES
from bench.train import RECIPES, Recipe, Trainer, train_model
from defenses.base import create_defense
from methods.base import SurrogateConfig, check_budget
from test_attacks import attack_overrides


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """An empty data root, no offline copies named, and torchvision unable to download anything."""
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("BENCH_DATA_ROOT", str(root))
    for env in (s.env for s in data_mod.TORCHVISION_SETS.values()):
        monkeypatch.delenv(env, raising=False)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    for cls in ("CIFAR10", "CIFAR100", "SVHN"):
        monkeypatch.setattr(f"torchvision.datasets.{cls}", offline)
    data_mod.clear_cache()
    yield root
    data_mod.clear_cache()


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar100(root, n_train=300, n_test=200, seed=0):
    """torchvision's `cifar-100-python/` layout: pickled dicts of (N, 3072) channel-major rows."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = rng.permutation(np.arange(n) % 100)
        _pickle(root / "cifar-100-python" / split, {"data": x.transpose(0, 3, 1, 2).reshape(n, -1), "fine_labels": fine.tolist(),
                                                    "coarse_labels": (fine // 5).tolist(), "filenames": [f"{i}.png" for i in range(n)]})
        arrays[split] = (x, fine)
    names = [f"fine{i:02d}" for i in range(100)]
    _pickle(root / "cifar-100-python" / "meta", {"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]})
    return arrays, names


def write_svhn(root, n_train=40, n_test=20, seed=0):
    """SVHN's `train_32x32.mat` / `test_32x32.mat`: X is (32, 32, 3, N), y (N, 1) with 10 for the digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        digits = np.arange(n) % 10
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)})
        arrays[split] = (x, digits)
    return arrays


def test_cifar100_is_read_from_torchvisions_files_with_its_fine_labels(data_root):
    arrays, names = write_cifar100(data_root)
    ds = load_dataset(DataSpec(name="cifar100"))
    assert ds.classes == tuple(names) and ds.train.num_classes == 100
    for split, part in (("train", ds.train), ("test", ds.test)):
        x, fine = arrays[split]
        assert np.array_equal(part.images.numpy(), x.transpose(0, 3, 1, 2))
        assert np.array_equal(part.labels.numpy(), fine)
    sub = load_dataset(DataSpec(name="cifar100", train_size=200, test_size=100))
    assert np.bincount(sub.train.labels.numpy()).tolist() == [2] * 100


def test_cifar10_is_read_from_torchvisions_files_by_the_same_reader(data_root):
    rng = np.random.default_rng(1)
    folder = data_root / "cifar-10-batches-py"
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10
        _pickle(folder / name, {"data": x.transpose(0, 3, 1, 2).reshape(20, -1), "labels": y.tolist()})
        xs.append(x), ys.append(y)
    _pickle(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                      "horse", "ship", "truck"]})
    ds = load_dataset(DataSpec(name="cifar10"))
    assert len(ds.train) == 100 and len(ds.test) == 20 and ds.classes[0] == "airplane"
    assert np.array_equal(ds.train.images.numpy(), np.concatenate(xs[:5]).transpose(0, 3, 1, 2))
    assert np.array_equal(ds.test.labels.numpy(), ys[5])


def test_svhn_is_read_from_its_mat_files_with_10_as_the_digit_0(data_root):
    arrays = write_svhn(data_root)
    ds = load_dataset(DataSpec(name="svhn"))
    assert ds.classes == tuple(map(str, range(10)))
    for split, part in (("train", ds.train), ("test", ds.test)):
        x, digits = arrays[split]
        assert np.array_equal(part.images.numpy(), x.transpose(0, 3, 1, 2))
        assert np.array_equal(part.labels.numpy(), digits)
    assert 0 in ds.train.labels.tolist() and ds.train.labels.max() == 9


@pytest.mark.parametrize("name", ["cifar100", "svhn"])
def test_an_offline_npz_named_by_its_variable_comes_first(data_root, tiny_npz, monkeypatch, name):
    monkeypatch.setenv(data_mod.TORCHVISION_SETS[name].env, str(tiny_npz))
    ds = load_dataset(DataSpec(name=name))
    assert np.array_equal(ds.train.images.numpy(), np.load(tiny_npz)["x_train"].transpose(0, 3, 1, 2))


@pytest.mark.parametrize("name,variable,files", [("cifar100", "BENCH_CIFAR100", "cifar-100-python"),
                                                 ("svhn", "BENCH_SVHN", "train_32x32.mat")])
def test_a_missing_set_that_cannot_download_says_what_to_do(data_root, name, variable, files):
    with pytest.raises(DataUnavailable, match=rf"{files}.*\n.*{variable}=/path/to/{name}.npz"):
        load_dataset(DataSpec(name=name))


def test_a_cifar_file_that_would_run_code_is_refused(data_root):
    write_cifar100(data_root, n_train=100, n_test=100)
    (data_root / "cifar-100-python" / "train").write_bytes(pickle.dumps({"data": os.getcwd}))  # a callable, by reference
    with pytest.raises(ConfigError, match=r"not CIFAR-100's torchvision layout .*refusing posix.getcwd"):
        load_dataset(DataSpec(name="cifar100"))


# --- image folders ---

def write_folder(root, classes=("cat", "dog"), per_class=(3, 2), sizes=((40, 30), (32, 32), (20, 50))):
    """train/ and test/ of PNGs and JPGs of the given (width, height) sizes; returns the files in load order."""
    rng = np.random.default_rng(0)
    files = {}
    for split, count in zip(("train", "test"), per_class):
        files[split] = []
        for c in classes:
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                path = root / split / c / (f"{i}.png" if i % 2 == 0 else f"{i}.JPG")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
                files[split].append(path)
            files[split].sort()
    return files


def reference_decode(path, size):
    """What the folder loader promises: torchvision's Resize(size) and CenterCrop(size) on the RGB image."""
    from torchvision import transforms

    with Image.open(path) as im:
        return np.asarray(transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])(im.convert("RGB")))


def test_a_folder_is_decoded_once_resized_and_cropped_then_memory_mapped(tmp_path, data_root, monkeypatch):
    files = write_folder(tmp_path / "pets")
    spec = DataSpec(name=f"folder:{tmp_path / 'pets'}", image_size=16)
    ds = load_dataset(spec)
    reference = ds.train.with_images(ds.train.images.clone())
    assert ds.classes == ("cat", "dog") and ds.train.images.shape == (6, 3, 16, 16) and len(ds.test) == 4
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for i, path in enumerate(files["train"]):
        assert np.array_equal(ds.train.images[i].permute(1, 2, 0).numpy(), reference_decode(path, 16)), path
    (cache,) = (data_root / "folders").iterdir()
    assert cache.name.startswith("pets-16px-")
    x_train, *_ = FolderSet(tmp_path / "pets", 16, data_root / "folders").load()
    assert isinstance(x_train, np.memmap)

    def no_decoding(self, path):
        raise AssertionError(f"decoded {path} again")

    with monkeypatch.context() as m:
        m.setattr(FolderSet, "decode_one", no_decoding)
        again = load_dataset(spec)
        assert torch.equal(again.train.images, ds.train.images) and again.fingerprint == ds.fingerprint
        again.train.images[0] ^= 255  # copy-on-write: a change in memory never reaches the cache file
        assert torch.equal(load_dataset(spec).train.images, reference.images)

    time.sleep(0.01)
    write_folder(tmp_path / "pets", sizes=((33, 33),))  # the same names, new contents: another cache
    changed = load_dataset(spec)
    assert changed.fingerprint != ds.fingerprint and len(list((data_root / "folders").iterdir())) == 2
    assert not torch.equal(changed.train.images, reference.images)
    assert load_dataset(DataSpec(name=spec.name, image_size=8)).train.images.shape == (6, 3, 8, 8)


def test_a_folder_with_val_and_nested_images_loads_like_tiny_imagenet(tmp_path, data_root):
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            path = tmp_path / "tiny" / split / c / "images" / f"{c}_0.JPEG"
            path.parent.mkdir(parents=True)
            Image.fromarray(np.full((64, 64, 3), 7 if c == "n01" else 200, np.uint8)).save(path)
        (tmp_path / "tiny" / split / "n01" / "n01_boxes.txt").write_text("not an image")
    ds = load_dataset(DataSpec(name=f"folder:{tmp_path / 'tiny'}", image_size=64))
    assert ds.classes == ("n01", "n02") and ds.test.labels.tolist() == [0, 1]
    assert abs(int(ds.test.images[1].float().mean()) - 200) <= 2  # JPEG of a flat image, not resized


@pytest.mark.parametrize("breakage,message", [
    ("no_test", r"no test/ \(or val/\) folder beside train/"),
    ("class_mismatch", r"test/ must have the class folders of train/; missing in test/: \['dog'\], not in train/: \['dgo'\]"),
    ("unreadable", r"cannot read image .*train/cat/0.png"),
    ("empty_class", r"train/dog holds no .png/.jpg/.jpeg image"),
    ("one_class", r"train/ has 1 class folder"),
])
def test_a_bad_folder_is_one_error_naming_what_is_wrong(tmp_path, data_root, breakage, message):
    root = tmp_path / "set"
    write_folder(root)
    if breakage == "no_test":
        os.rename(root / "test", root / "testing")
    elif breakage == "class_mismatch":
        os.rename(root / "test" / "dog", root / "test" / "dgo")
    elif breakage == "unreadable":
        (root / "train" / "cat" / "0.png").write_bytes(b"\x89PNG truncated")
    elif breakage == "empty_class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    else:
        for split in ("train", "test"):
            os.rename(root / split / "dog", tmp_path / f"dog_{split}")
    with pytest.raises(ConfigError, match=message) as err:
        load_dataset(DataSpec(name=f"folder:{root}", image_size=16))
    assert f"folder:{root}" in str(err.value)
    assert not list(data_root.glob("folders/*")), "a failed decode leaves no cache behind"


def test_image_size_is_for_folders_and_a_folder_needs_one():
    with pytest.raises(ConfigError, match=r"data.image_size: a folder dataset needs the side"):
        DataSpec(name="folder:/x")
    with pytest.raises(ConfigError, match=r"data.image_size: only folder datasets are resized; 'cifar10'"):
        DataSpec(name="cifar10", image_size=64)
    with pytest.raises(ConfigError, match=r"data.image_size: must be at least 8"):
        DataSpec(name="folder:/x", image_size=4)
    with pytest.raises(ConfigError, match=r"no such folder"):
        load_dataset(DataSpec(name="folder:/nonexistent/set", image_size=32))


def test_image_size_is_left_out_of_ids_unset_and_in_them_set():
    plain = CellSpec(DataSpec(), "clean", {}, "none", {}, "tiny_cnn", {}, RECIPES["cpu_smoke"], "cpu_smoke", 0)
    assert "image_size" not in as_dict(plain)["data"]
    folder = CellSpec(DataSpec(name="folder:/a", image_size=32), "clean", {}, "none", {}, "tiny_cnn", {},
                      RECIPES["cpu_smoke"], "cpu_smoke", 0)
    other = CellSpec(DataSpec(name="folder:/a", image_size=64), "clean", {}, "none", {}, "tiny_cnn", {},
                     RECIPES["cpu_smoke"], "cpu_smoke", 0)
    assert as_dict(folder)["data"]["image_size"] == 32
    assert folder.cell_id != other.cell_id and folder.poison_key != other.poison_key


def test_a_grid_on_a_folder_runs_end_to_end_and_its_records_name_the_data(tmp_path, data_root):
    from bench.cli import main

    write_folder(tmp_path / "pets", per_class=(8, 4), sizes=((24, 20), (16, 16)))
    grid = tmp_path / "g.toml"
    grid.write_text('attacks = ["clean", "random_noise"]\ndefenses = ["none"]\narchs = ["tiny_cnn"]\n'
                    'recipe = {preset = "cpu_smoke", epochs = 1, batch_size = 8}\n'
                    f'[data]\nname = "folder:{tmp_path / "pets"}"\nimage_size = 16\n[config.tiny_cnn]\nwidth = 8\n')
    result = CliRunner().invoke(main, ["run", "--grid", str(grid), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "records").glob("*.json")]
    assert len(records) == 2 and {r["status"] for r in records} == {"done"}
    fingerprint = load_dataset(DataSpec(name=f"folder:{tmp_path / 'pets'}", image_size=16)).fingerprint
    for r in records:
        assert r["spec"]["data"] == {"name": f"folder:{tmp_path / 'pets'}", "train_size": None, "test_size": None,
                                     "subset_seed": 0, "image_size": 16}
        assert r["data_fingerprint"] == fingerprint
    metas = [json.loads(p.read_text()) for p in (tmp_path / "out" / "cache" / "poisons").glob("*.json")]
    assert metas and all(m["data"]["image_size"] == 16 and m["data_fingerprint"] == fingerprint for m in metas)


def test_training_from_the_memory_mapped_cache_equals_training_from_memory(tmp_path, data_root):
    write_folder(tmp_path / "pets", per_class=(16, 4), sizes=((16, 16),))
    ds = load_dataset(DataSpec(name=f"folder:{tmp_path / 'pets'}", image_size=16))
    recipe = Recipe(epochs=1, batch_size=8, lr=0.05)
    results = []
    for train in (ds.train, ds.train.with_images(ds.train.images.clone())):
        torch.manual_seed(0)
        model = ARCHS.create("tiny_cnn", {"width": 8}, num_classes=2)
        results.append(train_model(model, train, ds.test, recipe, seed=0))
    assert [h["loss"] for h in results[0].history] == [h["loss"] for h in results[1].history]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the host-to-device path needs a GPU")
def test_a_set_on_the_host_trains_on_the_gpu_in_batches_as_one_on_the_gpu():
    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(64) % 4,
                     torch.arange(64), 4, 64)
    losses = []
    for where in (train, train.to("cuda")):
        torch.manual_seed(0)
        model = ARCHS.create("tiny_cnn", {"width": 8}, num_classes=4)
        trainer = Trainer(model, where, Recipe(epochs=1, batch_size=16, bf16=False), device="cuda")
        losses.append(trainer.epoch()[0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# --- every plugin on 100 classes of 64x64 images ---

@pytest.fixture(scope="module")
def wide_set() -> ImageSet:
    """100 random 64x64 images of 100 classes, one each."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (100, 3, 64, 64), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.arange(100), torch.arange(100), 100, 100)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_takes_100_classes_of_64px_images(name, wide_set, tmp_path):
    overrides = attack_overrides(name, tmp_path, wide_set)
    if issubclass(ATTACKS.get(name).Config, SurrogateConfig):
        overrides = {**overrides, "surrogate_width": 4}  # what is checked here is shapes and classes, not strength
    poison = ATTACKS.create(name, overrides)(wide_set, RunContext(seed=0))
    assert poison.images.shape == wide_set.images.shape and poison.images.dtype == torch.uint8
    assert check_budget(wide_set.images, poison) <= poison.budget + 1e-6


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_takes_100_classes_of_64px_images(name, wide_set):
    torch.manual_seed(0)
    x, y = wide_set.images[:16], wide_set.labels[:16]
    defense = create_defense(name, {}, num_classes=100)
    assert defense.prepare(x, y).shape == x.shape and defense.prepare_test(x).shape == x.shape
    floats, labels = defense.augment(x.float() / 255, y)
    assert floats.shape == x.shape and (labels.shape == (16,) or labels.shape == (16, 100))
    if defense.adversary is not None:
        model = ARCHS.create("tiny_cnn", {"width": 8}, num_classes=100).train()
        assert defense.adversary(model, floats, y).shape == x.shape


@pytest.mark.parametrize("name", ARCHS.names())
def test_every_arch_takes_100_classes_of_64px_images(name, wide_set):
    config = {"image_size": 64} if name == "vit_small" else {}
    model = ARCHS.create(name, config, num_classes=100).eval()
    with torch.no_grad():
        features = model.features(wide_set.images[:1].float() / 255)  # the pooling a 64-pixel input meets
        assert features.shape == (1, model.feature_dim) and model.classifier(features).shape == (1, 100)


def test_vit_small_on_64px_without_its_image_size_is_one_error_at_preflight(tmp_path, data_root):
    from bench.runner import preflight

    write_folder(tmp_path / "pets", sizes=((64, 64),))
    spec = DataSpec(name=f"folder:{tmp_path / 'pets'}", image_size=64)
    cell = CellSpec(spec, "clean", {}, "none", {}, "vit_small", {}, RECIPES["cpu_smoke"], "cpu_smoke", 0)
    with pytest.raises(ConfigError, match=r"arch vit_small: cannot take the 3x64x64 images .*Expected 32 but got 64"):
        preflight([cell])


def test_ops_refuses_more_classes_than_distinct_pixel_colour_pairs():
    n = 8 * 8 * 8 + 1  # 8x8 images hold 512 (position, colour) pairs
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = ImageSet(images, torch.arange(n), torch.arange(n), n, n)
    with pytest.raises(ValueError, match=r"ops: 513 classes need more than the 512 distinct \(position, colour\) pairs"):
        ATTACKS.create("ops")(data, RunContext(seed=0))
    grey = ImageSet(images[:10, :1], torch.arange(10) % 2, torch.arange(10), 2, 10)
    with pytest.raises(ValueError, match=r"ops: defined for RGB images"):
        ATTACKS.create("ops")(grey, RunContext(seed=0))


def test_lsp_warns_where_cifars_default_budget_meets_another_size(wide_set, caplog):
    with caplog.at_level(logging.WARNING, logger="bench"):
        ATTACKS.create("lsp")(wide_set, RunContext(seed=0))
    assert "official scaling for 64x64x3 images is eps = 2.61" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bench"):
        ATTACKS.create("lsp", {"eps": 2.61})(wide_set, RunContext(seed=0))
    assert "lsp" not in caplog.text


def test_a_split_goes_on_the_gpu_only_where_it_takes_at_most_a_quarter_of_the_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8_000, 16_000))
    assert data_mod.fits_on("cuda", 2_000) and not data_mod.fits_on("cuda", 2_001)
    assert data_mod.fits_on("cpu", 10**12)  # the host keeps any split, memory-mapped


def test_a_cached_poison_is_served_where_a_host_held_split_lies(tiny_npz, tmp_path):
    """A split kept on the host (too big for the device) gets its cached poison on the host too: the
    worker's device (here `meta`, standing for a GPU) is where training runs, not where sets lie."""
    import torch

    from bench.data import DataSpec, load_dataset
    from bench.grid import parse_grid
    from bench.runner import PoisonSource
    from bench.store import Store

    (cell,) = parse_grid({"attacks": ["random_noise"], "defenses": ["none"], "archs": ["tiny_cnn"],
                          "data": {"name": str(tiny_npz)}}, "g").cells()
    data = load_dataset(DataSpec(name=str(tiny_npz)), "cpu")
    store = Store(tmp_path)
    made, _ = PoisonSource(store, torch.device("cpu")).get(cell, data)
    served, meta = PoisonSource(store, torch.device("meta")).get(cell, data)
    assert meta["cached"] and served.images.device == data.train.device
    assert torch.equal(served.images, made.images)

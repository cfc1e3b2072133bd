import numpy as np
import pytest
import torch

from bench import data as data_mod
from bench.config import ConfigError
from bench.data import DataSpec, DataUnavailable, balanced_subset, load_dataset


def test_balanced_subset_is_balanced_seeded_and_sorted():
    labels = np.repeat(np.arange(10), 100)
    a = balanced_subset(labels, 55, 10, seed=1)
    assert len(a) == 55 and len(set(a)) == 55 and np.all(np.diff(a) > 0)
    counts = np.bincount(labels[a], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(a, balanced_subset(labels, 55, 10, seed=1))
    assert not np.array_equal(a, balanced_subset(labels, 55, 10, seed=2))


def test_subset_larger_than_a_class_is_an_error():
    labels = np.array([0] * 3 + [1] * 10)
    with pytest.raises(ConfigError, match="asked for 5 images of class 0, but the split has only 3"):
        balanced_subset(labels, 10, 2, seed=0)


def test_npz_dataset_loads_as_uint8_nchw_with_index(tiny_npz):
    ds = load_dataset(DataSpec(name=str(tiny_npz), train_size=50, test_size=20))
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (50, 3, 32, 32)
    assert ds.train.split_size == 200 and len(ds.test) == 20
    raw = np.load(tiny_npz)
    idx = ds.train.index.numpy()
    assert np.array_equal(ds.train.images.numpy(), raw["x_train"][idx].transpose(0, 3, 1, 2))
    assert np.array_equal(ds.train.labels.numpy(), raw["y_train"][idx])
    assert np.bincount(ds.train.labels.numpy()).tolist() == [5] * 10


def test_bad_npz_names_the_array(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((4, 32, 32, 3), np.float32), y_train=np.zeros(4), x_test=np.zeros((4, 32, 32, 3), np.uint8), y_test=np.zeros(4))
    with pytest.raises(ConfigError, match=r"x_train must be uint8 \(N, H, W, C\)"):
        load_dataset(DataSpec(name=str(path)))
    np.savez(path, x_train=np.zeros((4, 32, 32, 3), np.uint8))
    data_mod.clear_cache()
    with pytest.raises(ConfigError, match="missing arrays"):
        load_dataset(DataSpec(name=str(path)))


def test_unknown_dataset_and_bad_sizes():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_dataset(DataSpec(name="imagenet"))
    with pytest.raises(ConfigError, match="data.train_size: must be at least 1"):
        DataSpec(train_size=0)


def test_missing_cifar_without_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_CIFAR10", raising=False)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path))
    data_mod.clear_cache()

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", offline)
    with pytest.raises(DataUnavailable, match=r"BENCH_CIFAR10=/path/to/cifar10.npz"):
        load_dataset(DataSpec(name="cifar10"))
    data_mod.clear_cache()


@pytest.mark.slow
def test_real_cifar10_subset(cifar10_npz):
    ds = load_dataset(DataSpec(name=str(cifar10_npz), train_size=1000, test_size=500))
    assert np.bincount(ds.train.labels.numpy()).tolist() == [100] * 10
    assert np.bincount(ds.test.labels.numpy()).tolist() == [50] * 10
    assert ds.train.split_size == 50000
    # The canonical order of CIFAR-10's training labels (README of the offline copy).
    full = np.load(cifar10_npz)["y_train"][:10]
    assert full.tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


def _write(path, x_train=None, y_train=None, x_test=None, y_test=None, **extra):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), "y_train": np.arange(20) % 10,
              "x_test": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), "y_test": np.arange(10) % 10}
    given = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    np.savez(path, **{**arrays, **{k: v for k, v in given.items() if v is not None}, **extra})
    return path


@pytest.mark.parametrize("change,message", [
    ({"y_train": np.arange(20) % 10 + 3}, r"y_train labels run from 3 to 12; they must be 0 to 9 \(the file names 10 classes\)"),
    ({"y_train": np.arange(20) - 1}, r"y_train labels run from -1 to 18"),
    ({"y_train": np.arange(19) % 10}, r"y_train must hold one label per image \(20\), got shape \(19,\)"),
    ({"y_test": (np.arange(10) % 10).astype(np.float32)}, r"y_test must hold whole-number class labels, got float32"),
    ({"x_test": np.zeros((0, 32, 32, 3), np.uint8), "y_test": np.zeros(0, np.int64)}, r"the test split is empty"),
    ({"x_train": np.zeros((20, 4, 4, 3), np.uint8), "x_test": np.zeros((10, 4, 4, 3), np.uint8)},
     r"x_train images are 4x4; the architectures and the random crop need at least 8x8"),
    ({"x_test": np.zeros((10, 16, 16, 3), np.uint8)}, r"train images are \(32, 32, 3\), test images \(16, 16, 3\)"),
    ({"y_train": np.zeros(20, np.int64), "y_test": np.zeros(10, np.int64)}, r"labels name 1 class"),
])
def test_a_dataset_is_checked_on_load_and_the_error_names_the_file(tmp_path, change, message):
    path = _write(tmp_path / "d.npz", **change, classes=np.array([str(i) for i in range(10)]))
    if "labels name 1 class" in message:
        path = _write(tmp_path / "d.npz", **change)  # no class names: the count comes from the labels
    with pytest.raises(ConfigError, match=message) as err:
        load_dataset(DataSpec(name=str(path)))
    assert str(path) in str(err.value)


def test_a_folder_or_a_broken_file_is_not_a_dataset(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(ConfigError, match=r"d.npz: is a folder, not an .npz file"):
        load_dataset(DataSpec(name=str(tmp_path / "d.npz")))
    (tmp_path / "e.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match=r"e.npz: not a readable .npz"):
        load_dataset(DataSpec(name=str(tmp_path / "e.npz")))


def test_the_fingerprint_follows_the_content_not_the_name(tmp_path):
    path = _write(tmp_path / "d.npz")
    first = load_dataset(DataSpec(name=str(path)))
    assert load_dataset(DataSpec(name=str(path))).fingerprint == first.fingerprint
    assert load_dataset(DataSpec(name=str(path), train_size=10)).fingerprint != first.fingerprint  # another subset
    x = np.load(path)["x_train"].copy()
    x[0, 0, 0, 0] ^= 1  # one bit of one pixel
    _write(path, x_train=x)  # the same path, read again by this process
    assert load_dataset(DataSpec(name=str(path))).fingerprint != first.fingerprint

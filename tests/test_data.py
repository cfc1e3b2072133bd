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
    data_mod._load_arrays.cache_clear()
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
    data_mod._load_arrays.cache_clear()

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", offline)
    with pytest.raises(DataUnavailable, match=r"BENCH_CIFAR10=/path/to/cifar10.npz"):
        load_dataset(DataSpec(name="cifar10"))
    data_mod._load_arrays.cache_clear()


@pytest.mark.slow
def test_real_cifar10_subset(cifar10_npz):
    ds = load_dataset(DataSpec(name=str(cifar10_npz), train_size=1000, test_size=500))
    assert np.bincount(ds.train.labels.numpy()).tolist() == [100] * 10
    assert np.bincount(ds.test.labels.numpy()).tolist() == [50] * 10
    assert ds.train.split_size == 50000
    # The canonical order of CIFAR-10's training labels (README of the offline copy).
    full = np.load(cifar10_npz)["y_train"][:10]
    assert full.tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]

"""bench.evaluate: poisoned images from Python -> the CLI's cells, records and store -> a DataFrame.
examples/evaluate.py runs on 200 real CIFAR-10 images; the rest on the random tiny dataset."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bench
from bench import api
from bench.api import KEY_COLUMNS, METRIC_COLUMNS, TRAILING_COLUMNS, EvaluationError
from bench.config import ConfigError
from bench.grid import load_grid
from bench.plugin_files import forget_plugin_files
from bench.store import Store
from broken_plugins import broken_defense

ROOT = Path(__file__).resolve().parent.parent
TINY = {"archs": ["tiny_cnn"], "recipe": {"preset": "cpu_smoke", "epochs": 1}, "config": {"tiny_cnn": {"width": 8}},
        "progress": False}


def example():
    spec = importlib.util.spec_from_file_location("evaluate_example", ROOT / "examples" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def poisoned(data: Path, eps: int = 8) -> tuple[np.ndarray, np.ndarray]:
    images, labels = bench.training_set(str(data))
    return example().classwise_noise(images, labels, eps), labels


def record_count(results: Path) -> int:
    return len(list((results / "records").glob("*.json")))


def test_import_bench_loads_no_torch_and_exports_the_api():
    code = "import sys, bench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["False"]
    assert bench.evaluate is api.evaluate and bench.training_set is api.training_set


def test_the_example_on_real_cifar10_and_a_second_call_trains_nothing(tmp_path, cifar10_npz):
    with np.load(cifar10_npz) as f:
        np.savez(tmp_path / "c200.npz", **{key: f[key][:200] for key in ("x_train", "y_train", "x_test", "y_test")})
    argv = ["--data", str(tmp_path / "c200.npz"), "--train-size", "0", "--test-size", "0", "--epochs", "1",
            "--results", str(tmp_path / "results")]
    first = example().main(argv)
    assert list(first.columns[:8]) == [*KEY_COLUMNS, *METRIC_COLUMNS] and list(first.columns[-5:]) == list(TRAILING_COLUMNS)
    assert len(first) == 4 and set(first.attack) == {"clean", "my_poison"} and set(first.defense) == {"none", "jpeg"}
    assert (first.status == "done").all() and not first.cached.any() and first.test_acc_last.between(0, 1).all()
    assert record_count(tmp_path / "results") == 4
    again = example().main(argv)
    assert again.cached.all() and again.attrs["counts"]["done"] == 0 and record_count(tmp_path / "results") == 4
    assert again.test_acc_last.tolist() == first.test_acc_last.tolist()
    images, labels = bench.training_set(str(tmp_path / "c200.npz"))
    with pytest.raises(ConfigError, match=r"^images: 50 images; the training split of .* has 200"):
        bench.evaluate(images[:50], labels[:50], data=str(tmp_path / "c200.npz"), results=tmp_path / "results", **TINY)


# argument -> what to call evaluate with, from the tiny set's (images, labels): (images, labels, keywords).
BAD_CALLS = {
    "images": lambda x, y: (x.astype(np.float32), y, {}),  # 0..255 as float
    "images ": lambda x, y: (x.astype(np.int32), y, {}),
    "images  ": lambda x, y: (x[:, :16], y, {}),
    "labels": lambda x, y: (x, (y + 1) % 10, {}),
    "labels ": lambda x, y: (x, y.astype(float), {}),
    "eps": lambda x, y: (np.clip(x.astype(np.int16) + 12, 0, 255).astype(np.uint8), y, {}),  # 12/255 > 8/255
    "eps ": lambda x, y: (x, y, {"eps": "8/0"}),
    "norm": lambda x, y: (x, y, {"norm": "linf2"}),
    "data": lambda x, y: (x, y, {"data": {"nmae": "cifar10"}}),
    "config": lambda x, y: (x, y, {"config": {"external": {"eps": 0.1}}}),
    "name": lambda x, y: (x, y, {"name": "em"}),
    "errors": lambda x, y: (x, y, {"errors": "ignore"}),
    "device": lambda x, y: (x, y, {"device": "tpu"}),
}


@pytest.mark.parametrize("argument", list(BAD_CALLS))
def test_a_bad_argument_is_one_error_naming_it_before_anything_is_written(tmp_path, tiny_npz, argument):
    x, y = bench.training_set(str(tiny_npz))
    images, labels, kwargs = BAD_CALLS[argument](x, y)
    with pytest.raises(ConfigError) as err:
        bench.evaluate(images, labels, **{**TINY, "data": str(tiny_npz), **kwargs, "results": tmp_path / "results"})
    assert str(err.value).startswith(argument.strip() + ": "), err.value
    assert not (tmp_path / "results").exists()


def test_nchw_tensors_and_floats_are_the_same_images_and_cells(tmp_path, tiny_npz):
    x, y = poisoned(tiny_npz)
    run = dict(TINY, data=str(tiny_npz), results=tmp_path / "results")
    first = bench.evaluate(x, y, **run)
    as_tensor = bench.evaluate(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y), **run)
    as_float = bench.evaluate(x.astype(np.float32) / 255, y, **run)
    assert not first.cached.any() and as_tensor.cached.all() and as_float.cached.all()
    assert len(list((tmp_path / "results" / "cache" / "inputs").glob("*.npz"))) == 1


def test_more_seeds_resume_and_the_cells_are_a_grid_files(tmp_path, tiny_npz):
    x, y = poisoned(tiny_npz)
    run = dict(TINY, data=str(tiny_npz), results=tmp_path / "results", defenses="jpeg")
    bench.evaluate(x, y, seeds=0, **run)
    frame = bench.evaluate(x, y, seeds=[0, 1], **run)
    assert frame.set_index("seed").cached.to_dict() == {0: True, 1: False}
    # `bench run` on a grid file naming the same file and settings finds these cells done.
    grid = tmp_path / "same.toml"
    grid.write_text(f'attacks = ["external"]\ndefenses = ["jpeg"]\narchs = ["tiny_cnn"]\nseeds = [0, 1]\n'
                    f'recipe = {{preset = "cpu_smoke", epochs = 1}}\n[data]\nname = "{tiny_npz}"\n'
                    f'[config.external]\npath = "{frame.attrs["poison_file"]}"\neps = {8 / 255!r}\n'
                    f'[config.tiny_cnn]\nwidth = 8\n')
    assert sorted(c.cell_id for c in load_grid(str(grid)).cells()) == sorted(frame.cell_id)
    assert {r.grid for r in Store(tmp_path / "results").records()} == {"evaluate"}


BROKEN = broken_defense("broken", "augment(self, x, y)", "broken on purpose", "Fails in every cell.")


def test_a_failed_cell_raises_after_the_others_ran_with_every_row(tmp_path, tiny_npz):
    (tmp_path / "broken.py").write_text(BROKEN)
    x, y = poisoned(tiny_npz)
    run = dict(TINY, data=str(tiny_npz), results=tmp_path / "results", defenses=["none", "broken"],
               plugins=[str(tmp_path / "broken.py")])
    try:
        with pytest.raises(EvaluationError, match=r"1 of 2 cells did not finish; first: external / broken / "
                                                  r"tiny_cnn / seed 0: RuntimeError: broken on purpose") as err:
            bench.evaluate(x, y, **run)
        assert err.value.frame.set_index("defense").status.to_dict() == {"none": "done", "broken": "failed"}
        kept = bench.evaluate(x, y, errors="keep", **run)
        assert kept.set_index("defense").cached.to_dict() == {"none": True, "broken": False}
        assert kept.set_index("defense").error.to_dict()["broken"] == "RuntimeError: broken on purpose"
    finally:
        forget_plugin_files()

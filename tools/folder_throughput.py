"""How fast is a folder dataset's memory-mapped cache beside the same images in memory? (docs/performance.md)

Writes a synthetic image folder (JPEGs of smooth random images, a little larger than the asked
size so that every one is resized and cropped), loads it through `bench.data.load_dataset`
twice (the one-time decode, then the cached load), and times training epochs of the same model
(`bench.train.Trainer.epoch`, the training loop's own steps) on the memory-mapped split and on an
in-memory copy of it, in alternation, so that both see the same machine load. It also times the
data path alone (each batch's gather, crop and flip and conversion to float, no model) on both.
Prints one JSON object.

    PYTHONPATH=. python tools/folder_throughput.py [--images 5000] [--size 64] [--arch tiny_cnn] [--width 16]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.data import DataSpec, load_dataset
from bench.environment import cpu_name
from bench.registry import ARCHS
from bench.train import Recipe, Trainer, random_crop_flip, to_float


def write_folder(root: Path, images: int, classes: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    side = size + size // 8  # resized down and cropped on load, as ImageNet images are
    for split, count in (("train", images), ("test", max(images // 10, classes))):
        for i in range(count):
            low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            image = Image.fromarray(low).resize((side, side), Image.Resampling.BICUBIC)
            path = root / split / f"class{i % classes:03d}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, quality=90)


def data_path_seconds(images: torch.Tensor, recipe: Recipe, g: torch.Generator) -> float:
    """One epoch of the loop's data work alone: gather a batch, crop, flip, to float."""
    start = time.perf_counter()
    order = torch.randperm(len(images), generator=g)
    for i in range(0, len(images), recipe.batch_size):
        to_float(random_crop_flip(images[order[i : i + recipe.batch_size]], recipe.crop_padding, recipe.flip, g),
                 recipe.channels_last)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--arch", default="tiny_cnn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="epochs on each path, alternating")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCH_DATA_ROOT"] = str(Path(tmp) / "root")
        write_folder(Path(tmp) / "set", args.images, args.classes, args.size)
        spec = DataSpec(name=f"folder:{Path(tmp) / 'set'}", image_size=args.size)
        start = time.perf_counter()
        first = load_dataset(spec)
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        mapped = load_dataset(spec).train
        cached_s = time.perf_counter() - start
        in_memory = mapped.with_images(mapped.images.clone())
        total = len(first.train) + len(first.test)

        recipe = Recipe(epochs=args.rounds, batch_size=128, bf16=False)
        paths = {"memory-mapped": mapped, "in memory": in_memory}
        trainers = {}
        for name, split in paths.items():
            torch.manual_seed(0)
            model = ARCHS.create(args.arch, {"width": args.width}, num_classes=split.num_classes)
            trainers[name] = Trainer(model, split, recipe, seed=0)
            trainers[name].epoch()  # warm-up, not counted
        epochs = {name: [] for name in paths}
        data_only = {name: [] for name in paths}
        g = torch.Generator().manual_seed(0)
        for _ in range(args.rounds):
            for name, split in paths.items():
                epochs[name].append(trainers[name].epoch()[2])
                data_only[name].append(data_path_seconds(split.images, recipe, g))
        n = len(mapped)
        print(json.dumps({
            "cpu": cpu_name(), "threads": torch.get_num_threads(), "images": n, "size": args.size,
            "arch": f"{args.arch} width {args.width}", "batch_size": recipe.batch_size, "rounds": args.rounds,
            "decode_images_per_s": round(total / decode_s), "cached_load_s": round(cached_s, 3),
            "train_images_per_s": {k: round(n / statistics.median(v)) for k, v in epochs.items()},
            "data_path_images_per_s": {k: round(n / statistics.median(v)) for k, v in data_only.items()},
            "load_average": os.getloadavg()[0],
        }, indent=1))


if __name__ == "__main__":
    main()

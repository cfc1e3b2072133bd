"""What robust evaluation costs against a training epoch (docs/reports.md, "Robust accuracy", Cost).

For each architecture, one training epoch (`bench.train.Trainer`, the `cpu_smoke` recipe) on N
CIFAR-10 training images and `bench.robust.robust_accuracy` (PGD-20 at 8/255, fp32) on N test
images, back to back, `--repeats` times after a warm-up of each; prints each pair's seconds and
ratio, then the median ratio. A ratio of two paths run in alternation, so a loaded machine slows
both alike; the seconds are not speed figures.

    PYTHONPATH=. python tools/robust_cost.py [--images 1000] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

import bench.archs  # noqa: F401 (registers the architectures)
from bench.data import DataSpec, load_dataset
from bench.registry import ARCHS
from bench.robust import RobustConfig, robust_accuracy
from bench.train import RECIPES, Trainer

VICTIMS = (("tiny_cnn", {"width": 16}), ("resnet18", {"width": 8}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="training images per epoch and test images attacked")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    data = load_dataset(DataSpec("cifar10", train_size=args.images, test_size=args.images), device)
    recipe = replace(RECIPES["cpu_smoke"], epochs=1)
    for arch, arguments in VICTIMS:
        torch.manual_seed(0)
        trainer = Trainer(ARCHS.create(arch, arguments, num_classes=10), data.train, recipe)
        trainer.epoch()  # warm-up of both paths
        robust_accuracy(trainer.model, data.test.take(slice(0, 100)), RobustConfig(), seed=0)
        ratios = []
        for _ in range(args.repeats):
            train_s = trainer.epoch()[2]
            start = time.perf_counter()
            robust_accuracy(trainer.model, data.test, RobustConfig(), seed=0, batch_size=recipe.eval_batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            robust_s = time.perf_counter() - start
            ratios.append(robust_s / train_s)
            print(f"{arch}: epoch {train_s:.2f} s, PGD-20 {robust_s:.2f} s, ratio {ratios[-1]:.2f}", flush=True)
        print(f"{arch}: median ratio {statistics.median(ratios):.2f} (training in {trainer.precision}, PGD in fp32)")


if __name__ == "__main__":
    main()

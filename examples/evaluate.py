"""A poison made in numpy, scored with bench.evaluate: class-wise noise (8/255) on CIFAR-10 under no
defense and JPEG, beside the clean baseline, on a small CNN (a few minutes on a CPU).

    python examples/evaluate.py                    # CIFAR-10: torchvision's copy, or BENCH_CIFAR10=file.npz
    python examples/evaluate.py --data my.npz --train-size 0 --epochs 1

Run it twice: the second run trains nothing (its `cached` column says so).
"""
from __future__ import annotations

import argparse

import numpy as np

import bench


def classwise_noise(images: np.ndarray, labels: np.ndarray, eps: int = 8, seed: int = 0) -> np.ndarray:
    """One uniform pattern in [-eps, eps] (of 255) per class, added to every image of the class."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(-eps, eps + 1, size=(labels.max() + 1, *images.shape[1:]), dtype=np.int16)
    return np.clip(images + patterns[labels], 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10", help="a dataset name or an .npz (default: cifar10)")
    parser.add_argument("--train-size", type=int, default=5000, help="images to train on; 0: the whole split")
    parser.add_argument("--test-size", type=int, default=1000, help="test images; 0: the whole split")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--results", default="results", help="the results folder (bench --results)")
    args = parser.parse_args(argv)

    images, labels = bench.training_set(args.data)  # the clean training split, in the order evaluate wants
    poisoned = classwise_noise(images, labels)
    sizes = {"train_size": args.train_size, "test_size": args.test_size}
    data = {"name": args.data, **{key: size for key, size in sizes.items() if size}}
    frame = bench.evaluate(
        poisoned, labels, name="my_poison", baseline=True, norm="linf", eps="8/255",
        defenses=["none", "jpeg"], archs=["tiny_cnn"], seeds=[0],
        recipe={"preset": "cpu_smoke", "epochs": args.epochs}, data=data,
        config={"tiny_cnn": {"width": 16}}, results=args.results,
    )
    print(frame[["attack", "defense", "arch", "seed", "test_acc_last", "cached"]].to_string(index=False))
    return frame


if __name__ == "__main__":
    main()

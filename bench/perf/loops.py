"""Our training loop beside the conventional one, torch.compile's cost, and one whole cell.

The conventional loop is what EM, REM, TAP and APBench train with: a torchvision `CIFAR10` dataset
of PIL images, `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()` and `ToTensor()` per image
through a `DataLoader`, in fp32 and the default memory format, the same model, batch size and SGD.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import CIFAR10, VisionDataset

from bench.data import DataSpec, ImageSet, load_dataset
from bench.perf.inputs import head
from bench.perf.timing import Windows, alternate, synchronize
from bench.registry import ARCHS
from bench.train import RECIPES, Recipe, Trainer, compile_failure, train_model

# A recipe whose speed is that of every recipe: SGD with momentum and weight decay, crop and flip.
SPEED_RECIPE = Recipe(epochs=1, batch_size=128, lr=0.05, schedule="constant")


class OurLoop:
    """Windows of our training loop (`bench.train.Trainer`, the steps of `train_model`): one epoch over `data` each.

    The model, optimizer and random state persist across windows, as the conventional loop's do;
    a window is the epoch's training steps alone, ending on its one synchronisation.
    """

    def __init__(self, arch: str, data: ImageSet, recipe: Recipe = SPEED_RECIPE):
        torch.manual_seed(0)
        self.model = ARCHS.create(arch, num_classes=data.num_classes)
        self.trainer = Trainer(self.model, data, recipe)

    def __call__(self) -> float:
        return self.trainer.epoch()[2]


class InMemoryCIFAR10(CIFAR10):
    """torchvision's `datasets.CIFAR10` over images already in memory (the original reads its pickled batches).

    Only the file reading is skipped: `__getitem__`, `__len__` and the transforms are torchvision's
    own (`Image.fromarray` of an HWC uint8 array, then the transform, per image).
    """

    def __init__(self, data: ImageSet, transform: Callable | None):
        VisionDataset.__init__(self, root="", transform=transform)  # CIFAR10.__init__ would read files
        self.train = True
        self.data = np.ascontiguousarray(data.images.cpu().numpy().transpose(0, 2, 3, 1))
        self.targets = data.labels.cpu().tolist()


def conventional_transform(recipe: Recipe) -> transforms.Compose:
    steps = [transforms.RandomCrop(32, padding=recipe.crop_padding)] if recipe.crop_padding else []
    steps += [transforms.RandomHorizontalFlip()] if recipe.flip else []
    return transforms.Compose([*steps, transforms.ToTensor()])


class ConventionalLoop:
    """The training loop of the official repositories and APBench, for comparison with ours.

    PIL transforms per image in `num_workers` DataLoader workers (0: in this process), fp32, the
    default memory format, the same model, batch size and SGD as `OurLoop`.
    """

    def __init__(self, arch: str, data: ImageSet, recipe: Recipe = SPEED_RECIPE, num_workers: int = 0):
        torch.manual_seed(0)
        self.device = data.device
        self.model = ARCHS.create(arch, num_classes=data.num_classes).to(self.device)
        self.recipe = recipe
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                         weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
        self.loader = DataLoader(InMemoryCIFAR10(data, conventional_transform(recipe)), batch_size=recipe.batch_size,
                                 shuffle=True, num_workers=num_workers, pin_memory=self.device.type == "cuda",
                                 persistent_workers=num_workers > 0)

    def __call__(self) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        self.model.train()
        for images, labels in self.loader:
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            loss = F.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad()
            loss.backward()
            if self.recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
            self.optimizer.step()
        synchronize(self.device)
        return time.perf_counter() - start


def training_throughput(arch: str, data: ImageSet, repeats: int, num_workers: int = 0,
                        recipe: Recipe = SPEED_RECIPE) -> dict[str, Windows]:
    """Our loop and the conventional one on `data`, alternating window by window."""
    contenders = {"ours": OurLoop(arch, data, recipe),
                  "conventional": ConventionalLoop(arch, data, recipe, num_workers)}
    return alternate(contenders, len(data), repeats)


def compile_cost(arch: str, data: ImageSet, epochs: int = 3, recipe: Recipe = SPEED_RECIPE) -> dict:
    """Steady-state images/s and first-epoch overhead of our loop, eager and with torch.compile.

    Where torch.compile cannot build code on this machine, "compiled" holds only why (`unavailable`):
    `train_model` would fall back to eager and its figures would be eager ones under another name.
    """
    def steady_and_first(compile: bool) -> dict:
        torch.manual_seed(0)
        model = ARCHS.create(arch, num_classes=data.num_classes)
        result = train_model(model, data, head(data, 8), replace(recipe, epochs=epochs), compile=compile)
        return {"images_per_second": result.images_per_second, "first_epoch_overhead_s": result.compile_seconds}

    failure = compile_failure(data.device.type)
    return {"eager": steady_and_first(False),
            "compiled": steady_and_first(True) if failure is None else {"unavailable": failure}}


def full_cell(device: torch.device, data: DataSpec = DataSpec(), arch: str = "resnet18",
              recipe: Recipe = RECIPES["em60"], on_epoch: Callable[[dict], None] | None = None) -> dict:
    """One 60-epoch ResNet-18 cell (the em60 recipe) on all of CIFAR-10, clean data: wall time and accuracy.
    `data`, `arch` and `recipe` shrink it for a check that it runs; `on_epoch` gets each epoch's record."""
    loaded = load_dataset(data, device)
    torch.manual_seed(0)
    start = time.perf_counter()
    result = train_model(ARCHS.create(arch, num_classes=loaded.train.num_classes), loaded.train, loaded.test, recipe,
                         on_epoch=on_epoch)
    return {"seconds": time.perf_counter() - start, "test_acc_last": result.test_acc_last,
            "images_per_second": result.images_per_second, "precision": result.precision}

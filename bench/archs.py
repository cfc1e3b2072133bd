"""CIFAR architectures: every model takes images in [0, 1] and exposes its penultimate features.

`model.features(x)` returns the (N, D) penultimate representation used by MI-UE and the
mutual-information analysis; `model(x)` is `model.classifier(model.features(x))`. Inputs are
not normalised, as in the evaluation code of EM, APBench, OPS and LSP (`ToTensor()` only); a model
that needs normalisation (MI-UE's surrogate) passes `mean` and `std` to `Classifier`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bench.registry import register_arch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """(Optional input normalisation) -> feature extractor -> linear head."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, mean=None, std=None):
        super().__init__()
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.body = body
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std if self.normalize else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


def _resnet(block: type, layers: list[int], num_classes: int) -> Classifier:
    # CIFAR stem (He et al. 2016, Sec. 4.2 variant used by EM/REM/TAP/MI-UE): 3x3 conv, no max-pool.
    modules: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    in_planes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        for j in range(blocks):
            modules.append(block(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
            in_planes = planes * block.expansion
    modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*modules), in_planes, num_classes)


PAPER_RESNET = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
PAPER_VGG = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015"


@register_arch("resnet18", paper=PAPER_RESNET)
def resnet18(num_classes: int = 10) -> Classifier:
    """ResNet-18 with the CIFAR stem (3x3 first conv, no max-pool); 512-d features."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes)


@register_arch("resnet34", paper=PAPER_RESNET)
def resnet34(num_classes: int = 10) -> Classifier:
    """ResNet-34 with the CIFAR stem; 512-d features."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes)


@register_arch("resnet50", paper=PAPER_RESNET)
def resnet50(num_classes: int = 10) -> Classifier:
    """ResNet-50 (bottleneck blocks) with the CIFAR stem; 2048-d features."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes)


VGG_LAYOUTS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _vgg(layout: list, num_classes: int) -> Classifier:
    # CIFAR VGG with batch norm: five pools take 32x32 to 1x1, one linear head on 512-d features.
    modules: list[nn.Module] = []
    in_channels = 3
    for item in layout:
        if item == "M":
            modules.append(nn.MaxPool2d(2))
        else:
            modules += [nn.Conv2d(in_channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            in_channels = item
    modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*modules), in_channels, num_classes)


def _register_vgg(name: str, depth: int) -> None:
    def build(num_classes: int = 10) -> Classifier:
        return _vgg(VGG_LAYOUTS[name], num_classes)

    build.__doc__ = f"VGG-{depth} with batch norm for 32x32 inputs; 512-d features."
    build.__name__ = name
    register_arch(name, paper=PAPER_VGG)(build)


for _name, _depth in (("vgg11", 11), ("vgg13", 13), ("vgg16", 16), ("vgg19", 19)):
    _register_vgg(_name, _depth)


@register_arch("tiny_cnn", paper="")
def tiny_cnn(num_classes: int = 10, width: int = 32) -> Classifier:
    """A four-conv CNN for tests and the CPU smoke grid (about 0.3M parameters); 4*width-d features."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    body = nn.Sequential(
        *block(3, width), nn.MaxPool2d(2),
        *block(width, 2 * width), nn.MaxPool2d(2),
        *block(2 * width, 4 * width), nn.MaxPool2d(2),
        *block(4 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return Classifier(body, 4 * width, num_classes)

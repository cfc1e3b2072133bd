"""CIFAR architectures: every model takes images in [0, 1] and exposes its penultimate features.

`model.features(x)` returns the (N, D) penultimate representation used by MI-UE and the
mutual-information analysis; `model(x)` is `model.classifier(model.features(x))`. Inputs are
not normalised, as in the evaluation code of EM, APBench, OPS and LSP (`ToTensor()` only); a model
that needs normalisation (MI-UE's surrogate) calls `Classifier.normalize_inputs(mean, std)`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bench.config import ConfigError
from bench.registry import register_arch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """(Optional input normalisation) -> feature extractor -> linear head."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.normalize = False
        self.body = body
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def normalize_inputs(self, mean: tuple[float, ...], std: tuple[float, ...]) -> Classifier:
        """Standardise inputs per channel inside the model, before the body (MI-UE's surrogate)."""
        device = self.classifier.weight.device
        self.register_buffer("mean", torch.tensor(mean, device=device).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, device=device).view(1, -1, 1, 1))
        self.normalize = True
        return self

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


def _resnet(block: type, layers: list[int], num_classes: int, width: int = 64) -> Classifier:
    # CIFAR stem (He et al. 2016, Sec. 4.2 variant used by EM/REM/TAP/MI-UE): 3x3 conv, no max-pool.
    # `width` is the first stage's channels (64 in the paper); the stages double it, as the paper's do.
    require_width(width)
    modules: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    in_planes = width
    for i, blocks in enumerate(layers):
        planes = width * 2**i
        for j in range(blocks):
            modules.append(block(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
            in_planes = planes * block.expansion
    modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*modules), in_planes, num_classes)


def require_width(width: int) -> None:
    # A ConfigError, not a crash inside nn.Conv2d, so a grid with a bad width fails on load.
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"width: must be a whole number of channels >= 1, got {width!r}")


PAPER_RESNET = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
PAPER_VGG = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015"


@register_arch("resnet10", display="ResNet-10", paper=PAPER_RESNET)
def resnet10(num_classes: int = 10,
             width: int = 64,  # channels of the first stage (the paper's 64); every later layer keeps its ratio to it
             ) -> Classifier:
    """ResNet-10 (one basic block per stage) with the CIFAR stem; 8*width-d features (512 at width 64)."""
    return _resnet(BasicBlock, [1, 1, 1, 1], num_classes, width)


@register_arch("resnet18", display="ResNet-18", paper=PAPER_RESNET)
def resnet18(num_classes: int = 10,
             width: int = 64,  # channels of the first stage (the paper's 64); every later layer keeps its ratio to it
             ) -> Classifier:
    """ResNet-18 with the CIFAR stem (3x3 first conv, no max-pool); 8*width-d features (512 at the paper's width 64)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, width)


@register_arch("resnet26", display="ResNet-26", paper=PAPER_RESNET)
def resnet26(num_classes: int = 10,
             width: int = 64,  # channels of the first stage (the paper's 64); every later layer keeps its ratio to it
             ) -> Classifier:
    """ResNet-26 (three basic blocks per stage: between ResNet-18 and -34) with the CIFAR stem; 8*width-d features."""
    return _resnet(BasicBlock, [3, 3, 3, 3], num_classes, width)


@register_arch("resnet34", display="ResNet-34", paper=PAPER_RESNET)
def resnet34(num_classes: int = 10,
             width: int = 64,  # channels of the first stage (the paper's 64); every later layer keeps its ratio to it
             ) -> Classifier:
    """ResNet-34 with the CIFAR stem; 8*width-d features (512 at width 64)."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, width)


@register_arch("resnet50", display="ResNet-50", paper=PAPER_RESNET)
def resnet50(num_classes: int = 10,
             width: int = 64,  # channels of the first stage (the paper's 64); every later layer keeps its ratio to it
             ) -> Classifier:
    """ResNet-50 (bottleneck blocks) with the CIFAR stem; 32*width-d features (2048 at width 64)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, width)


VGG_LAYOUTS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _vgg(layout: list, num_classes: int, width: int = 64) -> Classifier:
    # CIFAR VGG with batch norm: five pools take 32x32 to 1x1, one linear head on the last conv's features.
    # `width` is the first block's channels (64 in the paper); every layer keeps the paper's ratio to it.
    require_width(width)
    modules: list[nn.Module] = []
    in_channels = 3
    for item in layout:
        if item == "M":
            modules.append(nn.MaxPool2d(2))
        else:
            channels = item * width // 64
            modules += [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                        nn.ReLU(inplace=True)]
            in_channels = channels
    modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*modules), in_channels, num_classes)


def _register_vgg(name: str, depth: int) -> None:
    def build(num_classes: int = 10,
              width: int = 64,  # channels of the first stage (the paper's 64); every later layer keeps its ratio to it
              ) -> Classifier:
        return _vgg(VGG_LAYOUTS[name], num_classes, width)

    build.__doc__ = (f"VGG-{depth} with batch norm for 32x32 inputs; 8*width-d features (512 at the paper's width 64).")
    build.__name__ = name
    register_arch(name, display=f"VGG-{depth}", paper=PAPER_VGG)(build)


for _name, _depth in (("vgg11", 11), ("vgg13", 13), ("vgg16", 16), ("vgg19", 19)):
    _register_vgg(_name, _depth)


@register_arch("tiny_cnn", display="Tiny CNN", paper="")
def tiny_cnn(num_classes: int = 10,
             width: int = 32,  # channels of the first conv; the other three have 2x, 4x and 4x
             ) -> Classifier:
    """A four-conv CNN for tests and the CPU smoke grid (about 0.3M parameters); 4*width-d features."""
    require_width(width)

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


def _cifar_stem(out_channels: int) -> nn.Conv2d:
    """The 3x3, stride-1 first convolution that replaces ImageNet stems (7x7 stride 2 + max-pool) at 32x32."""
    conv = nn.Conv2d(3, out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits its convs
    return conv


def _global_pool() -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]


@register_arch("densenet121", display="DenseNet-121", paper="Huang et al., Densely Connected Convolutional Networks, CVPR 2017")
def densenet121(num_classes: int = 10) -> Classifier:
    """DenseNet-121 (growth 32, blocks 6-12-24-16) with the CIFAR stem; 1024-d features.

    torchvision's DenseNet with its ImageNet stem (7x7 conv, BN, ReLU, max-pool) replaced by one 3x3
    convolution to 2x the growth rate, as in the paper's CIFAR models: the three transitions take
    32x32 to 4x4. The layout of the CIFAR DenseNet-121 used by APBench and the ISS evaluation.
    """
    from torchvision.models import DenseNet

    net = DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64)
    net.features.conv0 = _cifar_stem(64)
    net.features.norm0 = net.features.relu0 = net.features.pool0 = nn.Identity()
    # torchvision's forward applies ReLU after the last batch norm (norm5) before pooling.
    body = nn.Sequential(net.features, nn.ReLU(inplace=True), *_global_pool())
    return Classifier(body, net.classifier.in_features, num_classes)


class InvertedResidual(nn.Module):
    """MobileNetV2 block as in kuangliu/pytorch-cifar: 1x1 expand (always, even for t = 1), 3x3
    depthwise, 1x1 linear projection, ReLU; on stride 1 a shortcut, projected by 1x1 conv + BN where
    the width changes."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        planes = expansion * in_planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, 1) if stride == 1 else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out if self.shortcut is None else out + self.shortcut(x)


# (expansion t, channels c, blocks n, stride s) of the paper, with the CIFAR change of kuangliu/APBench:
# the 24-channel stage keeps stride 1, so with the stride-1 stem the last stage works at 4x4.
MOBILENETV2_CIFAR = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


@register_arch("mobilenetv2", display="MobileNetV2", paper="Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018")
def mobilenetv2(num_classes: int = 10) -> Classifier:
    """MobileNetV2 (width 1.0) for 32x32 inputs, as APBench's `mobilenetv2` (kuangliu/pytorch-cifar); 1280-d features.

    Stride-1 3x3 stem (32 channels), the stages above, 1x1 conv to 1280, BN, ReLU, global pooling;
    2,296,922 parameters with 10 classes. Unlike torchvision's ImageNet model it uses ReLU (not
    ReLU6), expands in every block and adds projection shortcuts, as the reference CIFAR code does.
    """
    modules: list[nn.Module] = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True)]
    in_planes = 32
    for expansion, planes, blocks, stride in MOBILENETV2_CIFAR:
        for j in range(blocks):
            modules.append(InvertedResidual(in_planes, planes, expansion, stride if j == 0 else 1))
            in_planes = planes
    modules += [nn.Conv2d(in_planes, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU(inplace=True), *_global_pool()]
    return Classifier(nn.Sequential(*modules), 1280, num_classes)


class WideBasic(nn.Module):
    """Pre-activation block of a wide ResNet: BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.projection = None
        if stride != 1 or in_planes != planes:
            self.projection = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        activated = F.relu(self.bn1(x))
        # As the TRADES/Madry code: a projection shortcut sees the activated input, an identity one the raw input.
        shortcut = x if self.projection is None else self.projection(activated)
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return out + shortcut


def _wide_resnet(depth: int, widen: int, num_classes: int) -> Classifier:
    blocks = (depth - 4) // 6
    widths = (16 * widen, 32 * widen, 64 * widen)
    modules: list[nn.Module] = [_cifar_stem(16)]
    in_planes = 16
    for i, planes in enumerate(widths):
        for j in range(blocks):
            modules.append(WideBasic(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
            in_planes = planes
    modules += [nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True), *_global_pool()]
    body = nn.Sequential(*modules)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):  # He-normal over fan-out, as the reference implementation
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return Classifier(body, in_planes, num_classes)


@register_arch("wrn34_10", display="WRN-34-10", paper="Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016")
def wrn34_10(num_classes: int = 10) -> Classifier:
    """WRN-34-10: the wide ResNet of adversarial-training papers (Madry et al., TRADES); 640-d features.

    Depth 34 = 6 x 5 pre-activation blocks + 4, widths 160-320-640, no dropout (46.2M parameters).
    A CIFAR network by design: 3x3 stem, no max-pool, strides take 32x32 to 8x8.
    """
    return _wide_resnet(34, 10, num_classes)


@register_arch("vit_small", display="ViT-S", paper="Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image "
                                  "Recognition at Scale, ICLR 2021")
def vit_small(num_classes: int = 10,
              image_size: int = 32,  # side in pixels of the input images, a multiple of the 4-pixel patches
              ) -> Classifier:
    """A small ViT for 32x32 inputs: 4x4 patches, 6 layers, width 512, 8 heads, MLP 512; 512-d features.

    A ViT's position embeddings fix its input size: for other images set `[config.vit_small]
    image_size` (64 for Tiny-ImageNet: 256 patches of 4x4 pixels; the depth and width stay).

    torchvision's `VisionTransformer` (class token, learned position embeddings, pre-norm encoder)
    with the sizes and dropout 0.1 of APBench's `vit_small`, which also adds shifted-patch
    tokenisation and locality self-attention (Lee et al., 2021); this is the plain ViT. The features
    are the class token after the encoder's final layer norm.
    """
    from torchvision.models import VisionTransformer

    if image_size < 4 or image_size % 4:
        raise ConfigError(f"arch vit_small.image_size: must be a multiple of its 4-pixel patches, got {image_size}")
    net = VisionTransformer(image_size=image_size, patch_size=4, num_layers=6, num_heads=8, hidden_dim=512, mlp_dim=512,
                            dropout=0.1)
    net.heads = nn.Identity()  # the forward pass then ends at the class token's features
    return Classifier(net, net.hidden_dim, num_classes)

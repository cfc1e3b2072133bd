import pytest
import torch

from bench.registry import ARCHS

SMALL = {"tiny_cnn"}


@pytest.mark.parametrize("name", ARCHS.names())
def test_logits_and_penultimate_features(name):
    torch.manual_seed(0)
    model = ARCHS.create(name, num_classes=7).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.features(x)
        logits = model(x)
    assert features.shape == (2, model.feature_dim)
    assert logits.shape == (2, 7)
    assert torch.allclose(model.classifier(features), logits, atol=1e-5)


@pytest.mark.parametrize("name,dim", [("resnet10", 512), ("resnet18", 512), ("resnet26", 512), ("resnet34", 512), ("resnet50", 2048), ("vgg11", 512), ("vgg19", 512),
                                      ("tiny_cnn", 128), ("densenet121", 1024), ("mobilenetv2", 1280), ("wrn34_10", 640),
                                      ("vit_small", 512)])
def test_feature_dimensions(name, dim):
    assert ARCHS.create(name).feature_dim == dim


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "mobilenetv2", "wrn34_10"])
def test_cifar_stem_has_no_maxpool_and_a_3x3_first_conv(name):
    model = ARCHS.create(name)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.kernel_size == (3, 3) and first.stride == (1, 1) and first.in_channels == 3
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


# Parameter counts of the reference CIFAR implementations with 10 classes: the DenseNet-121 and
# MobileNetV2 of APBench (kuangliu/pytorch-cifar's models, built and counted: 6,956,298 and
# 2,296,922) and the WRN-34-10 of TRADES (46.16M).
@pytest.mark.parametrize("name,count", [("densenet121", 6_956_298), ("mobilenetv2", 2_296_922), ("wrn34_10", 46_160_474)])
def test_cifar_variants_match_the_reference_implementations(name, count):
    assert sum(p.numel() for p in ARCHS.create(name).parameters()) == count


def test_mobilenetv2_blocks_are_the_reference_cifar_blocks():
    """kuangliu's block: ReLU (not ReLU6), a 1x1 expansion even where t = 1, projection shortcuts."""
    model = ARCHS.create("mobilenetv2")
    assert not any(isinstance(m, torch.nn.ReLU6) for m in model.modules())
    first = model.body[3]  # after the stem's conv, BN and ReLU: t = 1, 32 -> 16 channels, stride 1
    assert first.conv1.kernel_size == (1, 1) and first.conv1.out_channels == 32
    assert isinstance(first.shortcut, torch.nn.Sequential)  # 32 -> 16 channels: projected


def test_normalize_inputs_standardises_before_the_body():
    torch.manual_seed(0)
    model = ARCHS.create("tiny_cnn", num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    with torch.no_grad():
        expected = model.features((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        assert not torch.allclose(model.features(x), expected)
        assert torch.allclose(model.normalize_inputs(mean, std).features(x), expected)
    assert set(model.state_dict()) >= {"mean", "std"}  # saved and restored with the model's checkpoint


def test_vit_small_cuts_32x32_images_into_64_patches_of_4x4():
    vit = ARCHS.create("vit_small").body
    assert vit.patch_size == 4 and vit.seq_length == 64 + 1  # patches and the class token
    assert len(vit.encoder.layers) == 6 and vit.hidden_dim == 512


def test_depths_differ_in_parameter_count():
    names = ("resnet10", "resnet18", "resnet26", "resnet34", "vgg11", "vgg16")
    counts = {n: sum(p.numel() for p in ARCHS.create(n).parameters()) for n in names}
    assert counts["resnet10"] < counts["resnet18"] < counts["resnet26"] < counts["resnet34"]
    assert counts["vgg11"] < counts["vgg16"]
    convs = {n: sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in ARCHS.create(n).modules())
             for n in names[:4]}
    assert convs == {"resnet10": 9, "resnet18": 17, "resnet26": 25, "resnet34": 33}  # + the linear head = the depth
    assert 11.0e6 < counts["resnet18"] < 11.4e6  # the CIFAR ResNet-18 has 11.17M parameters


# The paper-width models, counted before `width` existed: the default must build exactly these.
@pytest.mark.parametrize("name,count", [("resnet18", 11_173_962), ("resnet34", 21_282_122), ("resnet50", 23_520_842),
                                        ("vgg11", 9_228_362), ("vgg19", 20_035_018)])
def test_width_defaults_to_the_paper_models(name, count):
    assert sum(p.numel() for p in ARCHS.create(name).parameters()) == count
    assert [tuple(p.shape) for p in ARCHS.create(name, {"width": 64}).parameters()] == \
           [tuple(p.shape) for p in ARCHS.create(name).parameters()]


@pytest.mark.parametrize("name,dim", [("resnet18", 128), ("resnet50", 512), ("vgg11", 128), ("vgg16", 128),
                                      ("tiny_cnn", 64)])
def test_width_scales_every_stage(name, dim):
    model = ARCHS.create(name, {"width": 16}, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 16 and model.feature_dim == dim
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("width", [0, -8, 2.5, True])
def test_a_bad_width_is_a_config_error_naming_the_field(width):
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match=r"width: must be a whole number of channels >= 1"):
        ARCHS.create("vgg11", {"width": width})

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bench.registry import DEFENSES


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_keeps_dtype_and_shape(name, tiny_set):
    defense = DEFENSES.create(name)
    out = defense.prepare(tiny_set.images, tiny_set.labels)
    assert out.dtype == torch.uint8 and out.shape == tiny_set.images.shape
    test = defense.prepare_test(tiny_set.images)
    assert test.dtype == torch.uint8 and test.shape == tiny_set.images.shape
    x, y = defense.augment(tiny_set.images.float() / 255, tiny_set.labels)
    assert x.shape == tiny_set.images.shape and len(y) == len(tiny_set.labels)


@pytest.mark.parametrize("quality", [10, 50, 90])
def test_jpeg_matches_pil_at_the_same_quality(quality):
    g = torch.Generator().manual_seed(0)
    # Smooth images, so encoder differences are not drowned by noise.
    base = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=g), size=32, mode="bilinear")
    images = (base * 255).round().to(torch.uint8)
    ours = DEFENSES.create("jpeg", {"quality": quality}).prepare(images, torch.zeros(8, dtype=torch.long))
    for i in range(8):
        buffer = io.BytesIO()
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        pil = torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1)
        assert (ours[i].float() - pil.float()).abs().mean() < 1.0  # same codec up to decoder rounding
    assert not torch.equal(ours, images)


def test_jpeg_quality_is_checked():
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match=r"defense jpeg\.quality: must be in 1\.\.100, got 101"):
        DEFENSES.create("jpeg", {"quality": 101})

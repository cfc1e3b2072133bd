"""Reference outputs of kornia 0.6.12 for UEraser's augmentations (tests/data/ueraser_kornia0612.npz).

APBench pins kornia==0.6.12; the suite cannot install it, so its outputs are stored once:

    pip install --no-deps --target /tmp/kornia0612 kornia==0.6.12
    PYTHONPATH=/tmp/kornia0612 python tools/ueraser_kornia0612_reference.py tests/data/ueraser_kornia0612.npz

(0.6.12 imports and runs on torch 2.14 as it is.) Stored: a small uint8 batch; for each of
TrivialAugment's 12 default ops, run as APBench runs it (`AugmentationSequential`), the per-image
magnitude it drew and its output; and `diamond_square` maps under a fixed seed.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

import kornia
import kornia.augmentation as K
from kornia.augmentation.auto.trivial_augment.trivial_augment import default_policy
from kornia.contrib.diamond_square import diamond_square

assert kornia.__version__ == "0.6.12", kornia.__version__
MAGNITUDE = {"rotate": "degrees", "posterize": "bits_factor", "solarize": "thresholds", "contrast": "contrast_factor",
             "brightness": "brightness_factor", "sharpness": "sharpness", "shear_x": "shear_x", "shear_y": "shear_y",
             "translate_x": "translate_x", "translate_y": "translate_y"}


def main(out: str) -> None:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    pixels[0] = pixels[0] // 2 + 40  # a low-contrast image, for auto_contrast and equalize
    x = pixels.float() / 255
    arrays = {"pixels": pixels.numpy(), "ops": np.array([p[0][0] for p in default_policy])}
    for k, policy in enumerate(default_policy):
        name = policy[0][0]
        torch.manual_seed(k)
        aug = K.AugmentationSequential(K.auto.TrivialAugment(policy=[policy]))
        y = aug(x)
        params = aug._params[0].data[0].data[0].data
        mag = params[MAGNITUDE[name]].float() if name in MAGNITUDE else torch.zeros(len(x))
        arrays[f"{name}_magnitude"] = mag.numpy()
        arrays[f"{name}_out"] = y.numpy().astype(np.float16)  # 1e-3 is ample against a wrong op
    torch.manual_seed(0)
    roughness = torch.tensor([0.3, 0.5, 0.7])
    arrays["plasma_roughness"] = roughness.numpy()
    arrays["plasma"] = diamond_square((3, 2, 32, 32), roughness).numpy().astype(np.float16)
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])

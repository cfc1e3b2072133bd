"""UEraser's augmentations as APBench runs them: kornia 0.6.12's plasma and TrivialAugment.

APBench (`defense/ueraser.py`, `requirements.txt`: kornia==0.6.12) builds UEraser from
`K.RandomPlasmaBrightness`, `K.RandomPlasmaContrast` and `K.auto.TrivialAugment` inside one
`K.AugmentationSequential`. Later kornia releases changed both (0.9.0: a new diamond-square seed
step, and TrivialAugment's magnitudes signed and mapped), so the behaviour of 0.6.12 is written
here; `tests/test_ueraser_kornia.py` compares it with outputs of kornia 0.6.12 itself
(`tools/ueraser_kornia0612_reference.py` makes them).

What 0.6.12 does, read from its code and checked against its outputs:
- Plasma (`kornia/contrib/diamond_square.py`): a 3x3 seed, then diamond-square doublings to the
  next 2^k + 1 side, cropped; the amplitude of doubling k is roughness^k; the maps are not
  normalised (mean about 0.47, spread about 0.1 per map on 32x32).
- TrivialAugment: one of 12 ops per call for the whole batch, its magnitude drawn per image. Inside
  `AugmentationSequential` the policy draws the wrapped op's parameters directly
  (`PolicySequential.forward_parameters` calls `module.op.forward_parameters`), so the ops'
  magnitude maps are skipped: rotation, shear and translation are never negative, shear is in
  degrees from the policy's (0, 0.3) (not x 180), and posterize rounds U(0, 4) to 0..4 bits.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

_DIAMOND = torch.tensor([[0.25, 0.0, 0.25], [0.0, 0.0, 0.0], [0.25, 0.0, 0.25]])
_SQUARE = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]])


def _filter(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    # kornia's filter2d: reflect padding, correlation (both kernels are symmetric).
    return F.conv2d(F.pad(img, (1, 1, 1, 1), mode="reflect"), kernel.to(img).view(1, 1, 3, 3))


def _seed(n: int, device, dtype) -> torch.Tensor:
    """kornia 0.6.12's 3x3 seed, random draws in its order."""
    torch.rand(n, 1, 3, 3, device=device, dtype=dtype)  # drawn and then all overwritten in 0.6.12
    c = torch.rand(n, 1, 2, 2, device=device, dtype=dtype)  # the four corners
    c00, c02, c20, c22 = c[..., 0, 0], c[..., 0, 1], c[..., 1, 0], c[..., 1, 1]
    mid = (c00 + c02 + c20 + c22) / 4
    res = torch.stack([
        torch.stack([c00, c00 + c02 + mid, c02], -1),
        torch.stack([c00 + mid + c20, mid, c22 + mid + c20], -1),  # the right edge sums c20, not c02, in 0.6.12
        torch.stack([c20, c20 + c22 + mid, c22], -1),
    ], -2) / 3  # all nine are divided by 3, the corners and centre too
    return res.transpose(-1, -2)  # 0.6.12 transposes a seed of height 3


def _double(img: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One diamond and one square step of kornia 0.6.12, which doubles the side (2^k + 1 points)."""
    n, _, h, w = img.shape
    new = torch.zeros(n, 1, 2 * h - 1, 2 * w - 1, device=img.device, dtype=img.dtype)
    new[..., ::2, ::2] = img
    edge = torch.ones_like(new)
    edge[..., 0, :] = edge[..., -1, :] = edge[..., :, 0] = edge[..., :, -1] = 1 / 0.75
    noise = torch.rand(new.shape, device=img.device, dtype=img.dtype) * scale
    diamond = _filter(new, _DIAMOND)
    on = (diamond > 0).to(img.dtype)
    new = new + (1 - scale) * diamond * on + on * noise
    square = _filter(new, _SQUARE) * edge
    on = (square > 0).to(img.dtype)
    return new + on * noise + (1 - scale) * on * square  # the same noise as the diamond step, as 0.6.12


def diamond_square(shape: tuple[int, int, int, int], roughness: torch.Tensor) -> torch.Tensor:
    """kornia 0.6.12's `diamond_square(shape, roughness)`: one map per image and channel, roughness per image.

    Square images only (0.6.12's seed for other shapes has its own steps, which no dataset here needs).
    """
    n, c, h, w = shape
    if h != w:
        raise ValueError(f"diamond_square: square images only, got {h}x{w}")
    depth = math.ceil(math.log2(h - 1)) - 1
    r = roughness.view(-1, 1, 1, 1).expand(n, c, 1, 1).reshape(-1, 1, 1, 1)
    img, scale = _seed(n * c, roughness.device, roughness.dtype), torch.ones_like(r)
    for _ in range(depth):
        scale = scale * r
        img = _double(img, scale)
    return img[..., :h, :w].reshape(shape)


# --- TrivialAugment's 12 ops, as applied through AugmentationSequential in 0.6.12 -----------------

def _warp(x: torch.Tensor, matrix: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """kornia's warp_affine: a pixel-space matrix, normalised by (size - 1) whatever align_corners."""
    n, _, h, w = x.shape
    norm = torch.tensor([[2 / (w - 1), 0, -1], [0, 2 / (h - 1), -1], [0, 0, 1]], dtype=x.dtype, device=x.device)
    inv = torch.linalg.inv(norm @ matrix @ torch.linalg.inv(norm))
    grid = F.affine_grid(inv[:, :2], list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def _eye(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.eye(3, dtype=x.dtype, device=x.device).repeat(len(m), 1, 1)


def rotate(x, degrees):
    """Counter-clockwise by `degrees` about ((w-1)/2, (h-1)/2), bilinear, zeros outside, align_corners=True."""
    h, w = x.shape[-2:]
    a = torch.deg2rad(degrees.to(x))
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    m = _eye(a, x)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = cos, sin, cx - cos * cx - sin * cy
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = -sin, cos, cy + sin * cx - cos * cy
    return _warp(x, m, align_corners=True)


def shear_x(x, degrees):
    t = torch.tan(torch.deg2rad(degrees.to(x)))
    m = _eye(t, x)
    m[:, 0, 1], m[:, 0, 2] = -t, t * (x.shape[-2] / 2 - 0.5)
    return _warp(x, m, align_corners=False)


def shear_y(x, degrees):
    t = torch.tan(torch.deg2rad(degrees.to(x)))
    m = _eye(t, x)
    m[:, 1, 0], m[:, 1, 2] = -t, t * (x.shape[-1] / 2 - 0.5)
    return _warp(x, m, align_corners=False)


def translate_x(x, pixels):
    m = _eye(pixels, x)
    m[:, 0, 2] = pixels.to(x)
    return _warp(x, m, align_corners=False)


def translate_y(x, pixels):
    m = _eye(pixels, x)
    m[:, 1, 2] = pixels.to(x)
    return _warp(x, m, align_corners=False)


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x).view(-1, 1, 1, 1)


def auto_contrast(x, _=None):
    lo = x.flatten(2).min(-1)[0][..., None, None]
    hi = x.flatten(2).max(-1)[0][..., None, None]
    return ((x - lo) / (hi - lo + 1e-6)).clamp(0, 1)


def _equalize_channel(im: torch.Tensor) -> torch.Tensor:
    # torchvision PR 796's port of PIL's equalize, as kornia 0.6.12 has it (histc bins over [0, 255]).
    im = im * 255
    histo = torch.histc(im.float(), bins=256, min=0, max=255).to(im.dtype)
    nonzero = histo[histo != 0]
    step = torch.div(nonzero.sum() - nonzero[-1], 255, rounding_mode="trunc")
    if step == 0:
        return im / 255
    lut = torch.div(histo.cumsum(0) + torch.div(step, 2, rounding_mode="trunc"), step, rounding_mode="trunc")
    lut = torch.cat([lut.new_zeros(1), lut[:-1]]).clamp(0, 255)
    return lut[im.flatten().long()].reshape(im.shape) / 255


def equalize(x, _=None):
    return torch.stack([torch.stack([_equalize_channel(ch) for ch in image]) for image in x])


def posterize(x, bits):
    """Keep `bits` (0..8) high bits of the uint8 level, with 0.6.12's float arithmetic; 0 bits is black."""
    out = []
    for image, b in zip(x, bits.tolist()):
        if b == 0:
            out.append(torch.zeros_like(image))
        elif b == 8:
            out.append(image.clone())
        else:
            shift = torch.tensor(8 - b)
            right = (image * 255).to(torch.uint8) / (2 ** shift).to(image.dtype) / 255.0
            out.append(((right * 255).to(torch.uint8) * (2 ** shift)).to(image.dtype) / 255.0)
    return torch.stack(out)


def solarize(x, threshold):
    return torch.where(x < _per_image(threshold, x), x, 1.0 - x)


def contrast(x, factor):
    return (x * _per_image(factor, x)).clamp(0, 1)  # kornia's contrast scales, it does not blend with the mean


def brightness(x, factor):
    return (x + _per_image(factor, x) - 1).clamp(0, 1)  # kornia's brightness adds factor - 1


def sharpness(x, factor):
    c = x.shape[1]
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device).view(1, 1, 3, 3) / 13
    smooth = x.clone()  # border pixels keep the image's values
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel.repeat(c, 1, 1, 1), groups=c).clamp(0, 1)
    f = _per_image(factor, x)
    out = smooth + (x - smooth) * f
    return torch.where((f > 0) & (f < 1), out, out.clamp(0, 1))


def _uniform(lo: float, hi: float):
    return lambda n, h, w, dev: torch.rand(n, device=dev) * (hi - lo) + lo


# name -> (the op on a batch with per-image magnitudes, the per-image magnitude draw), in the
# order of 0.6.12's default policy; the ranges are the policy's after the skipped magnitude maps.
TRIVIAL_OPS = {
    "auto_contrast": (auto_contrast, lambda n, h, w, dev: None),
    "equalize": (equalize, lambda n, h, w, dev: None),
    "rotate": (rotate, _uniform(0.0, 30.0)),  # degrees
    "posterize": (posterize, lambda n, h, w, dev: (torch.rand(n, device=dev) * 4).round().int()),  # bits 0..4
    "solarize": (solarize, _uniform(0.0, 1.0)),  # threshold
    "contrast": (contrast, _uniform(0.1, 1.9)),
    "brightness": (brightness, _uniform(0.1, 1.9)),
    "sharpness": (sharpness, _uniform(0.1, 1.9)),
    "shear_x": (shear_x, _uniform(0.0, 0.3)),  # degrees
    "shear_y": (shear_y, _uniform(0.0, 0.3)),  # degrees
    "translate_x": (translate_x, lambda n, h, w, dev: torch.rand(n, device=dev) * 0.5 * w),  # pixels
    "translate_y": (translate_y, lambda n, h, w, dev: torch.rand(n, device=dev) * 0.5 * h),  # pixels
}


def trivial_augment(x: torch.Tensor) -> torch.Tensor:
    """kornia 0.6.12's `TrivialAugment()` in `AugmentationSequential`: one op per call, magnitude per image."""
    n, _, h, w = x.shape
    op, draw = list(TRIVIAL_OPS.values())[int(torch.randint(len(TRIVIAL_OPS), ()))]
    return op(x, draw(n, h, w, x.device))

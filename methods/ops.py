"""One-Pixel Shortcut (OPS)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from bench.context import RunContext
from bench.data import ImageSet
from bench.registry import register_attack
from methods.base import Attack, Poison


@dataclass(frozen=True)
class OPSConfig:
    pass  # one pixel per image; the search has no free parameters


@register_attack("ops", display="OPS")
class OnePixelShortcut(Attack):
    """Model-free, class-wise: one pixel per class, set to the colour that stands out most.

    Wu et al., "One-Pixel Shortcut: on the Learning Preference of Deep Neural Networks", ICLR 2023.
    Threat model: L0, one pixel per image. As the official `pixel_search`: classes in order 0..C-1;
    for each, every (position, colour) pair, the colour one of the 8 corners of the RGB cube, is
    scored by mean / std (population std) of the element-wise |colour - pixel| over the class's
    images and the 3 channels, in [0, 1] units; the best pair not already chosen by an earlier
    class (the exact pair: a position may recur with another colour) is written into all three
    channels of that pixel in every image of the class. Ties go to the first pair in
    (colour, row, column) order, where the official argsort leaves them to the sort.

    Defined for RGB images and for at most 8*H*W classes (the distinct (position, colour) pairs;
    8,192 on 32x32, 32,768 on 64x64): other sets are refused with an error saying so.
    """

    Config = OPSConfig
    paper = "Wu et al., One-Pixel Shortcut: on the Learning Preference of Deep Neural Networks, ICLR 2023"
    cite = "wu2023onepixel"

    def generate(self, data: ImageSet, ctx: RunContext) -> Poison:
        _, channels, height, width = data.images.shape
        if channels != 3:
            raise ValueError(f"ops: defined for RGB images (its colours are the RGB cube's corners), got {channels} channel(s)")
        if data.num_classes > len(CORNERS) * height * width:
            raise ValueError(f"ops: {data.num_classes} classes need more than the {len(CORNERS) * height * width} distinct "
                             f"(position, colour) pairs of {height}x{width} images; OPS gives each class its own pair")
        pairs = search_pixels(data.images, data.labels, data.num_classes)
        images = data.images.clone()
        for c, (row, col, colour) in pairs.items():
            members = data.labels == c
            images[members, :, row, col] = colour.to(images.device).view(1, -1).expand(int(members.sum()), -1)
        return Poison(images, "l0", 1.0)


CORNERS = torch.tensor(list(itertools.product((0, 255), repeat=3)), dtype=torch.uint8)  # the 8 RGB-cube corners


def search_pixels(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[int, tuple[int, int, torch.Tensor]]:
    """Class -> (row, col, uint8 colour) maximising mean/std of |colour - pixel| over the class."""
    _, _, height, width = images.shape
    corners = CORNERS.to(images.device).float() / 255
    taken = torch.zeros(8, height, width, dtype=torch.bool, device=images.device)
    chosen = {}
    for c in range(num_classes):
        x = images[labels == c].float() / 255  # (k, 3, H, W)
        if len(x) == 0:
            continue
        # |colour - pixel| per channel for every corner colour: (8, k, 3, H, W), pooled over k and channels.
        diff = (x.unsqueeze(0) - corners.view(8, 1, 3, 1, 1)).abs().transpose(1, 2).flatten(1, 2)
        score = diff.mean(1) / diff.std(1, correction=0).clamp_min(1e-12)  # (8, H, W)
        score[taken] = -float("inf")
        best = int(score.flatten().argmax())
        colour_index, pos = divmod(best, height * width)
        row, col = divmod(pos, width)
        taken[colour_index, row, col] = True
        chosen[c] = (row, col, CORNERS[colour_index])
    return chosen

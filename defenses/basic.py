"""No defense, and JPEG compression of the training set."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torchvision.io import decode_jpeg, encode_jpeg

from bench.config import require
from bench.registry import register_defense
from defenses.base import Defense


@dataclass(frozen=True)
class NoConfig:
    pass


@register_defense("none", display="No defense")
class NoDefense(Defense):
    """Standard training on the (poisoned) data."""

    Config = NoConfig


@dataclass(frozen=True)
class JPEGConfig:
    quality: int = 10  # JPEG quality 1..100; 10 as in ISS (Liu et al., ICML 2023)

    def __post_init__(self):
        require(1 <= self.quality <= 100, "quality", f"must be in 1..100, got {self.quality}")


@register_defense("jpeg", display="JPEG")
class JPEG(Defense):
    """JPEG-compress the whole training set once (Liu et al., ICML 2023, ISS).

    libjpeg through torchvision (4:2:0 chroma subsampling), the same pixels as PIL's
    `save(format="JPEG", quality=q)` and reopen (`jpeg_compress`); test images are left alone.
    """

    Config = JPEGConfig
    paper = "Liu et al., Image Shortcut Squeezing: Countering Perturbative Availability Poisons with Compression, ICML 2023"
    cite = "liu2023image"

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return jpeg_compress(images, self.config.quality)


def jpeg_compress(images: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 NCHW images JPEG-encoded at `quality` and decoded, on the CPU, returned on their device.

    Always on the CPU: nvjpeg on CUDA would decode to other pixels.
    """
    source = images.cpu().contiguous()  # one NCHW image per row; `out` takes the same layout
    out = torch.empty_like(source)

    def compress(start: int) -> None:
        chunk = list(source[start : start + JPEG_CHUNK])
        torch.stack(decode_jpeg(encode_jpeg(chunk, quality=quality)), out=out[start : start + JPEG_CHUNK])

    # libjpeg releases the GIL, so threads over chunks use every core (3-4x the per-image PIL loop on 2 cores).
    with ThreadPoolExecutor(torch.get_num_threads()) as pool:
        list(pool.map(compress, range(0, len(source), JPEG_CHUNK)))
    return out.to(images.device)


JPEG_CHUNK = 512  # images per task: small enough to spread over the threads, large enough to amortise the call

"""SimCLR victims: contrastive pre-training on the cell's training images, then a linear probe.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020, as
APBench evaluates attacks against contrastive learning (lafeat/apbench `us_train.py`, `util_us.py`,
4d60c50). An attack meant for supervised training may leave a contrastive learner untouched (and
attacks such as contrastive poisoning are meant for it): this victim lets a grid ask.

The victim is an architecture (`arch = "simclr"`): `bench.runner.run_cell` calls `pretrain` on the
cell's training images (the poison, after the defense's set-level stages) before the cell's recipe
trains the linear head on the frozen encoder. APBench's settings, each a default here:

- encoder: a registered architecture's feature extractor (ResNet-18, CIFAR stem, 512-d features);
  projection head Linear(512, 512), ReLU, Linear(512, 128), outputs L2-normalised;
- two views per image: RandomResizedCrop(32, scale 0.2-1, ratio 3/4-4/3), horizontal flip,
  ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale with p = 0.2 (`SimCLRViews`);
- loss: NT-Xent at temperature 0.5, written as APBench's SupCon loss without labels, which scales it
  by temperature / 0.07 (about 7.1: in effect a larger learning rate, kept for fidelity);
- SGD on encoder and head: lr 0.5, momentum 0.9, weight decay 1e-4, batch 512 with the last
  partial batch dropped, 500 epochs, cosine per epoch from lr to lr/1000 (APBench's `adjust_lr`);
- the probe: APBench trains it on the *clean* training set (`probe_data = "clean"`; the poison
  reaches the victim through pre-training only), 100 epochs, batch 128, SGD 0.5, no weight decay,
  encoder frozen in eval mode; it reports the best test accuracy of those epochs (our
  `test_acc_best`). Recipe preset `simclr_probe`.

Departures: the probe's lr is constant 0.5 (APBench's schedule is computed over the 500 pre-training
epochs, so its lr falls only from 0.50 to 0.45 in 100 epochs), and the probe augments with our loop's
padded crop and flip where APBench uses RandomResizedCrop(0.2-1) and flip. The resized crop samples
the box bilinearly from the whole image, so a crop's edge pixels may blend with the pixels just
outside it (by half a pixel at most) where torchvision resizes the cut-out crop alone. APBench's
loaders do not shuffle (`us_train.py` and `train_val_linear`: DataLoader without `shuffle`), so its
batches are the same, in the dataset's order, every epoch, and pre-training's dropped last batch is
always the set's last 336 images of 50,000; here pre-training and probe draw a fresh order every
epoch (from the cell seed), so every image is seen and the batches vary. Per-batch
defenses (mixup, cutout, AT ...) act on the probe, not on pre-training; set-level ones (JPEG,
grayscale ...) on the images pre-training sees, as APBench's `pre_transform`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from bench.archs import Classifier
from bench.config import require
from bench.data import ImageSet
from bench.registry import ARCHS, register_arch
from bench.train import autocast_to

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
COLOR_OPS = 4  # brightness, contrast, saturation, hue: applied in a random order per image


@dataclass(frozen=True)
class SimCLRSettings:
    """Pre-training settings (APBench's defaults); the cell's recipe trains the probe."""

    epochs: int = 500
    batch_size: int = 512  # images per step (two views each); the last partial batch is dropped
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 0.5
    projection_dim: int = 128
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop's area fraction
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    probe_data: Literal["clean", "poisoned"] = "clean"  # what the linear probe trains on

    def __post_init__(self):
        for name in ("epochs", "batch_size", "projection_dim"):
            require(getattr(self, name) >= 1, f"simclr.{name}", f"must be at least 1, got {getattr(self, name)}")
        require(self.lr > 0, "simclr.lr", f"must be positive, got {self.lr}")
        require(0 <= self.momentum < 1, "simclr.momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, "simclr.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.temperature > 0, "simclr.temperature", f"must be positive, got {self.temperature}")
        low, high = self.crop_scale
        require(0 < low <= high <= 1, "simclr.crop_scale", f"must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale}")
        require(all(j >= 0 for j in self.jitter) and self.jitter[3] <= 0.5, "simclr.jitter",
                f"must be four factors >= 0 with hue <= 0.5, got {self.jitter}")
        for name in ("jitter_p", "grayscale_p"):
            require(0 <= getattr(self, name) <= 1, f"simclr.{name}", f"must be a probability, got {getattr(self, name)}")
        require(self.probe_data in ("clean", "poisoned"), "simclr.probe_data",
                f"must be 'clean' or 'poisoned', got {self.probe_data!r}")


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of float RGB images."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grayscale(x)).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by its `shift` (a fraction of the colour circle), via HSV."""
    r, g, b = x.unbind(1)
    value, _ = x.max(1)
    chroma = value - x.min(1).values
    flat = chroma == 0
    saturation = chroma / torch.where(flat, torch.ones_like(value), value)
    safe = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (value - r) / safe, (value - g) / safe, (value - b) / safe
    # The sector formula of the hexcone model: which channel is the maximum picks the sector.
    hue = torch.where(value == r, bc - gc, torch.where(value == g, 2 + rc - bc, 4 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    hue = ((hue / 6 + 1) + shift.view(-1, 1, 1)) % 1.0
    sector = torch.floor(hue * 6)
    frac = hue * 6 - sector
    sector = sector.long() % 6
    p = (value * (1 - saturation)).clamp(0, 1)
    q = (value * (1 - saturation * frac)).clamp(0, 1)
    t = (value * (1 - saturation * (1 - frac))).clamp(0, 1)
    # Each sector's (r, g, b) as picks from (v, q, p, t).
    table = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=x.device)
    choices = torch.stack([value, q, p, t], dim=1)  # (N, 4, H, W)
    return choices.gather(1, table[sector].permute(0, 3, 1, 2))


COLOR_FUNCTIONS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class SimCLRViews:
    """Random views of a float batch in [0, 1], every draw per image, on the batch's device.

    torchvision's transforms draw their parameters once per call, so APBench applies them image by
    image on the CPU; this draws one set per image and applies them to the whole batch at once.
    """

    def __init__(self, settings: SimCLRSettings, generator: torch.Generator):
        self.settings, self.g = settings, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        x = self.resized_crop(x)
        flip = self.uniform(len(x)) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        x = self.jitter(x)
        gray = self.uniform(len(x)) < s.grayscale_p
        return torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)

    def uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g, device=self.g.device)

    def crop_boxes(self, n: int, height: int, width: int, tries: int = 10) -> torch.Tensor:
        """(n, 4) boxes (top, left, h, w) by torchvision's RandomResizedCrop rule: up to 10 draws of
        an area fraction and a log-uniform aspect ratio, the first that fits; else the whole image
        (the fallback's centre crop, for square images and ratios 3/4-4/3)."""
        low, high = self.settings.crop_scale
        area = height * width * (low + (high - low) * self.uniform(n, tries))
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * self.uniform(n, tries)
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().round()
        h = (area / ratio).sqrt().round()
        fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
        first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1, device=fits.device))
        rows = torch.arange(n, device=fits.device)
        h = torch.where(first >= 0, h[rows, first.clamp_min(0)], torch.full_like(first, height, dtype=h.dtype))
        w = torch.where(first >= 0, w[rows, first.clamp_min(0)], torch.full_like(first, width, dtype=w.dtype))
        top = torch.floor(self.uniform(n) * (height - h + 1))
        left = torch.floor(self.uniform(n) * (width - w + 1))
        return torch.stack([top, left, h, w], 1)

    def resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        return resized_crop(x, self.crop_boxes(len(x), *x.shape[2:]))

    def jitter(self, x: torch.Tensor) -> torch.Tensor:
        """ColorJitter with probability jitter_p: four factors per image, applied in its own random order."""
        n = len(x)
        b, c, s, h = self.settings.jitter
        factors = (1 + b * (2 * self.uniform(n) - 1), 1 + c * (2 * self.uniform(n) - 1),
                   1 + s * (2 * self.uniform(n) - 1), h * (2 * self.uniform(n) - 1))
        order = self.uniform(n, COLOR_OPS).argsort(1)  # a uniform random permutation per image
        applies = self.uniform(n) < self.settings.jitter_p
        x = x.clone()
        for position in range(COLOR_OPS):
            for op, function in enumerate(COLOR_FUNCTIONS):
                # Each image goes through each change once: only the images whose turn it is are computed.
                rows = (applies & (order[:, position] == op)).nonzero().squeeze(1)
                if len(rows):
                    x[rows] = function(x[rows], factors[op][rows])
        return x


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image's box (top, left, h, w) resized to the image's own size, bilinearly."""
    n, _, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(1)
    # Output pixel centres mapped into each box (align_corners=False, as F.interpolate), in the
    # [-1, 1] coordinates grid_sample reads over the whole image.
    u = (torch.arange(width, device=x.device, dtype=x.dtype) + 0.5) / width
    v = (torch.arange(height, device=x.device, dtype=x.dtype) + 0.5) / height
    xs = (left.view(-1, 1) + u.view(1, -1) * w.view(-1, 1)) * 2 / width - 1
    ys = (top.view(-1, 1) + v.view(1, -1) * h.view(-1, 1)) * 2 / height - 1
    grid = torch.stack([xs.view(n, 1, width).expand(n, height, width),
                        ys.view(n, height, 1).expand(n, height, width)], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, base_temperature: float = 0.07) -> torch.Tensor:
    """SimCLR's loss over two views' L2-normalised projections (N, D) each: every one of the 2N
    projections against the 2N - 1 others, its other view the positive; scaled by temperature /
    base_temperature as APBench's SupConLoss (labels=None) computes it."""
    z = torch.cat([z1, z2]).float()
    n = len(z1)
    logits = z @ z.T / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    log_prob = logits[torch.arange(2 * n, device=z.device), positive] - logits.logsumexp(1)
    return -(temperature / base_temperature) * log_prob.mean()


class ContrastiveVictim(Classifier):
    """An encoder pre-trained by SimCLR on the cell's images, probed by a linear head (`classifier`)."""

    def __init__(self, encoder: Classifier, num_classes: int, settings: SimCLRSettings):
        super().__init__(encoder.body, encoder.feature_dim, num_classes)
        self.settings = settings
        d = encoder.feature_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, settings.projection_dim))
        self.frozen = False

    def pretrain(self, images: torch.Tensor, *, seed: int, device: torch.device | None = None, precision: str = "fp32",
                 on_epoch=None) -> dict:
        """SimCLR on uint8 images (N, C, H, W), in batches moved to `device` (default: where the images
        are); then the encoder is frozen, so the recipe that follows trains the linear head only.
        Returns the per-epoch loss and the time."""
        s = self.settings
        device = torch.device(device) if device is not None else images.device
        if len(images) < max(s.batch_size, 2):
            raise ValueError(f"simclr.batch_size {s.batch_size} is more than the {len(images)} training images; "
                             "with the last partial batch dropped no step would run (lower simclr.batch_size)")
        self.to(device).train()
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        views = SimCLRViews(s, g)
        params = list(self.body.parameters()) + list(self.projection.parameters())
        optimizer = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        floor = s.lr * 1e-3  # APBench: eta_min = lr * lr_decay_rate ** 3 with a decay rate of 0.1
        losses, start = [], time.perf_counter()
        steps = len(images) // s.batch_size
        for epoch in range(1, s.epochs + 1):
            # Set once per epoch, from epoch 1, as APBench's adjust_lr (so the first epoch is already below lr).
            for group in optimizer.param_groups:
                group["lr"] = floor + (s.lr - floor) * (1 + math.cos(math.pi * epoch / s.epochs)) / 2
            order = torch.randperm(len(images), generator=g, device=device).to(images.device)
            total = torch.zeros((), device=device)
            for step in range(steps):
                x = images[order[step * s.batch_size : (step + 1) * s.batch_size]].to(device, non_blocking=True).float() / 255
                with autocast_to(precision, device):
                    z = F.normalize(self.projection(self.body(torch.cat([views(x), views(x)]))).float(), dim=1)
                    loss = nt_xent(z[: len(x)], z[len(x) :], s.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
            losses.append(total.item() / steps)
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"simclr: the contrastive loss became {losses[-1]} in epoch {epoch}")
            if on_epoch is not None:
                on_epoch({"pretrain_epoch": epoch, "contrastive_loss": losses[-1]})
        self.freeze_encoder()
        return {"method": "simclr", "epochs": s.epochs, "loss": losses, "seconds": time.perf_counter() - start,
                "probe_data": s.probe_data}

    def probe_set(self, clean: ImageSet, poisoned: ImageSet) -> ImageSet:
        """What the recipe trains the linear head on: the clean training images (APBench) or the poisoned ones."""
        return clean if self.settings.probe_data == "clean" else poisoned

    def freeze_encoder(self) -> None:
        """The encoder's weights and batch-norm statistics fixed from now on (a linear probe)."""
        self.body.requires_grad_(False)
        self.projection.requires_grad_(False)
        self.frozen = True
        self.body.eval()

    def train(self, mode: bool = True) -> ContrastiveVictim:
        super().train(mode)
        if self.frozen:
            self.body.eval()  # the probe trains the head on fixed features, as APBench's model.eval()
        return self


PAPER = "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, ICML 2020"


@register_arch("simclr", display="SimCLR", paper=PAPER)
def simclr(num_classes: int = 10,
           encoder: str = "resnet18",  # the registered arch pre-trained and probed
           width: int = 0,  # the encoder's width; 0 = that arch's default
           epochs: int = 500,  # pre-training epochs
           batch_size: int = 512,  # pre-training images per step (two views each)
           lr: float = 0.5,  # pre-training SGD learning rate
           temperature: float = 0.5,  # of the NT-Xent loss on cosine similarities
           probe_data: str = "clean",  # what the linear probe trains on: "clean" (APBench) or "poisoned"
           ) -> ContrastiveVictim:
    """Contrastive pre-training on the cell's images, then a linear probe on the frozen encoder.

    APBench's settings (module docstring). `encoder` is a registered arch (its `width`, 0 = that
    arch's default); `epochs`, `batch_size`, `lr`, `temperature` are pre-training's; `probe_data` is
    what the linear probe trains on ("clean" as APBench, or "poisoned")."""
    require(encoder in ARCHS and encoder != "simclr", "simclr.encoder",
            f"must be a registered architecture other than simclr, got {encoder!r}; known: {', '.join(ARCHS.names())}")
    settings = SimCLRSettings(epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature, probe_data=probe_data)
    base = ARCHS.create(encoder, {"width": width} if width else {}, num_classes=num_classes)
    return ContrastiveVictim(base, num_classes, settings)

"""D-VAE: purify the training set with rate-constrained, disentangling variational autoencoders.

Yu et al., Purify Unlearnable Examples via Rate-Constrained Variational Autoencoders, ICML 2024;
settings from the official code (yuyi-sd/D-VAE at 9d62e4c): `main_vae_disentangle.py`, the
model `ResNetDVAE` in `configs/models/resnet.py`, `configs/cifar10/resnet18DVAE.yaml` and the
CIFAR-10 commands in `some_scripts.sh`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bench.config import require
from bench.registry import register_defense
from defenses.base import Defense

log = logging.getLogger(__name__)

PURIFY_BATCH = 256  # images per forward pass when the set is rewritten (no gradients)


@dataclass(frozen=True)
class DVAEConfig:
    stages: int = 2  # 2: the paper's two-stage purification; 1: stage one's output alone (its ablation)
    epochs: int = 60  # training epochs of each stage's D-VAE (resnet18DVAE.yaml `epochs: 60`)
    batch_size: int = 128  # images per step, shuffled, last partial batch dropped (the official loader)
    lr: float = 0.005  # Adam, no weight decay, cosine to 0 over `epochs`, stepped per epoch (resnet18DVAE.yaml)
    grad_clip: float = 5.0  # max global gradient norm (the official trainer's `grad_clip: 5.0`)
    width: int = 64  # channels of the ResNet-18 stem's first stage; the latent map has 2 x width (ResNet-18: 64)
    latent_dim: int = 256  # latent channels per position of the 16x16 map (resnet18DVAE.yaml `latent_dim: 256`)
    # The rate constraint: the KL term (nats per latent position) is penalised only above its target,
    # weight x max(KL, target). Stage one 1.0 at 0.01 (hard-coded), stage two `--kd 3.0` (some_scripts.sh) at 0.5.
    kl_targets: tuple[float, float] = (1.0, 3.0)
    kl_weights: tuple[float, float] = (0.01, 0.5)  # the KL term's weight in stage one and stage two
    perturbation_floor: float = 0.002  # the perturbation's mean square is penalised above this ([0, 1] pixel units^2)
    perturbation_from: int = 11  # first epoch (0-based) with that penalty: the official `if epoch > 10`
    seed: int = 0  # initial weights, shuffling and latent samples, so the purified set is a function of the poison

    def __post_init__(self):
        require(self.stages in (1, 2), "stages", f"must be 1 or 2, got {self.stages}")
        for name in ("epochs", "batch_size", "width", "latent_dim"):
            require(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}")
        require(self.width % 2 == 0, "width", f"must be even (the decoder halves it), got {self.width}")
        for name in ("lr", "grad_clip"):
            require(getattr(self, name) > 0, name, f"must be positive, got {getattr(self, name)}")
        for name in ("kl_targets", "kl_weights"):
            value = tuple(getattr(self, name))
            require(len(value) == 2 and all(v >= 0 for v in value), name,
                    f"must be two non-negative numbers (stage one, stage two), got {value}")
        require(self.perturbation_floor >= 0, "perturbation_floor", f"must be non-negative, got {self.perturbation_floor}")
        require(self.perturbation_from >= 0, "perturbation_from", f"must be at least 0, got {self.perturbation_from}")


class BasicBlock(nn.Module):
    """ResNet-18's basic block, as the official `configs/models/resnet.py`."""

    def __init__(self, inp: int, out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def decoder(width: int, sigmoid: bool) -> nn.Sequential:
    """2w channels at half resolution -> 3 at full: the official decoder for `stem_end_block` 7."""
    layers = [nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ConvTranspose2d(width, width, 3, 1, 1),
              nn.InstanceNorm2d(width), nn.ReLU(),
              nn.ConvTranspose2d(width, width // 2, 3, 1, 1), nn.InstanceNorm2d(width // 2), nn.ReLU(),
              nn.ConvTranspose2d(width // 2, 3, 3, 1, 1)]
    return nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []))


class DisentangleVAE(nn.Module):
    """The official ResNet18DVAE at `stem_end_block = 7`, `--spatial_emb`, `--use_y` (which turns use_y off).

    Encoder: ResNet-18's stem up to the first block of its second stage (2w channels at half the
    image size); a 1x1 convolution each for the latent mean and log-variance. The image decoder
    reconstructs from the sampled latent (after a 1x1 `post_conv`); the perturbation decoder, with
    no output squashing, decodes the same latent plus a learnt class-wise spatial embedding.
    """

    def __init__(self, width: int, latent_dim: int, num_classes: int, image_size: tuple[int, int]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  BasicBlock(width, width), BasicBlock(width, width), BasicBlock(width, 2 * width, 2))
        self.fc_mu = nn.Conv2d(2 * width, latent_dim, 1)
        self.fc_var = nn.Conv2d(2 * width, latent_dim, 1)
        self.post_conv = nn.Conv2d(latent_dim, 2 * width, 1)
        self.decoder = decoder(width, sigmoid=True)
        self.decoder_p = decoder(width, sigmoid=False)
        h, w = image_size
        self.map_shape = (2 * width, (h + 1) // 2, (w + 1) // 2)
        self.emb_p = nn.Embedding(num_classes, math.prod(self.map_shape))

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        stem = self.stem(x)
        mu, log_var = self.fc_mu(stem), self.fc_var(stem)
        z = self.post_conv(mu + torch.randn_like(mu) * torch.exp(0.5 * log_var))  # sampled, in eval mode too
        rec = self.decoder(z)
        perturbation = self.decoder_p(self.emb_p(y).view(-1, *self.map_shape) + z)
        return rec, mu, log_var, perturbation


@register_defense("dvae", display="D-VAE")
class DVAE(Defense):
    """D-VAE purification of the whole training set (Yu et al., ICML 2024).

    Threat model: any perturbative poison of the training set; the defender has the poisoned set
    and its labels only (no clean data, no pretrained model). A VAE whose KL term is held near a
    small target (a rate constraint: the KL is penalised only above it) cannot afford to encode
    the poison's small perturbations and reconstructs images with them suppressed; D-VAE adds a
    second decoder that, from the latent and a learnt embedding of the label, reconstructs the
    residual (rec + p ~ x), so that p collects the class-wise perturbation.

    Two stages, as `main_vae_disentangle.py`: stage one trains a D-VAE on the poisoned set (KL
    target 1.0, weight 0.01) and replaces every image x by clip(x - p(x, y), 0, 1); stage two
    trains a fresh D-VAE on that set (KL target 3.0, weight 0.5) and replaces every image x1 by
    the reconstruction of clip(x1 - p(x1, y), 0, 1). Each stage trains `epochs` (60) epochs of
    Adam (lr 0.005, cosine to 0, gradients clipped at norm 5, batch 128, no augmentation) on
    mse(rec, x) + mse(clip(rec + p), x) + weight x max(KL, target), plus max(mean(p^2), 0.002)
    from epoch 11 on; KL is summed over latent channels and averaged over images and positions.
    The purification passes run the network in eval mode (batch-norm running statistics) with a
    sampled latent, and each stage's output is stored as uint8 by truncation (`astype(uint8)` of
    255 x), as the official code. Test images are left alone.

    Where it differs from the official code, and why:
    - The official model also carries ResNet-18's classification head, and the script loads a
      classifier trained on the poison; neither enters the loss (they are logged only), so both
      are left out. Without them the gradients, and so the training, are the same.
    - The class-wise embedding is sized to the input's latent map (16x16 for 32-pixel images, as
      the official fixed 128 x 16 x 16); `width` scales every channel count of the network
      (64 is the official ResNet-18; the CPU preset narrows it).
    - Randomness (initial weights, shuffling, latent samples) comes from `seed`, not from the
      global generator, so that the purified set, which the runner caches per poison, does not
      depend on the cell's seed.
    - A set smaller than one batch would train no step under the official loader (its last
      partial batch is dropped); it still trains none here, and a warning says so.

    The `cpu` preset (width 16, latent 64, 2 epochs per stage with the perturbation penalty in
    the second, batch 64) is a shrunk setting for CPU grids, not the paper's.
    """

    Config = DVAEConfig
    paper = "Yu et al., Purify Unlearnable Examples via Rate-Constrained Variational Autoencoders, ICML 2024"
    cite = "yu2024purify"
    # About 75 s a stage on 5,000 CIFAR-10 images with one thread of this project's 2-core EPYC.
    # tiny: a rehearsal's few dozen images (bench.rehearse), in batches small enough that each stage steps.
    presets = {"cpu": {"width": 16, "latent_dim": 64, "epochs": 2, "perturbation_from": 1, "batch_size": 64},
               "tiny": {"width": 16, "latent_dim": 64, "epochs": 2, "perturbation_from": 1, "batch_size": 16}}

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the global generators are left as they were
            torch.manual_seed(cfg.seed)
            model = self.train_stage(images, labels, stage=0)
            purified = self.purify(model, images, labels, reconstruct=False)
            if cfg.stages == 2:
                model = self.train_stage(purified, labels, stage=1)
                purified = self.purify(model, purified, labels, reconstruct=True)
        return purified

    def train_stage(self, images: torch.Tensor, labels: torch.Tensor, stage: int) -> DisentangleVAE:
        cfg, n = self.config, len(images)
        model = DisentangleVAE(cfg.width, cfg.latent_dim, self.num_classes, tuple(images.shape[-2:])).to(images.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=0.0)
        target, weight = cfg.kl_targets[stage], cfg.kl_weights[stage]
        steps = n // cfg.batch_size
        if steps == 0:
            log.warning("dvae: %d images are fewer than one batch of %d: stage %d trains no step", n, cfg.batch_size, stage + 1)
            return model
        model.train()
        for epoch in range(cfg.epochs):
            order = torch.randperm(n, device=images.device)
            for step in range(steps):
                rows = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                x, y = images[rows].float().div_(255), labels[rows]
                rec, mu, log_var, p = model(x, y)
                kl = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(1)).mean()
                loss = F.mse_loss(rec, x) + F.mse_loss((rec + p).clamp(0, 1), x) + weight * kl.clamp(min=target)
                if epoch >= cfg.perturbation_from:
                    loss = loss + p.pow(2).mean().clamp(min=cfg.perturbation_floor)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
            scheduler.step()
        return model

    @torch.no_grad()
    def purify(self, model: DisentangleVAE, images: torch.Tensor, labels: torch.Tensor, reconstruct: bool) -> torch.Tensor:
        """Every image less its decoded perturbation (and, in stage two, that passed through the VAE), as uint8."""
        model.eval()
        out = torch.empty_like(images)
        for start in range(0, len(images), PURIFY_BATCH):
            x, y = images[start : start + PURIFY_BATCH].float().div_(255), labels[start : start + PURIFY_BATCH]
            x = (x - model(x, y)[3]).clamp(0, 1)
            if reconstruct:
                x = model(x, y)[0].clamp(0, 1)
            out[start : start + PURIFY_BATCH] = x.mul_(255).to(torch.uint8)  # truncation, as the official astype(uint8)
        return out

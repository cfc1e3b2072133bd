"""The supervised contrastive objective MI-UE minimises over the perturbation."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """-mean_i log( sum_{j: y_j = y_i} s_ij / sum_j s_ij ), s_ij = exp(cos(f_i, f_j) / temperature).

    As in the official MI-UE code, self-pairs (j = i) count in both sums, and the loss is taken
    over one batch. Minimising it pulls features of a class together and pushes classes apart,
    raising intra-class cosine similarity, which lowers the conditional covariance of poisoned
    features and with it the mutual information between clean and poisoned features.
    """
    with torch.autocast(features.device.type, enabled=False):  # similarities in fp32 under a bf16 surrogate
        z = F.normalize(features.float(), dim=1)
        logits = z @ z.T / temperature
    same = labels.view(-1, 1) == labels.view(1, -1)
    log_all = torch.logsumexp(logits, dim=1)
    log_same = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
    return (log_all - log_same).mean()


def intra_class_cosine(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cosine similarity over pairs i != j of the same class."""
    z = F.normalize(features.float(), dim=1)
    sim = z @ z.T
    same = (labels.view(-1, 1) == labels.view(1, -1)) & ~torch.eye(len(labels), dtype=torch.bool, device=z.device)
    return sim[same].mean().item()

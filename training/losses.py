"""VAE objective (paper Eq. 1) with optional beta: reconstruction + beta * KL."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossTerms(NamedTuple):
    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample, summed over dimensions: [N]."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


def vae_loss(recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kind: str = "mse", beta: float = 1.0) -> LossTerms:
    """Per-image summed reconstruction error + beta * KL, averaged over the batch.

    Summing over pixels (not averaging) keeps the KL weight meaningful at any resolution.
    """
    if kind == "mse":
        r = F.mse_loss(recon, target, reduction="none")
    elif kind == "bce":
        r = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), target, reduction="none")
    else:
        raise ValueError(f"unknown reconstruction loss '{kind}'; choose mse or bce")
    rec = r.flatten(1).sum(1).mean()
    kl = kl_divergence(mu, logvar).mean()
    return LossTerms(rec + beta * kl, rec, kl)

"""VAE objective (paper Eq. 1) with optional beta: reconstruction + beta * KL."""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from training.maps import SSIM_SIGMA, GaussianBlur, ssim

LOSS_KINDS = ("mse", "bce", "ssim", "ssim_l1")
# Zhao et al., "Loss Functions for Image Restoration with Neural Networks" (2017): their mix of
# (MS-)SSIM and L1, taken as published, not tuned on screw.
SSIM_L1_WEIGHT = 0.84


@functools.cache
def _ssim_window(device: torch.device) -> GaussianBlur:
    """Built once per device, not on every training step."""
    return GaussianBlur(SSIM_SIGMA).to(device)


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
    `ssim` is 1 - SSIM per pixel (the window of the ssim_error map), as in the SSIM autoencoder
    of the MVTec AD paper: it penalizes wrong local structure, not only wrong intensity, so the
    decoder is pushed to reproduce a good part's edges sharply. But SSIM barely sees an intensity
    offset on a bright flat region (its luminance term stays ~1), and measured on screw the
    ssim-trained decoder drifted off the background's gray, so the plain error lit up the
    background. `ssim_l1` adds an L1 term that pins the intensity while SSIM keeps the structure.
    """
    if kind == "mse":
        r = F.mse_loss(recon, target, reduction="none")
    elif kind == "bce":
        r = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), target, reduction="none")
    elif kind in ("ssim", "ssim_l1"):
        r = 1 - ssim(target, recon, _ssim_window(recon.device))
        if kind == "ssim_l1":
            r = SSIM_L1_WEIGHT * r + (1 - SSIM_L1_WEIGHT) * (recon - target).abs()
    else:
        raise ValueError(f"unknown reconstruction loss '{kind}'; choose one of {LOSS_KINDS}")
    rec = r.flatten(1).sum(1).mean()
    kl = kl_divergence(mu, logvar).mean()
    return LossTerms(rec + beta * kl, rec, kl)

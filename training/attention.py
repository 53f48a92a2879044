"""Gradient-based VAE attention (paper Eq. 2-4): the one definition used by evaluation, the
attention-disentanglement loss and the export graph.

    s      = score(mu, logvar)                      sum(mu) (paper default) or Eq. 4 (difference)
    alpha  = GAP(ds/dA)                              per channel k, Eq. 3
    M      = ReLU(sum_k alpha_k A_k), upsampled      Eq. 2; raw values, no per-image normalization

Raw values matter: a threshold must mean the same on every image, so nothing here min-max
normalizes per image.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

SCORES = ("sum_mu", "difference")


def latent_score(mu: torch.Tensor, logvar: torch.Tensor, score: str,
                 normal_mu: torch.Tensor | None = None, normal_var: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample scalar s [N] whose gradient explains the latent code.

    sum_mu: sum_i mu_i (paper 3.3). Its sign follows the arbitrary orientation of the latent axes.
    difference: Eq. 4's normal difference distribution N(mu^x - mu^y, var^x + var^y) per dimension;
      s = -log p(u = 0) summed over dimensions, i.e. how implausible it is that the test code and
      the normal codes coincide. Orientation-free and zero-gradient for a perfectly normal code.
    """
    if score == "sum_mu":
        return mu.sum(1)
    if score == "difference":
        if normal_mu is None or normal_var is None:
            raise ValueError("score 'difference' needs the normal embedding statistics")
        var = normal_var + torch.exp(logvar)
        return (0.5 * (mu - normal_mu) ** 2 / var + 0.5 * torch.log(2 * math.pi * var)).sum(1)
    raise ValueError(f"unknown score '{score}'; choose one of {SCORES}")


def channel_weights(gradients: torch.Tensor) -> torch.Tensor:
    """alpha_k = GAP(ds/dA_k) (Eq. 3): [N, K, h, w] -> [N, K]."""
    return gradients.mean(dim=(2, 3))


def attention_map(activations: torch.Tensor, gradients: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """M = ReLU(sum_k alpha_k A_k) (Eq. 2), bilinearly upsampled to `size`: [N, 1, H, W]."""
    alpha = channel_weights(gradients)
    m = F.relu((alpha[:, :, None, None] * activations).sum(1, keepdim=True))
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


@contextmanager
def capture(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the output of `layer` during forward passes inside the block."""
    store: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        yield store
    finally:
        handle.remove()


class Explanation(NamedTuple):
    mu: torch.Tensor
    logvar: torch.Tensor
    recon: torch.Tensor
    target: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor
    attention: torch.Tensor


def explain(model: nn.Module, image: torch.Tensor, layer: str, score: str = "sum_mu",
            create_graph: bool = False) -> Explanation:
    """Forward the VAE on uint8 images and compute the attention at `layer` by autograd.

    Each sample's score depends only on its own activations (eval-mode BatchNorm), so one backward
    of the batch sum gives every per-sample gradient at once.
    """
    with capture(model.resolve_layer(layer)) as store:
        with torch.enable_grad():
            out = model(image)
            acts = store[-1]
            s = latent_score(out.mu, out.logvar, score, model.normal_mu, model.normal_var)
            (grads,) = torch.autograd.grad(s.sum(), acts, create_graph=create_graph)
    att = attention_map(acts, grads, tuple(out.target.shape[-2:]))
    return Explanation(out.mu, out.logvar, out.recon, out.target, acts, grads, att)


def per_dim_attention(model: nn.Module, image: torch.Tensor, layer: str,
                      create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Element-wise attention (paper fig. 1-2): one map M^i per latent dimension z_i = mu_i.

    Returns (maps [N, D, H, W], alpha [N, D, K], mu [N, D]). The overall map is maps.mean(1).
    """
    with capture(model.resolve_layer(layer)) as store:
        with torch.enable_grad():
            out = model(image)
            acts = store[-1]
            n, d = out.mu.shape
            # One batched vector-Jacobian product per latent dimension.
            eye = torch.eye(d, dtype=out.mu.dtype, device=out.mu.device)[:, None, :].expand(d, n, d)
            (grads,) = torch.autograd.grad(out.mu, acts, grad_outputs=eye, is_grads_batched=True,
                                           create_graph=create_graph)  # [D, N, K, h, w]
    alpha = grads.mean(dim=(3, 4)).transpose(0, 1)  # [N, D, K]
    maps = F.relu(torch.einsum("ndk,nkhw->ndhw", alpha, acts))
    maps = F.interpolate(maps, size=tuple(out.target.shape[-2:]), mode="bilinear", align_corners=False)
    return maps, alpha, out.mu

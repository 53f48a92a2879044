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
from typing import Any, Iterator, NamedTuple

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


VARIANTS = ("eq2", "abs", "neg", "gradnorm", "grad_x_act")


def attention_variant(activations: torch.Tensor, gradients: torch.Tensor, size: tuple[int, int],
                      variant: str = "eq2") -> torch.Tensor:
    """Alternatives to Eq. 2 measured by bench.localization (docs/benchmarks.md), raw values:
    eq2         the paper: ReLU(sum_k alpha_k A_k)
    abs         |sum_k alpha_k A_k| (no sign assumption on the latent axes)
    neg         ReLU(-sum_k alpha_k A_k) (the other orientation of sum(mu))
    gradnorm    the official code: gradients divided by their RMS per image, then abs
    grad_x_act  ReLU(sum_k dS/dA_k * A_k) per location, no GAP
    """
    if variant == "eq2":
        return attention_map(activations, gradients, size)
    if variant == "gradnorm":
        rms = gradients.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        gradients, variant = gradients / rms, "abs"
    if variant == "grad_x_act":
        m = F.relu((gradients * activations).sum(1, keepdim=True))
    else:
        m = (channel_weights(gradients)[:, :, None, None] * activations).sum(1, keepdim=True)
        m = m.abs() if variant == "abs" else F.relu(-m) if variant == "neg" else None
        if m is None:
            raise ValueError(f"unknown attention variant '{variant}'; choose one of {VARIANTS}")
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


RESIDUAL_VARIANTS = ("eq2", "abs", "weighted", "uniform")


def residual_attention(activations: torch.Tensor, recon_activations: torch.Tensor, gradients: torch.Tensor,
                       size: tuple[int, int], variant: str = "eq2") -> torch.Tensor:
    """Diagnostic (bench.residual_attention): Eq. 2 on the feature residual D = A(x) - A(x_hat),
    the change of the target layer's features between the input and its (defect-free)
    reconstruction, so that only what the reconstruction altered can light up:
    eq2       ReLU(sum_k alpha_k D_k)
    abs       |sum_k alpha_k D_k|
    weighted  sum_k |alpha_k| |D_k|
    uniform   mean_k |D_k|, no gradient: the control that says whether alpha helps
    """
    d = activations - recon_activations
    if variant == "uniform":
        m = d.abs().mean(1, keepdim=True)
    else:
        alpha = channel_weights(gradients)[:, :, None, None]
        if variant == "weighted":
            m = (alpha.abs() * d.abs()).sum(1, keepdim=True)
        elif variant in ("eq2", "abs"):
            m = (alpha * d).sum(1, keepdim=True)
            m = F.relu(m) if variant == "eq2" else m.abs()
        else:
            raise ValueError(f"unknown residual variant '{variant}'; choose one of {RESIDUAL_VARIANTS}")
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


@contextmanager
def capture(layers: list[nn.Module]) -> Iterator[list[list[torch.Tensor]]]:
    """Record the outputs of `layers` during forward passes inside the block."""
    stores: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = [m.register_forward_hook(lambda _m, _i, out, st=st: st.append(out)) for m, st in zip(layers, stores)]
    try:
        yield stores
    finally:
        for h in handles:
            h.remove()


class Explanation(NamedTuple):
    mu: torch.Tensor
    logvar: torch.Tensor
    recon: torch.Tensor
    target: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor
    attention: torch.Tensor


def layer_gradients(model: nn.Module, image: torch.Tensor, layers: list[str], scores: list[str],
                    create_graph: bool = False) -> tuple[Any, list[torch.Tensor], dict[str, list[torch.Tensor]]]:
    """One forward, one backward per score: (model output, activations per layer,
    {score: gradients per layer}). Each sample's score depends only on its own activations
    (eval-mode BatchNorm), so the backward of the batch sum gives every per-sample gradient."""
    with capture([model.resolve_layer(n) for n in layers]) as stores:
        with torch.enable_grad():
            out = model(image)
            acts = [st[-1] for st in stores]
            for name, a in zip(layers, acts):
                if a.dim() != 4:
                    raise ValueError(f"layer '{name}' outputs {tuple(a.shape)}, not a feature map [N, K, h, w]: "
                                     "attention needs a convolutional layer")
            grads = {}
            for i, score in enumerate(scores):
                s = latent_score(out.mu, out.logvar, score, model.normal_mu, model.normal_var)
                keep = create_graph or i < len(scores) - 1
                grads[score] = list(torch.autograd.grad(s.sum(), acts, create_graph=create_graph, retain_graph=keep))
    return out, acts, grads


def explain(model: nn.Module, image: torch.Tensor, layer: str, score: str = "sum_mu",
            create_graph: bool = False) -> Explanation:
    """Forward the VAE on uint8 images and compute the attention at `layer` by autograd."""
    out, (acts,), grads = layer_gradients(model, image, [layer], [score], create_graph)
    g = grads[score][0]
    att = attention_map(acts, g, tuple(out.target.shape[-2:]))
    return Explanation(out.mu, out.logvar, out.recon, out.target, acts, g, att)


def per_dim_attention(model: nn.Module, image: torch.Tensor, layer: str,
                      create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Element-wise attention (paper fig. 1-2): one map M^i per latent dimension z_i = mu_i.

    Returns (maps [N, D, H, W], alpha [N, D, K], mu [N, D]). The overall map is maps.mean(1).
    """
    with capture([model.resolve_layer(layer)]) as (store,):
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

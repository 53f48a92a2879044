"""Anomaly maps besides attention, and the choice of the map that drives masks and verdicts.

`anomaly_map` is a per-model choice set from the localization benchmark (docs/benchmarks.md):
  attention         the latent attention (the paper's method)
  recon_error       |x - x_hat| averaged over channels (the paper's "Vanilla-VAE" baseline)
  recon_error_blur  the same, Gaussian-smoothed (sigma in pixels)
  fusion            recon_error_blur / s_r + attention / s_a, each divided by its 99th percentile
                    on normal training images (stored in the model), so both terms share one unit
Every choice is built from tensor ops that export to ONNX unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAP_KINDS = ("attention", "recon_error", "recon_error_blur", "fusion")


def recon_error(target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """|x - x_hat| mean over channels: [N, C, H, W] -> [N, 1, H, W]."""
    return (target - recon).abs().mean(1, keepdim=True)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of a [N, 1, H, W] map; replicate padding keeps borders unbiased."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        k = gaussian_kernel(sigma)
        self.radius = (k.numel() - 1) // 2
        self.register_buffer("kx", k.view(1, 1, 1, -1))
        self.register_buffer("ky", k.view(1, 1, -1, 1))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        r = self.radius
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="replicate"), self.kx)
        return F.conv2d(F.pad(m, (0, 0, r, r), mode="replicate"), self.ky)


class AnomalyMap(nn.Module):
    """(attention, recon_error) -> the anomaly map of the chosen kind, [N, 1, H, W]."""

    def __init__(self, kind: str, sigma: float = 4.0) -> None:
        super().__init__()
        if kind not in MAP_KINDS:
            raise ValueError(f"unknown anomaly_map '{kind}'; choose one of {MAP_KINDS}")
        self.kind = kind
        self.blur = GaussianBlur(sigma)

    @property
    def needs_decoder(self) -> bool:
        return self.kind != "attention"

    def forward(self, attention: torch.Tensor, error: torch.Tensor | None,
                map_scale: torch.Tensor) -> torch.Tensor:
        if self.kind == "attention":
            return attention
        assert error is not None, "this anomaly_map needs the reconstruction error"
        if self.kind == "recon_error":
            return error
        blurred = self.blur(error)
        if self.kind == "recon_error_blur":
            return blurred
        return blurred / map_scale[1] + attention / map_scale[0]

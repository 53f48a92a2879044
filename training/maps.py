"""Anomaly maps besides attention, and the choice of the map that drives masks and verdicts.

`anomaly_map` is a per-model choice set from the localization benchmark (docs/benchmarks.md):
  attention         the latent attention (the paper's method)
  recon_error       |x - x_hat| averaged over channels (the paper's "Vanilla-VAE" baseline)
  recon_error_blur  the same, Gaussian-smoothed (sigma in pixels)
  ssim_error        |x - x_hat| weighted by 1 - SSIM(x, x_hat) (Wang et al.'s Gaussian window,
                    sigma 1.5), then smoothed like recon_error_blur: a pixel counts where the
                    reconstruction is both off in intensity and wrong in local structure, which
                    damps the blur-induced error along every edge of a good part
  fusion            recon_error_blur / s_r + attention / s_a, each divided by its 99th percentile
                    on normal training images (stored in the model), so both terms share one unit
Every choice is built from tensor ops that export to ONNX unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAP_KINDS = ("attention", "recon_error", "recon_error_blur", "ssim_error", "fusion")
SSIM_SIGMA = 1.5   # the SSIM paper's 11x11 Gaussian window; not tuned on the test set
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # its stabilizers for a dynamic range of 1


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


def ssim(x: torch.Tensor, y: torch.Tensor, window: GaussianBlur) -> torch.Tensor:
    """Per-pixel, per-channel SSIM of two [N, C, H, W] images in [0, 1] under a Gaussian window."""
    n, c, h, w = x.shape
    x, y = x.reshape(n * c, 1, h, w), y.reshape(n * c, 1, h, w)
    mx, my = window(x), window(y)
    vx, vy, cxy = window(x * x) - mx * mx, window(y * y) - my * my, window(x * y) - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))
    return s.reshape(n, c, h, w)


def structural_error(target: torch.Tensor, recon: torch.Tensor, window: GaussianBlur) -> torch.Tensor:
    """(1 - SSIM) x |x - x_hat| per pixel, mean over channels: [N, C, H, W] -> [N, 1, H, W].
    `window` is the SSIM's Gaussian (a GaussianBlur of SSIM_SIGMA), passed in so it is a buffer
    of the caller's module and travels with it into the exported graph."""
    return ((1 - ssim(target, recon, window)) * (target - recon).abs()).mean(1, keepdim=True)


def fuse(blurred_error: torch.Tensor, attention: torch.Tensor, error_scale: torch.Tensor | float,
         attention_scale: torch.Tensor | float) -> torch.Tensor:
    """The fusion map: each term divided by its 99th percentile on normal training images, so both
    share one unit (used by AnomalyMap and by evaluation's per-layer fusion rows)."""
    return blurred_error / error_scale + attention / attention_scale


class AnomalyMap(nn.Module):
    """(attention, target, recon) -> the anomaly map of the chosen kind, [N, 1, H, W]."""

    def __init__(self, kind: str, sigma: float = 4.0) -> None:
        super().__init__()
        if kind not in MAP_KINDS:
            raise ValueError(f"unknown anomaly_map '{kind}'; choose one of {MAP_KINDS}")
        self.kind = kind
        self.blur = GaussianBlur(sigma)
        self.window = GaussianBlur(SSIM_SIGMA)

    @property
    def needs_decoder(self) -> bool:
        return self.kind != "attention"

    def forward(self, attention: torch.Tensor, target: torch.Tensor | None, recon: torch.Tensor | None,
                map_scale: torch.Tensor) -> torch.Tensor:
        if self.kind == "attention":
            return attention
        assert target is not None and recon is not None, "this anomaly_map needs the reconstruction"
        if self.kind == "ssim_error":
            return self.blur(structural_error(target, recon, self.window))
        error = recon_error(target, recon)
        if self.kind == "recon_error":
            return error
        blurred = self.blur(error)
        if self.kind == "recon_error_blur":
            return blurred
        return fuse(blurred, attention, map_scale[1], map_scale[0])

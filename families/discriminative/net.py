"""The discriminative family's network: a small U-Net that reads a registered part beside its
nearest good references (their mean, and the template's least difference) and says, per pixel,
how likely a defect is there. `DefectMap` is the exported module: the normalization, the net,
the sigmoid and the blur, so training, the ONNX graph and the parity check compute one function.

Inputs (what families.template.graph.reference_nodes and TemplateBank.references give):
    x          float [N, H, W, C]  the registered part, gray levels
    refs_mean  float [N, H, W, C]  the mean of its k nearest bank images, gray levels
    least      float [N, 1, H, W]  per pixel the least |difference| to them (with the bank's tolerance, the
                                   least distance outside their local ranges), worst channel
Output: anomaly_map float [N, 1, H, W], a defect probability in [0, 1], Gaussian-blurred.

`Blended` (a setting, model.blend): the net's map plus the template's own map (the least
difference, blurred as the template family blurs it), each divided by its normal 99th percentile
on the bank, so that each counts alike where the other is quiet. On the screws the two miss
different defects (image AUROC 0.977 blended against 0.962 for the net and 0.966 for the
template at 128 px, 3 seeds); on metal_nut the template's lobe edges cost the net (0.951 against
0.963): the set-up measures both.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Four levels (width, 2, 4, 8 x width channels), bilinear upsampling, one logit per pixel."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        b = width
        self.e1, self.e2, self.e3, self.e4 = _block(cin, b), _block(b, 2 * b), _block(2 * b, 4 * b), _block(4 * b, 8 * b)
        self.d3, self.d2, self.d1 = _block(12 * b, 4 * b), _block(6 * b, 2 * b), _block(3 * b, b)
        self.out = nn.Conv2d(b, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        e4 = self.e4(F.max_pool2d(e3, 2))
        d3 = self.d3(torch.cat([_up(e4, e3), e3], 1))
        d2 = self.d2(torch.cat([_up(d3, e2), e2], 1))
        d1 = self.d1(torch.cat([_up(d2, e1), e1], 1))
        return self.out(d1)


def _up(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(a, size=like.shape[-2:], mode="bilinear", align_corners=False)


def gaussian(sigma: float) -> torch.Tensor:
    """The 1-D kernel of cv2.getGaussianKernel for a float image: size round(8 sigma + 1) | 1."""
    size = int(round(sigma * 8 + 1)) | 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-x * x / (2 * sigma * sigma))
    return (k / k.sum()).float()


class DefectMap(nn.Module):
    """uint8-range inputs -> the defect probability map (module docstring). `sigma` blurs the
    probabilities (model pixels; 0: none): a defect is an area, and a lone hot pixel is noise."""

    def __init__(self, channels: int, width: int = 16, sigma: float = 2.0) -> None:
        super().__init__()
        self.channels, self.width, self.sigma = channels, width, float(sigma)
        self.net = UNet(2 * channels + 1, width)
        k = gaussian(sigma) if sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", k, persistent=False)

    def logits(self, x: torch.Tensor, refs_mean: torch.Tensor, least: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] before the sigmoid: what training's loss reads."""
        z = torch.cat([x.permute(0, 3, 1, 2), refs_mean.permute(0, 3, 1, 2), least], 1) * (1 / 255)
        return self.net(z)

    def forward(self, x: torch.Tensor, refs_mean: torch.Tensor, least: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.logits(x, refs_mean, least))
        return blur(p, self.kernel) if self.sigma > 0 else p


def blur(m: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] blurred by the separable 1-D `kernel`, reflect-101 borders: cv2.GaussianBlur."""
    r = (kernel.numel() - 1) // 2
    m = F.pad(m, (r, r, r, r), mode="reflect")
    m = F.conv2d(m, kernel.view(1, 1, -1, 1))
    return F.conv2d(m, kernel.view(1, 1, 1, -1))


class Blended(nn.Module):
    """The net's map / net_scale + the template's map / template_scale (module docstring). The
    template's map is TemplateBank's: least / 255 blurred with `template_sigma` (model pixels)."""

    def __init__(self, net: DefectMap, template_sigma: float, net_scale: float, template_scale: float) -> None:
        super().__init__()
        self.net, self.template_sigma = net, float(template_sigma)
        self.channels, self.width, self.sigma = net.channels, net.width, net.sigma
        self.net_scale, self.template_scale = float(net_scale), float(template_scale)
        k = gaussian(template_sigma) if template_sigma > 0 else torch.ones(1)
        self.register_buffer("template_kernel", k, persistent=False)

    def forward(self, x: torch.Tensor, refs_mean: torch.Tensor, least: torch.Tensor) -> torch.Tensor:
        t = least * (1 / 255)
        if self.template_sigma > 0:
            t = blur(t, self.template_kernel)
        return self.net(x, refs_mean, least) * (1 / self.net_scale) + t * (1 / self.template_scale)


def steps_per_minute(size: int, width: int, batch: int) -> float:
    """Training steps a minute on 2 CPU cores (measured at 128 px, width 16, batch 8: ~1 s a step
    on an idle machine), scaled by the pixels and the width's share of the arithmetic."""
    return 60.0 / (1.0 * (size / 128) ** 2 * (width / 16) ** 2 * batch / 8 * max(1.0, math.log2(width / 8)))

"""Layer stacks the VAE architectures are built from (supp. tables 1-4): the conv encoder both the
one-class VAEs (vae.py) and the dSprites model (factorvae.py) use, the ResNet18 trunk, decoders.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import nn


def conv_encoder(channels: int, widths: list[int]) -> nn.Sequential:
    """Conv 4x4 stride 2 + ReLU per width, named conv1/relu1, ... (the attention target layers)."""
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    c = channels
    for i, w in enumerate(widths, 1):
        layers[f"conv{i}"] = nn.Conv2d(c, w, 4, 2, 1)
        layers[f"relu{i}"] = nn.ReLU()
        c = w
    return nn.Sequential(layers)


def resnet18_encoder(channels: int) -> nn.Sequential:
    """The ResNet18 trunk (conv1 .. layer4) as named children, untrained."""
    # weights=None: trained from scratch (nothing can be downloaded); first conv takes our channels
    r = torchvision.models.resnet18(weights=None)
    conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    return nn.Sequential(OrderedDict(conv1=conv1, bn1=r.bn1, relu=r.relu, maxpool=r.maxpool,
                                     layer1=r.layer1, layer2=r.layer2, layer3=r.layer3, layer4=r.layer4))


class Unflatten(nn.Module):
    """[N, C*H*W] -> [N, C, H, W]."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def conv_decoder(latent: int, hidden: int, channels: int, feat: tuple[int, int, int],
                 specs: list[tuple[int, int]]) -> nn.Sequential:
    """Tables 1-2: Linear-ReLU-Linear-ReLU-unflatten-ReLU, then ConvTr(k, out, 2, 1) with ReLU between."""
    c, h, w = feat
    layers: list[nn.Module] = [nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, c * h * w), nn.ReLU(),
                               Unflatten(feat), nn.ReLU()]
    for i, (k, out) in enumerate(specs):
        layers.append(nn.ConvTranspose2d(c, out, k, 2, 1))
        layers.append(nn.ReLU() if i < len(specs) - 1 else nn.Sigmoid())
        c = out
    return nn.Sequential(*layers)


def resnet_decoder(latent: int, channels: int, size: int) -> nn.Sequential:
    """Table 3: Linear 1024, Linear 1024 x s x s, then ConvTr(4, 2, 1)+BN+ReLU up to the input size.
    s = size / 64 (4 at 256x256). ReLUs after the linears as in tables 1-2 (two bare linears
    would collapse into one)."""
    s = size // 64
    widths = [512, 256, 128, 64, 32]
    layers: list[nn.Module] = [nn.Linear(latent, 1024), nn.ReLU(), nn.Linear(1024, 1024 * s * s), nn.ReLU(),
                               Unflatten((1024, s, s))]
    c = 1024
    for w in widths:
        layers += [nn.ConvTranspose2d(c, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Sigmoid()]
    return nn.Sequential(*layers)

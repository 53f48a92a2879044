"""The dSprites VAE of supplementary table 4 and FactorVAE's total-correlation discriminator.

Encoder (64x64x1): Conv 4x4 s2 p1 32-32-64-64 with ReLU (-> 4x4x64), Conv 4x4 128 s1 -> 1x1x128,
ReLU, then the last conv of the original FactorVAE replaced by two 1x1 convs for mu and logvar.
Decoder: 1x1 conv 128, ConvTr 4x4 64 s1 p0 (-> 4x4), ConvTr 4x4 s2 p1 64-32-32-1, ReLU between,
sigmoid out (the Bernoulli mean that the BCE reconstruction compares with the binary image).

The model is a `VAE` (same forward, preprocessing, layer names and buffers), so the attention
module, the checkpoints and the inference code treat it like the other architectures.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.models.blocks import conv_encoder
from training.models.vae import VAE

LAYERS = ("conv1", "relu1", "conv2", "relu2", "conv3", "relu3", "conv4", "relu4", "conv5", "relu5")


class FactorVAEModel(VAE):
    def __init__(self, latent: int, channels: int, config: dict[str, Any]) -> None:
        encoder = conv_encoder(channels, [32, 32, 64, 64])  # 64 -> 32 -> 16 -> 8 -> 4
        # Table 4 lists this layer as "Conv 2D 4x4, 128, 1, 1", but padding 1 on a 4x4 map gives
        # 3x3, not the 1x1x128 the table's output column (and the original FactorVAE) has: padding 0.
        encoder.add_module("conv5", nn.Conv2d(64, 128, 4, 1, 0))
        encoder.add_module("relu5", nn.ReLU())
        decoder = nn.Sequential(
            nn.Unflatten(1, (latent, 1, 1)), nn.Conv2d(latent, 128, 1), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 1, 0), nn.ReLU(),  # 1 -> 4
            nn.ConvTranspose2d(64, 64, 4, 2, 1), nn.ReLU(),  # 8
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),  # 16
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(),  # 32
            nn.ConvTranspose2d(32, channels, 4, 2, 1), nn.Sigmoid())  # 64
        super().__init__(encoder, 128, 128, latent, decoder, channels, False, config)
        # Table 4's heads are 1x1 convs on the 1x1x128 map, not the fully connected layer of VAE.
        self.fc = nn.Identity()
        self.fc_mu = nn.Conv2d(128, latent, 1)
        self.fc_logvar = nn.Conv2d(128, latent, 1)
        # He-normal weights and zero biases, as the reference FactorVAE code: with PyTorch's default
        # init the signal shrinks through the 11 ReLU layers (mu's std at init ~1e-3), the decoder
        # learns the mean image, the KL collapses the code and training stalls for thousands of steps.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def encode_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, mu, logvar = self.encode_at(x, None)
        return mu, logvar

    def encode_at(self, x: torch.Tensor, layer: str | None) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(activations of encoder layer `layer`, mu, logvar) from one pass: L_AD needs the
        feature maps and the code of the same forward, without hooks."""
        acts = None
        h = x
        for name, module in self.encoder.named_children():
            h = module(h)
            if name == layer:
                acts = h
        if layer is not None and acts is None:
            raise ValueError(f"unknown encoder layer '{layer}'; choose one of {LAYERS}")
        return (acts, *self.heads(h))

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) from the 128 features of conv5, [N, 128, 1, 1] or flattened [N, 128]."""
        h = h.reshape(h.shape[0], -1, 1, 1)
        return self.fc_mu(h).flatten(1), self.fc_logvar(h).flatten(1)


class Discriminator(nn.Module):
    """FactorVAE's total-correlation discriminator: 6 layers of 1000 units, LeakyReLU 0.2, two
    logits (0: a code of q(z), 1: a dimension-permuted code, i.e. a sample of prod_j q(z_j))."""

    def __init__(self, latent: int, hidden: int = 1000, layers: int = 6) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        width = latent
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        mods.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle each latent dimension independently across the batch (Kim & Mnih, Alg. 2):
    samples of the product of the marginals."""
    n, d = z.shape
    idx = torch.argsort(torch.rand(n, d, generator=generator), dim=0).to(z.device)
    return torch.gather(z, 0, idx)


def build_factorvae(cfg: dict[str, Any]) -> FactorVAEModel:
    """Build from the `model` section: {arch: factorvae, size: 64, channels: 1, latent: 10}."""
    size, channels, latent = int(cfg.get("size", 64)), int(cfg.get("channels", 1)), int(cfg.get("latent", 10))
    if size != 64:
        raise ValueError(f"arch factorvae is 64x64 (supp. table 4), not {size}")
    full = dict(cfg, arch="factorvae", size=size, channels=channels, latent=latent)
    return FactorVAEModel(latent, channels, full)

"""One-class VAEs: MNIST 28x28 (supp. table 1), UCSD 100x100 (table 2), ResNet18 256x256 (table 3).

All share one shape: Preprocess -> encoder features (conv stack or ResNet18 trunk) -> flatten ->
Linear(hidden) [-> ReLU] -> two heads (mu, logvar) ; z -> decoder -> sigmoid image in [0, 1].
The target layers for attention are named modules (`encoder.conv2`, `encoder.layer3`, ...).

The model also carries, as buffers, what inference needs from the normal training set, so that a
checkpoint and an exported graph are self-contained: the normal embedding distribution (Eq. 4)
and the scale of each map on normal images (for the fusion map).

Built by training.models.factory.build_model, which also builds the dSprites model (factorvae.py).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from training.models.blocks import conv_decoder, conv_encoder, resnet18_encoder, resnet_decoder
from training.preprocess import Preprocess

LOGVAR_LIMIT = 10.0  # logvar = LIMIT * tanh(raw / LIMIT), see VAE.heads


class VAEOutput(NamedTuple):
    mu: torch.Tensor
    logvar: torch.Tensor
    recon: torch.Tensor  # [N, C, H, W] in [0, 1]
    target: torch.Tensor  # preprocessed input in [0, 1], what recon is compared with


class VAE(nn.Module):
    def __init__(self, encoder: nn.Module, feat_dim: int, hidden: int, latent: int, decoder: nn.Module,
                 channels: int, fc_relu: bool, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)  # architecture description, saved with the checkpoint
        self.latent = latent
        self.preprocess = Preprocess(channels, config.get("mean", 0.5), config.get("std", 0.5))
        self.encoder = encoder
        self.fc = nn.Linear(feat_dim, hidden)
        # Without this ReLU, d sum(mu) / dA at the last conv layer is a constant: the attention
        # there is then a fixed channel weighting, the same on every image.
        self.fc_act = nn.ReLU() if fc_relu else nn.Identity()
        self.fc_mu = nn.Linear(hidden, latent)
        self.fc_logvar = nn.Linear(hidden, latent)
        self.decoder = decoder
        # Normal-data statistics, filled by training.stats after training (Eq. 4 and map scales).
        self.register_buffer("normal_mu", torch.zeros(latent))
        self.register_buffer("normal_var", torch.ones(latent))
        self.register_buffer("map_scale", torch.ones(2))  # [attention, recon_error_blur] on normals

    def encode_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.fc_act(self.fc(torch.flatten(self.encoder(x), 1))))

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) from the hidden features; separate so that export's explicit backward
        runs the very same head (export/graph.py)."""
        # Soft clamp to (-10, 10): with a 32768-wide head, Adam's first steps can push logvar
        # far enough that exp(logvar) overflows the KL (seen: KL 2e7 at step 1, a ruined decoder).
        return self.fc_mu(h), LOGVAR_LIMIT * torch.tanh(self.fc_logvar(h) / LOGVAR_LIMIT)

    def forward(self, image: torch.Tensor, eps: torch.Tensor | None = None) -> VAEOutput:
        """image: uint8 [N, H, W, C]. With eps (standard normal noise [N, D], training) z is drawn
        by reparameterization; without, z = mu. The caller owns the noise so that training is
        reproducible across resumes and data-parallel processes."""
        x01, x = self.preprocess(image)
        mu, logvar = self.encode_features(x)
        z = mu if eps is None else mu + eps * torch.exp(0.5 * logvar)
        return VAEOutput(mu, logvar, self.decoder(z), x01)

    def resolve_layer(self, name: str) -> nn.Module:
        """A target layer by name: 'encoder.layer3', or the short 'layer3' / 'conv2'."""
        modules = dict(self.named_modules())
        for candidate in (name, f"encoder.{name}"):
            if candidate in modules and candidate:
                return modules[candidate]
        choices = [n for n, _ in self.encoder.named_children()]
        raise ValueError(f"unknown layer '{name}'; choose one of {choices}")


VAE_ARCHS = ("mnist", "ucsd", "resnet18")  # the one-class architectures built here


def build_vae(full: dict[str, Any]) -> VAE:
    """A one-class VAE from a `model` section with every default filled in (factory.model_settings)."""
    arch, size, channels, latent, fc_relu = (full[k] for k in ("arch", "size", "channels", "latent", "fc_relu"))
    if arch == "mnist":
        if size != 28:
            raise ValueError("arch mnist is 28x28 (supp. table 1)")
        enc = conv_encoder(channels, [64, 128])
        dec = conv_decoder(latent, 1024, channels, (128, 7, 7), [(4, 64), (4, channels)])
        feat = 128 * 7 * 7
    elif arch == "ucsd":
        if size != 100:
            raise ValueError("arch ucsd is 100x100 (supp. table 2)")
        enc = conv_encoder(channels, [64, 128, 256])
        dec = conv_decoder(latent, 1024, channels, (256, 12, 12), [(5, 128), (4, 64), (4, channels)])
        feat = 256 * 12 * 12
    elif arch == "resnet18":
        if size % 64 or size < 64:
            raise ValueError(f"arch resnet18 needs a size that is a multiple of 64, not {size}")
        enc = resnet18_encoder(channels)
        dec = resnet_decoder(latent, channels, size)
        feat = 512 * (size // 32) ** 2
    else:
        raise ValueError(f"arch '{arch}' is not a one-class VAE; choose one of {VAE_ARCHS}")
    return VAE(enc, feat, 1024, latent, dec, channels, fc_relu, full)

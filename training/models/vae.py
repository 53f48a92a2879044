"""One-class VAEs: MNIST 28x28 (supp. table 1), UCSD 100x100 (table 2), ResNet18 256x256 (table 3).

All share one shape: Preprocess -> encoder features (conv stack or ResNet18 trunk) -> flatten ->
Linear(hidden) [-> ReLU] -> two heads (mu, logvar) ; z -> decoder -> sigmoid image in [0, 1].
The target layers for attention are named modules (`encoder.conv2`, `encoder.layer3`, ...).

The model also carries, as buffers, what inference needs from the normal training set, so that a
checkpoint and an exported graph are self-contained: the normal embedding distribution (Eq. 4)
and the scale of each map on normal images (for the fusion map).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import torch
import torchvision
from torch import nn

from training.preprocess import Preprocess


LOGVAR_LIMIT = 10.0  # logvar = LIMIT * tanh(raw / LIMIT), see VAE.heads


class VAEOutput(NamedTuple):
    mu: torch.Tensor
    logvar: torch.Tensor
    recon: torch.Tensor  # [N, C, H, W] in [0, 1]
    target: torch.Tensor  # preprocessed input in [0, 1], what recon is compared with


def _conv_encoder(channels: int, widths: list[int]) -> nn.Sequential:
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    c = channels
    for i, w in enumerate(widths, 1):
        layers[f"conv{i}"] = nn.Conv2d(c, w, 4, 2, 1)
        layers[f"relu{i}"] = nn.ReLU()
        c = w
    return nn.Sequential(layers)


def _resnet18_encoder(channels: int) -> nn.Sequential:
    # weights=None: trained from scratch (nothing can be downloaded); first conv takes our channels
    r = torchvision.models.resnet18(weights=None)
    conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    return nn.Sequential(OrderedDict(conv1=conv1, bn1=r.bn1, relu=r.relu, maxpool=r.maxpool,
                                     layer1=r.layer1, layer2=r.layer2, layer3=r.layer3, layer4=r.layer4))


class _Unflatten(nn.Module):
    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def _conv_decoder(latent: int, hidden: int, channels: int, feat: tuple[int, int, int],
                  specs: list[tuple[int, int]]) -> nn.Sequential:
    """Tables 1-2: Linear-ReLU-Linear-ReLU-unflatten-ReLU, then ConvTr(k, out, 2, 1) with ReLU between."""
    c, h, w = feat
    layers: list[nn.Module] = [nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, c * h * w), nn.ReLU(),
                               _Unflatten(feat), nn.ReLU()]
    for i, (k, out) in enumerate(specs):
        layers.append(nn.ConvTranspose2d(c, out, k, 2, 1))
        layers.append(nn.ReLU() if i < len(specs) - 1 else nn.Sigmoid())
        c = out
    return nn.Sequential(*layers)


def _resnet_decoder(latent: int, channels: int, size: int) -> nn.Sequential:
    """Table 3: Linear 1024, Linear 1024 x s x s, then ConvTr(4, 2, 1)+BN+ReLU up to the input size.
    s = size / 64 (4 at 256x256). ReLUs after the linears as in tables 1-2 (two bare linears
    would collapse into one)."""
    s = size // 64
    widths = [512, 256, 128, 64, 32]
    layers: list[nn.Module] = [nn.Linear(latent, 1024), nn.ReLU(), nn.Linear(1024, 1024 * s * s), nn.ReLU(),
                               _Unflatten((1024, s, s))]
    c = 1024
    for w in widths:
        layers += [nn.ConvTranspose2d(c, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Sigmoid()]
    return nn.Sequential(*layers)


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


ARCHS = ("mnist", "ucsd", "resnet18", "factorvae")


def model_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The `model` section with every default filled in (the one place they are decided), so
    that two configs can be compared for the model they build."""
    arch = cfg.get("arch", "resnet18")
    if arch == "factorvae":
        return dict(cfg, arch=arch)
    return dict(cfg, arch=arch, size=int(cfg["size"]), channels=int(cfg.get("channels", 1)),
                latent=int(cfg.get("latent", 32)), fc_relu=bool(cfg.get("fc_relu", arch != "resnet18")))


def build_model(cfg: dict[str, Any]) -> VAE:
    """Build from the `model` section of a config: arch, size, channels, latent, fc_relu."""
    if cfg.get("arch", "resnet18") == "factorvae":  # supp. table 4 (dSprites); imported here: it builds on VAE
        from training.models.factorvae import build_factorvae
        return build_factorvae(cfg)
    full = model_settings(cfg)
    arch, size, channels, latent, fc_relu = (full[k] for k in ("arch", "size", "channels", "latent", "fc_relu"))
    if arch == "mnist":
        if size != 28:
            raise ValueError("arch mnist is 28x28 (supp. table 1)")
        enc = _conv_encoder(channels, [64, 128])
        dec = _conv_decoder(latent, 1024, channels, (128, 7, 7), [(4, 64), (4, channels)])
        feat = 128 * 7 * 7
    elif arch == "ucsd":
        if size != 100:
            raise ValueError("arch ucsd is 100x100 (supp. table 2)")
        enc = _conv_encoder(channels, [64, 128, 256])
        dec = _conv_decoder(latent, 1024, channels, (256, 12, 12), [(5, 128), (4, 64), (4, channels)])
        feat = 256 * 12 * 12
    elif arch == "resnet18":
        if size % 64 or size < 64:
            raise ValueError(f"arch resnet18 needs a size that is a multiple of 64, not {size}")
        enc = _resnet18_encoder(channels)
        dec = _resnet_decoder(latent, channels, size)
        feat = 512 * (size // 32) ** 2
    else:
        raise ValueError(f"unknown arch '{arch}'; choose one of {ARCHS}")
    return VAE(enc, feat, 1024, latent, dec, channels, fc_relu, full)

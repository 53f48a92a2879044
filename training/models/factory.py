"""The one place a `model` section becomes a model: fills the defaults and picks the builder.

It imports both leaves (vae.py: the one-class VAEs, factorvae.py: the dSprites model built on
VAE), so neither has to import the other's builder.
"""
from __future__ import annotations

from typing import Any

from training.models.factorvae import build_factorvae
from training.models.vae import VAE, VAE_ARCHS, build_vae

ARCHS = (*VAE_ARCHS, "factorvae")


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
    arch = cfg.get("arch", "resnet18")
    if arch == "factorvae":  # supp. table 4 (dSprites)
        return build_factorvae(cfg)
    if arch not in VAE_ARCHS:
        raise ValueError(f"unknown arch '{arch}'; choose one of {ARCHS}")
    return build_vae(model_settings(cfg))

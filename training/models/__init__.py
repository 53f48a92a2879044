"""VAE architectures of the paper's supplementary tables 1-3 (vae.py) and 4 (factorvae.py);
factory.build_model builds any of them from a config's `model` section."""
from training.models.factory import build_model
from training.models.vae import VAE, VAEOutput

__all__ = ["VAE", "VAEOutput", "build_model"]

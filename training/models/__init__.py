"""VAE architectures of the paper's supplementary tables 1-3 (table 4 lives in factorvae.py)."""
from training.models.vae import VAE, VAEOutput, build_model

__all__ = ["VAE", "VAEOutput", "build_model"]

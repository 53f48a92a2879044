"""Normal-data statistics stored in the model after training: the embedding distribution of
the normal images (Eq. 4's mu^x, sigma^x) and the scale of each map on normal images."""
from __future__ import annotations

import numpy as np
import torch

from training.attention import explain
from training.maps import GaussianBlur, recon_error
from training.models import VAE


@torch.no_grad()
def _batches(images: np.ndarray, batch: int):
    for i in range(0, len(images), batch):
        yield torch.from_numpy(images[i:i + batch])


def fit_normal_stats(model: VAE, images: np.ndarray, layer: str, sigma: float, batch: int = 16,
                     device: str | torch.device = "cpu") -> None:
    """Fill model.normal_mu / normal_var (mixture moments of q(z|x) over the normal images) and
    model.map_scale (99th percentile of the attention and blurred reconstruction error)."""
    model.eval()
    mus, variances, att_q, err_q = [], [], [], []
    blur = GaussianBlur(sigma).to(device)
    for x in _batches(images, batch):
        e = explain(model, x.to(device), layer, "sum_mu")
        mus.append(e.mu.detach())
        variances.append(e.logvar.detach().exp())
        att_q.append(e.attention.detach().flatten(1).quantile(0.99, dim=1))
        err_q.append(blur(recon_error(e.target, e.recon.detach())).flatten(1).quantile(0.99, dim=1))
    mu = torch.cat(mus)
    model.normal_mu.copy_(mu.mean(0))
    model.normal_var.copy_(torch.cat(variances).mean(0) + mu.var(0, unbiased=False))
    scale = torch.stack([torch.cat(att_q).median(), torch.cat(err_q).median()])
    model.map_scale.copy_(scale.clamp_min(1e-8))

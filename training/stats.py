"""Normal-data statistics stored in the model after training: the embedding distribution of
the normal images (Eq. 4's mu^x, sigma^x) and the scale of each map on normal images."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.attention import attention_map, layer_gradients
from training.checkpoint import all_finite
from training.data import load_split, registration_of
from training.maps import GaussianBlur, recon_error
from training.models import VAE


@torch.no_grad()
def _batches(images: np.ndarray, batch: int):
    for i in range(0, len(images), batch):
        yield torch.from_numpy(images[i:i + batch])


def attention_scales(model: VAE, images: np.ndarray, layers: list[str], scores: list[str], batch: int = 16,
                     device: str | torch.device = "cpu") -> dict[tuple[str, str], float]:
    """The unit fusion divides an attention map by, for every (layer, score), from one forward
    and one backward per score over the images: the median over normal images of each map's 99th
    percentile. Each layer and score has its own (layer1's values are not layer3's)."""
    model.eval()
    q: dict[tuple[str, str], list[torch.Tensor]] = {(layer, score): [] for layer in layers for score in scores}
    for x in _batches(images, batch):
        out, acts, grads = layer_gradients(model, x.to(device), layers, scores)
        size = tuple(out.target.shape[-2:])
        for i, layer in enumerate(layers):
            for score in scores:
                att = attention_map(acts[i].detach(), grads[score][i], size)
                q[(layer, score)].append(att.flatten(1).quantile(0.99, dim=1))
    return {k: float(torch.cat(v).median().clamp_min(1e-8)) for k, v in q.items()}


def attention_scale(model: VAE, images: np.ndarray, layer: str, score: str, batch: int = 16,
                    device: str | torch.device = "cpu") -> float:
    return attention_scales(model, images, [layer], [score], batch, device)[(layer, score)]


def fit_normal_stats(model: VAE, images: np.ndarray, layer: str, score: str, sigma: float, batch: int = 16,
                     device: str | torch.device = "cpu") -> None:
    """Fill model.normal_mu / normal_var (mixture moments of q(z|x) over the normal images) and
    model.map_scale (99th percentile of the configured attention and the blurred reconstruction
    error). The embedding moments come first: the Eq. 4 score's attention depends on them."""
    model.eval()
    mus, variances, err_q = [], [], []
    blur = GaussianBlur(sigma).to(device)
    with torch.no_grad():
        for x in _batches(images, batch):
            o = model(x.to(device))
            mus.append(o.mu)
            variances.append(o.logvar.exp())
            err_q.append(blur(recon_error(o.target, o.recon)).flatten(1).quantile(0.99, dim=1))
    mu = torch.cat(mus)
    model.normal_mu.copy_(mu.mean(0))
    model.normal_var.copy_(torch.cat(variances).mean(0) + mu.var(0, unbiased=False))
    att_scale = attention_scale(model, images, layer, score, batch, device)
    scale = torch.tensor([att_scale, float(torch.cat(err_q).median())])
    model.map_scale.copy_(scale.clamp_min(1e-8))
    if not all_finite((model.normal_mu, model.normal_var, model.map_scale)):
        raise RuntimeError("the normal-data statistics are not finite (the model outputs NaN/inf on the training "
                           "images): the checkpoint is not marked ready")


def fusion_scales(model: VAE, config: dict[str, Any], layers: list[str], scores: list[str],
                  root: str | Path | None = None, device: str | torch.device = "cpu",
                  normal: np.ndarray | None = None) -> dict[tuple[str, str], float]:
    """Attention scale for each (layer, score) a benchmark fuses: the stored one for the
    configured pair; the others measured on the training images (`normal`, as the model sees them;
    read, with the model's registration, only when needed and not given)."""
    inf, mcfg = config["inference"], config["model"]
    configured = (inf["layer"], inf["score"])
    pairs = {(layer, score) for layer in layers for score in scores}
    stored = {configured: float(model.map_scale[0])} if configured in pairs else {}
    if len(stored) == len(pairs):
        return stored
    if normal is None:
        normal = load_split(config["data"], "train", mcfg["size"], mcfg.get("channels", 1), strict=False, root=root,
                            registration=registration_of(config)).images
    return {**attention_scales(model, normal, layers, scores, device=device), **stored}

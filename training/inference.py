"""The reference inference: every named output of the deployment contract, computed with autograd.

Evaluation and calibration use it, and export.check compares the exported graph against it, so
the numbers a benchmark reports are the numbers the deployed model produces.
Output names are the exported graph's (see docs/architecture.md, "The exported graph's contract").
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from training.attention import explain, per_dim_attention
from training.maps import AnomalyMap, recon_error
from training.models import VAE


# Maps that trust the decoder's absolute gray, which the SSIM loss leaves free: on screw the
# plain error of an ssim-trained model lit up the whole background at one seed (docs/benchmarks.md).
INTENSITY_MAPS = ("recon_error", "recon_error_blur", "fusion")


def inference_settings(config: dict[str, Any], **override: Any) -> dict[str, Any]:
    """The checkpoint's `inference` section with CLI overrides (None values ignored)."""
    inf = dict(config["inference"])
    inf.update({k: v for k, v in override.items() if v is not None})
    trained = config["inference"]
    if inf["anomaly_map"] == "fusion" and (inf["layer"], inf["score"]) != (trained["layer"], trained["score"]):
        raise ValueError(f"anomaly_map 'fusion' divides the attention by the scale fitted at training for layer "
                         f"'{trained['layer']}' and score '{trained['score']}'; export fusion with those, or "
                         "retrain with the wanted inference.layer / inference.score")
    if config.get("train", {}).get("loss") == "ssim" and inf["anomaly_map"] in INTENSITY_MAPS:
        warnings.warn(f"anomaly_map '{inf['anomaly_map']}' relies on the reconstruction's absolute gray, "
                      "which a model trained with loss 'ssim' does not learn; use ssim_error, or train "
                      "with loss ssim_l1 or mse", stacklevel=2)
    return inf


def reference_outputs(model: VAE, image: torch.Tensor, layer: str, score: str, anomaly_map: str,
                      blur_sigma: float, per_dim: bool = False, recon: bool | None = None) -> dict[str, torch.Tensor]:
    """uint8 [N, H, W, C] -> {mu, logvar, activations, gradients, attention, anomaly_map,
    recon_error (when the decoder is needed or recon=True), alpha (per_dim)}; all detached."""
    amap = AnomalyMap(anomaly_map, blur_sigma).to(image.device)
    e = explain(model, image, layer, score)
    out = {"mu": e.mu, "logvar": e.logvar, "activations": e.activations, "gradients": e.gradients,
           "attention": e.attention}
    with_recon = amap.needs_decoder if recon is None else (recon or amap.needs_decoder)
    err = recon_error(e.target, e.recon) if with_recon else None
    out["anomaly_map"] = amap(e.attention, e.target, e.recon, model.map_scale)
    if err is not None:
        out["recon_error"] = err
    if per_dim:
        out["alpha"] = per_dim_attention(model, image, layer)[1]
    return {k: v.detach() for k, v in out.items()}

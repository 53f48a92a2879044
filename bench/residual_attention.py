"""Attention on the feature residual: does the latent gradient's channel weighting localize a defect
once the part itself is subtracted out?

    python -m bench.residual_attention --checkpoint DIR/model.pt [--layers layer1 layer2 layer3]

The paper's attention (Eq. 2) weights a layer's features A(x), which trace the whole part. Here the
same alpha weights D = A(x) - A(x_hat), the features the reconstruction changed, and the `uniform`
variant (mean |D|, no gradient) is the control: alpha helps only if a gradient-weighted row beats
it. Residual maps are smoothed with the config's blur_sigma, like recon_error_blur. Prints a table
beside recon_error_blur, ssim_error and the trivial darkness map and writes
OUT/residual_attention_<checkpoint dir>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.attention import RESIDUAL_VARIANTS, SCORES, capture, layer_gradients, residual_attention
from core.files import write_json
from training.checkpoint import load_model
from training.data import load_split
from training.evaluate import compute_maps, format_table, score_maps
from training.maps import GaussianBlur
from training.models import VAE

REFERENCE_MAPS = ("recon_error_blur", "ssim_error", "trivial_darkness")


def residual_maps(model: VAE, images: np.ndarray, layers: list[str], sigma: float,
                  batch: int = 16) -> dict[str, np.ndarray]:
    """{residual/<layer>/<score>/<variant> and residual/<layer>/uniform: [N, H, W]}."""
    model.eval()
    blur = GaussianBlur(sigma)
    maps: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch):
        out, acts, grads = layer_gradients(model, torch.from_numpy(images[i:i + batch]), layers, list(SCORES))
        size = tuple(out.target.shape[-2:])
        with torch.no_grad(), capture([model.resolve_layer(n) for n in layers]) as stores:
            model.encoder(model.preprocess.normalize(out.recon))
        for li, layer in enumerate(layers):
            a, r = acts[li].detach(), stores[li][-1]
            keys = [(f"residual/{layer}/uniform", SCORES[0], "uniform")]
            keys += [(f"residual/{layer}/{s}/{v}", s, v) for s in SCORES for v in RESIDUAL_VARIANTS if v != "uniform"]
            for name, score, v in keys:
                m = blur(residual_attention(a, r, grads[score][li], size, v))
                maps.setdefault(name, []).append(m.detach()[:, 0].numpy())
    return {k: np.concatenate(v) for k, v in maps.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, config = load_model(args.checkpoint)
    mcfg, sigma = config["model"], float(config["inference"]["blur_sigma"])
    split = load_split(config["data"], "test", mcfg["size"], mcfg.get("channels", 1), strict=False)
    reference, _ = compute_maps(model, split, [], [], [], sigma)
    maps = {k: reference[k] for k in REFERENCE_MAPS} | residual_maps(model, split.images, args.layers, sigma)
    metrics = score_maps(maps, split)
    metrics = dict(sorted(((k, v) for k, v in metrics.items() if "pixel_auroc" in v),
                          key=lambda kv: kv[1]["aupro"], reverse=True))
    result = {"checkpoint": str(args.checkpoint), "blur_sigma": sigma, "metrics": metrics}
    out = Path(args.out) / f"residual_attention_{Path(args.checkpoint).parent.name}.json"
    write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.residual_attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--layers", nargs="+", default=["layer1", "layer2", "layer3"])
    p.add_argument("--out", default="bench/results")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    try:
        r = run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(r["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate localization: every map kind on a labelled test split, with the paper's metrics.

    python -m training.evaluate --checkpoint runs/screw/model.pt [--data DIR] [--layer NAME ...]
        [--score sum_mu|difference ...] [--variant eq2|abs|...] [--out DIR]

Maps (all raw, no per-image normalization):
  attention/<layer>/<score>/<variant>   gradient-based latent attention (Eq. 2-4 and variants)
  attention/<layer>/per_dim_mean        mean of the element-wise maps M^i (paper fig. 1-2)
  recon_error, recon_error_blur          |x - x_hat|, raw and Gaussian-smoothed
  ssim_error                             (1 - SSIM) x |x - x_hat|, smoothed (maps.structural_error)
  fusion/<layer>/<score>                 blurred error / s_r + attention / s_a (maps.AnomalyMap)
  trivial_darkness                       255 - I: "where the part is", the floor to beat
Image score is the max of each map; `kl` is the KL of q(z|x) as an image score.
Writes OUT/metrics.json and OUT/grid.png. Images that cannot be read are reported and skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.device import GRAMMAR, device_arg
from training.attention import VARIANTS, attention_variant, layer_gradients, per_dim_attention
from core.files import atomic_write, write_json
from training.checkpoint import load_model
from training.data import Split, load_split
from training.loop import torch_device
from training.losses import kl_divergence
from training.maps import AnomalyMap, GaussianBlur, fuse, recon_error
from core.metrics import localization_metrics, roc_auc
from training.models import VAE
from training.stats import fusion_scales


def compute_maps(model: VAE, split: Split, layers: list[str], scores: list[str], variants: list[str],
                 sigma: float, batch: int = 16, per_dim: bool = False, device: str | torch.device = "cpu",
                 scales: dict[tuple[str, str], float] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All maps [N, H, W] (float32) for the split, and the KL image score [N]. A fusion row for
    each (layer, score) in `scales` (stats.fusion_scales), with the eq2 attention."""
    # a name given twice would add its map twice per batch (twice the rows of the masks)
    layers, scores, variants = (list(dict.fromkeys(x)) for x in (layers, scores, variants))
    model.eval().to(device)
    blur = GaussianBlur(sigma).to(device)
    ssim_error = AnomalyMap("ssim_error", sigma).to(device)
    maps: dict[str, list[np.ndarray]] = {}
    kls = []

    def add(name: str, m: torch.Tensor) -> None:
        maps.setdefault(name, []).append(m.detach()[:, 0].float().cpu().numpy())

    for i in range(0, len(split), batch):
        x = torch.from_numpy(split.images[i:i + batch]).to(device)
        out, acts, grads = layer_gradients(model, x, layers, scores)
        size = tuple(out.target.shape[-2:])
        err = recon_error(out.target, out.recon).detach()
        err_blur = blur(err)
        add("recon_error", err)
        add("recon_error_blur", err_blur)
        add("ssim_error", ssim_error(None, out.target.detach(), out.recon.detach(), model.map_scale))
        for li, layer in enumerate(layers):
            for score in scores:
                for v in variants:
                    att = attention_variant(acts[li].detach(), grads[score][li], size, v)
                    add(f"attention/{layer}/{score}/{v}", att)
                    if v == "eq2" and (layer, score) in (scales or {}):
                        add(f"fusion/{layer}/{score}", fuse(err_blur, att, model.map_scale[1], scales[(layer, score)]))
            if per_dim:
                add(f"attention/{layer}/per_dim_mean", per_dim_attention(model, x, layer)[0].mean(1, keepdim=True))
        add("trivial_darkness", 1.0 - out.target.mean(1, keepdim=True))
        kls.append(kl_divergence(out.mu, out.logvar).detach().cpu().numpy())
    return {k: np.concatenate(v) for k, v in maps.items()}, np.concatenate(kls)


def mean_gray(images: np.ndarray) -> np.ndarray:
    """Mean intensity of each uint8 image [N, H, W, C] -> [N]."""
    return images.reshape(len(images), -1).mean(1)


def score_maps(maps: dict[str, np.ndarray], split: Split, kl: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    if split.masks is None:
        raise ValueError("the test split has no pixel masks: localization metrics need ground truth")
    n_bad = int(split.labels.sum())
    if n_bad == 0 or n_bad == len(split.labels):
        raise ValueError(f"the test split has {n_bad} defective (with masks) and {len(split.labels) - n_bad} good "
                         f"images ({len(split.skipped)} skipped): the metrics need both")
    table = {name: localization_metrics(split.masks, m, split.labels) for name, m in maps.items()}
    if kl is not None:
        table["kl"] = {"image_auroc": roc_auc(split.labels, kl)}
    # Image-level baseline beside every image AUROC: on the shared screw half the good test images
    # are darker than the defective ones, so plain mean brightness separates them (AUROC 1.0).
    table["trivial_brightness"] = {"image_auroc": roc_auc(split.labels, mean_gray(split.images))}
    return table


def save_grid(path: Path, split: Split, maps: dict[str, np.ndarray], columns: list[str], rows: int = 8) -> None:
    """PNG grid: input, ground truth, then each map in `columns` (overlaid on the input)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort([k for k in split.kinds], kind="stable")
    pick = order[np.linspace(0, len(order) - 1, min(rows, len(order))).astype(int)]
    cols = ["input", "ground truth", *columns]
    fig, axes = plt.subplots(len(pick), len(cols), figsize=(2.2 * len(cols), 2.2 * len(pick)), squeeze=False)
    for r, i in enumerate(pick):
        img = split.images[i][:, :, 0] if split.images.shape[-1] == 1 else split.images[i]
        for c, name in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray")
            if name == "ground truth" and split.masks is not None:
                ax.imshow(split.masks[i], cmap="Reds", alpha=0.5)
            elif name in maps:
                # one color scale per column (over all images): raw values stay comparable
                ax.imshow(maps[name][i], cmap="jet", alpha=0.5, vmin=0, vmax=float(np.quantile(maps[name], 0.999)))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name.replace("attention/", "att/"), fontsize=7)
        axes[r, 0].set_ylabel(split.names[i], fontsize=6)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"), ".png")
    plt.close(fig)


def evaluate(checkpoint: str | Path, data: str | Path | None, layers: list[str] | None, scores: list[str] | None,
             variants: list[str], out: Path | None, per_dim: bool = False,
             device: str | torch.device = "cpu") -> dict[str, Any]:
    model, config = load_model(checkpoint, device)
    inf = config["inference"]
    layers = layers or [inf["layer"]]
    scores = scores or [inf["score"]]
    mcfg = config["model"]
    try:
        split = load_split(config["data"], "test", mcfg["size"], mcfg.get("channels", 1), strict=False, root=data)
    except FileNotFoundError as e:
        if data is not None:
            raise
        raise FileNotFoundError(f"{e} (data.root as recorded in {checkpoint}; pass --data DIR)") from e
    for f, why in split.skipped:
        print(f"skipped {f}: {why}", file=sys.stderr)
    scales = fusion_scales(model, config, layers, scores, data, device)
    maps, kl = compute_maps(model, split, layers, scores, variants, float(inf["blur_sigma"]), per_dim=per_dim,
                            device=device, scales=scales)
    result = {"checkpoint": str(checkpoint), "images": len(split), "anomalous": int(split.labels.sum()),
              "skipped": [{"file": f, "reason": r} for f, r in split.skipped],
              "blur_sigma": inf["blur_sigma"], "metrics": score_maps(maps, split, kl)}
    if out is not None:
        write_json(out / "metrics.json", result)
        att = f"attention/{layers[0]}/{scores[0]}/{variants[0]}"
        save_grid(out / "grid.png", split, maps, [att, "recon_error", "recon_error_blur"])
    return result


def format_table(metrics: dict[str, dict[str, float]], extra: list[str] | None = None) -> str:
    keys = ["pixel_auroc", "best_iou", "aupro", "image_auroc", *(extra or [])]
    lines = [f"{'map':44s} " + " ".join(f"{k:>13s}" for k in keys)]
    for name, m in metrics.items():
        lines.append(f"{name:44s} " + " ".join(f"{m.get(k, float('nan')):13.3f}" for k in keys))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="test data root (default: the config's data.root)")
    p.add_argument("--layer", action="append", help="target layer (repeatable; default: the config's)")
    p.add_argument("--score", action="append", choices=["sum_mu", "difference"], help="latent score (repeatable)")
    p.add_argument("--variant", action="append", choices=list(VARIANTS), help="attention variant (default eq2)")
    p.add_argument("--per-dim", action="store_true", help="also the mean of the element-wise maps")
    p.add_argument("--out", type=Path, help="write metrics.json and grid.png here")
    p.add_argument("--device", default="cpu", type=device_arg, help=f"{GRAMMAR} (default cpu)")
    args = p.parse_args(argv)
    try:
        result = evaluate(args.checkpoint, args.data, args.layer, args.score, args.variant or ["eq2"], args.out,
                          args.per_dim, torch_device(args.device))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(result["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate localization: every map kind on a labelled test split, with the paper's metrics.

    python -m training.evaluate --checkpoint runs/screw/model.pt [--data DIR] [--layer NAME ...]
        [--score sum_mu|difference ...] [--variant eq2|abs|...] [--out DIR]

Maps (all raw, no per-image normalization):
  attention/<layer>/<score>/<variant>   gradient-based latent attention (Eq. 2-4 and variants)
  attention/<layer>/per_dim_mean        mean of the element-wise maps M^i (paper fig. 1-2)
  recon_error, recon_error_blur          |x - x_hat|, raw and Gaussian-smoothed
  ssim_error                             (1 - SSIM) x |x - x_hat|, smoothed (maps.structural_error)
  fusion/<layer>/<score>                 blurred error / s_r + attention / s_a (maps.AnomalyMap)
  template                               the training-free nearest-reference map (families.template.bank,
                                         k = 5, bank: the training images as the model saw them)
  template+<map>                         template / s_t + map / s_m, each divided by its normal scale
  trivial_darkness                       255 - I: "where the part is", the floor to beat
A model trained with registration sees registered images (the checkpoint's fitted spec, through
core.prepare as the runtime prepares them); every map is computed in that frame and warped back to
the image's own frame at model size (Split.to_original) before it is scored against the masks.
Image scores per map: its max (image_auroc), the mean of its top 1 % pixels (image_auroc_top1),
its area above the map's pixel 99.9th percentile on normal training images (image_auroc_area);
`kl` is the KL of q(z|x) as an image score; recall_at_fpr is the recall of a map's max at the
best threshold whose false-positive rate on the good images is <= --fpr (0.05). A split with image
labels only (MNIST one-class, an MVTec folder without ground_truth/) gets the image-level metrics,
and the pixel ones (pixel AUROC, best IoU, AUPRO) are skipped with a note. Writes
OUT/metrics.json and OUT/grid.png. Images that cannot be read or registered are reported and
skipped.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.cli import require_extra

require_extra("torch", "train", "evaluation")  # before torch: an edge install gets one line, not a traceback
import numpy as np
import torch

from core.device import GRAMMAR, device_arg
from core.files import atomic_write, write_json
from core.metrics import localization_metrics, normal_scale, roc_auc
from families.template.bank import TemplateBank
from training.attention import VARIANTS, attention_variant, layer_gradients, per_dim_attention
from training.checkpoint import load_model
from training.data import Split, load_split, registration_of
from training.loop import torch_device
from training.losses import kl_divergence
from training.maps import AnomalyMap, GaussianBlur, fuse, recon_error
from training.models import VAE
from training.stats import fusion_scales

TEMPLATE_K = 5                 # nearest references per image (families.template.bank's benchmark setting)
TEMPLATE_FUSED = ("recon_error_blur", "ssim_error")   # the VAE maps fused with the template
NORMAL_IMAGES = 64             # training images whose maps give each map's normal scale and p99.9
TOP_FRACTION = 0.01            # image score: the mean of a map's top 1 % pixels
AREA_QUANTILE = 0.999          # image score: the area above a map's normal 99.9th percentile
FPR = 0.05                     # recall_at_fpr's false-positive rate (calibration's default image rule)
NO_MASKS = ("the test split has no pixel masks (image labels only): pixel AUROC, best IoU and AUPRO are "
            "skipped; image-level metrics only")


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


def template_maps(bank: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The template map [N, h, w] of model inputs against a bank of good ones (the same frame)."""
    return TemplateBank(bank, k=TEMPLATE_K).anomaly_map(images)[:, 0]


def fuse_with_template(maps: dict[str, np.ndarray], scales: dict[str, float]) -> None:
    """Add template+<map> = template / s_t + map / s_m for each map of TEMPLATE_FUSED in `maps`."""
    for k in TEMPLATE_FUSED:
        if k in maps and "template" in maps:
            maps[f"template+{k}"] = maps["template"] / scales["template"] + maps[k] / scales[k]


def all_maps(model: VAE, test: Split, train: Split, layers: list[str], scores: list[str], variants: list[str],
             sigma: float, per_dim: bool = False, device: str | torch.device = "cpu",
             scales: dict[tuple[str, str], float] | None = None,
             extend: Callable[[dict[str, np.ndarray]], None] | None = None
             ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, float]]:
    """Every map of `test` in its images' own frame at model size (what is scored), the KL, and each
    map's pixel 99.9th percentile on normal images (the area image score's threshold).

    The maps are computed in the model's frame (compute_maps; the template against the `train`
    images), `extend` adds derived maps there, then each goes back through its image's
    registration. Normal maps: NORMAL_IMAGES training images, evenly spaced; their template map is
    taken against a bank of the other training images (against all of them each would find itself
    and map to zero). They also give the template fusions their scales."""
    if len(train) < 2:
        raise ValueError(f"{len(train)} training image(s): the template map and the normal scales need at least 2")
    held = np.unique(np.linspace(0, len(train) - 1, min(NORMAL_IMAGES, len(train) // 2)).astype(int))
    normal_split = train.subset(held)
    maps, kl = compute_maps(model, test, layers, scores, variants, sigma, per_dim=per_dim, device=device, scales=scales)
    normal, _ = compute_maps(model, normal_split, layers, scores, variants, sigma, per_dim=per_dim, device=device,
                             scales=scales)
    maps["template"] = template_maps(train.images, test.images)
    normal["template"] = template_maps(np.delete(train.images, held, axis=0), normal_split.images)
    for m in (maps, normal) if extend is not None else ():
        extend(m)
    fused = {k: normal_scale(normal[k]) for k in ("template", *TEMPLATE_FUSED) if k in normal}
    fuse_with_template(maps, fused)
    fuse_with_template(normal, fused)
    thresholds = {k: float(np.quantile(normal_split.to_original(v), AREA_QUANTILE)) for k, v in normal.items()}
    return {k: test.to_original(v) for k, v in maps.items()}, kl, thresholds


def mean_gray(images: np.ndarray) -> np.ndarray:
    """Mean intensity of each uint8 image [N, H, W, C] -> [N]."""
    return images.reshape(len(images), -1).mean(1)


def image_scores(m: np.ndarray, threshold: float | None = None) -> dict[str, np.ndarray]:
    """The image scores of maps [N, h, w]: max, mean of the top TOP_FRACTION pixels, and (with a
    normal threshold) the fraction of pixels above it."""
    flat = m.reshape(len(m), -1)
    k = max(1, int(round(TOP_FRACTION * flat.shape[1])))
    out = {"max": flat.max(1), "top1": np.partition(flat, -k, axis=1)[:, -k:].mean(1)}
    if threshold is not None:
        out["area"] = (flat > threshold).mean(1)
    return out


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = FPR) -> float:
    """The recall of the best threshold on `scores` whose false-positive rate on the good images
    (labels 0) is <= fpr: what a line calibrated at that FPR would catch, in-sample."""
    from sklearn.metrics import roc_curve

    f, r, _ = roc_curve(np.asarray(labels).astype(bool), np.asarray(scores, np.float64), drop_intermediate=False)
    return float(r[f <= fpr + 1e-12].max())


def score_maps(maps: dict[str, np.ndarray], split: Split, kl: np.ndarray | None = None,
               thresholds: dict[str, float] | None = None, fpr: float = FPR) -> dict[str, dict[str, float]]:
    """Metrics of maps [N, h, w] that lie in the masks' frame (all_maps' output): pixel AUROC, best
    IoU, AUPRO where the split has pixel masks, and for every split the image AUROC of each image
    score (image_auroc: the max) and the max's recall_at_fpr."""
    n_bad = int(split.labels.sum())
    if n_bad == 0 or n_bad == len(split.labels):
        raise ValueError(f"the test split has {n_bad} defective and {len(split.labels) - n_bad} good images "
                         f"({len(split.skipped)} skipped): the metrics need both")
    table = {}
    for name, m in maps.items():
        scores = image_scores(m, (thresholds or {}).get(name))
        table[name] = localization_metrics(split.masks, m, split.labels) if split.masks is not None else \
            {"image_auroc": roc_auc(split.labels, scores["max"])}
        table[name]["recall_at_fpr"] = recall_at_fpr(split.labels, scores["max"], fpr)
        for k, v in scores.items():
            if k != "max":
                table[name][f"image_auroc_{k}"] = roc_auc(split.labels, v)
    if kl is not None:
        table["kl"] = {"image_auroc": roc_auc(split.labels, kl)}
    # Image-level baseline beside every image AUROC: on the shared screw half the good test images
    # are darker than the defective ones, so plain mean brightness separates them (AUROC 1.0) unless
    # registration's lighting brings every background to one gray.
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
    # the maps lie in the images' own frame: so must the pictures under them (gray when registered)
    shown = split.images if split.registrations is None else split.to_original(split.images.mean(-1))[..., None]
    for r, i in enumerate(pick):
        img = shown[i][:, :, 0] if shown.shape[-1] == 1 else shown[i]
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


def load_splits(config: dict[str, Any], data: str | Path | None = None,
                checkpoint: str | Path | None = None) -> tuple[Split, Split]:
    """(test, train) as the model sees them: its size, channels and registration (the checkpoint's
    fitted spec). Unreadable and unregistrable images are skipped and reported on stderr."""
    mcfg = config["model"]
    args = (mcfg["size"], mcfg.get("channels", 1))
    try:
        test, train = (load_split(config["data"], s, *args, strict=False, root=data,
                                  registration=registration_of(config)) for s in ("test", "train"))
    except FileNotFoundError as e:
        if data is not None or checkpoint is None:
            raise
        raise FileNotFoundError(f"{e} (data.root as recorded in {checkpoint}; pass --data DIR)") from e
    for f, why in test.skipped:
        print(f"skipped {f}: {why}", file=sys.stderr)
    return test, train


def evaluate(checkpoint: str | Path, data: str | Path | None, layers: list[str] | None, scores: list[str] | None,
             variants: list[str], out: Path | None, per_dim: bool = False,
             device: str | torch.device = "cpu", fpr: float = FPR) -> dict[str, Any]:
    model, config = load_model(checkpoint, device)
    inf = config["inference"]
    layers = layers or [inf["layer"]]
    scores = scores or [inf["score"]]
    split, train = load_splits(config, data, checkpoint)
    scales = fusion_scales(model, config, layers, scores, normal=train.images, device=device)
    maps, kl, thresholds = all_maps(model, split, train, layers, scores, variants, float(inf["blur_sigma"]),
                                    per_dim=per_dim, device=device, scales=scales)
    result = {"checkpoint": str(checkpoint), "images": len(split), "anomalous": int(split.labels.sum()),
              "skipped": [{"file": f, "reason": r} for f, r in split.skipped],
              "registration": split.registration.to_mapping(),
              "blur_sigma": inf["blur_sigma"], "fpr": fpr, "note": NO_MASKS if split.masks is None else None,
              "metrics": score_maps(maps, split, kl, thresholds, fpr)}
    if out is not None:
        write_json(out / "metrics.json", result)
        att = f"attention/{layers[0]}/{scores[0]}/{variants[0]}"
        save_grid(out / "grid.png", split, maps, [att, "recon_error", "recon_error_blur", "template"])
    return result


def format_table(metrics: dict[str, dict[str, float]], extra: list[str] | None = None, pixel: bool = True) -> str:
    keys = [*(("pixel_auroc", "best_iou", "aupro") if pixel else ()), "image_auroc", *(extra or [])]
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
    p.add_argument("--fpr", type=float, default=FPR, help=f"the false-positive rate of recall_at_fpr (default {FPR})")
    args = p.parse_args(argv)
    if not 0.0 < args.fpr < 1.0:
        p.error(f"--fpr {args.fpr}: between 0 and 1, exclusive")
    try:
        result = evaluate(args.checkpoint, args.data, args.layer, args.score, args.variant or ["eq2"], args.out,
                          args.per_dim, torch_device(args.device), args.fpr)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result["note"]:
        print(f"note: {result['note']}", file=sys.stderr)
    print(format_table(result["metrics"], ["recall_at_fpr"], pixel=result["note"] is None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

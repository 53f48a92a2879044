"""Localization benchmark: train on train/good, evaluate every map on the labelled test split.

    python -m bench.localization --config configs/screw.yaml [--epochs N] [--checkpoint PT]

Prints one table (pixel AUROC, best IoU, AUPRO, image AUROC of three image scores: the map's max,
the mean of its top 1 % pixels, its area above the normal 99.9th percentile; and the mean
per-image correlation of each map with the trivial darkness map, i.e. how much a map only traces
the part) and writes OUT/<config>[_matched][_minmax]/localization.json and grid.png (OUT: --out,
default bench/results). --checkpoint skips training. A model trained with registration is scored
as training.evaluate scores it: registered inputs, every map warped back to the image's own frame
at model size; the `template` row (the nearest registered training references) is the
training-free baseline beside trivial_darkness.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.device import device_arg
from core.files import write_json
from training.attention import SCORES, VARIANTS
from training.checkpoint import load_model
from training.config import load_config, merge
from training.data import Split
from training.evaluate import all_maps, format_table, load_splits, mean_gray, save_grid, score_maps
from training.loop import torch_device
from training.maps import GaussianBlur
from training.stats import fusion_scales
from training.train import train

# the registration issue's targets (means over seeds; image AUROC with the lighting neutralized)
TARGETS = {"pixel_auroc": 0.975, "best_iou": 0.40, "aupro": 0.93, "image_auroc": 0.95}
IMAGE_SCORES = ("image_auroc_top1", "image_auroc_area")


def darkness_correlation(maps: np.ndarray, darkness: np.ndarray) -> float:
    """Mean over images of the Pearson correlation between a map and 255 - I."""
    a = maps.reshape(len(maps), -1).astype(np.float64)
    b = darkness.reshape(len(darkness), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    corr = np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-30), np.nan)
    # a constant map (layer4's input-independent attention) has no correlation, not a warning
    return float(np.nanmean(corr)) if np.isfinite(corr).any() else float("nan")


def extra_blurs(maps: dict[str, np.ndarray], sigmas: list[float]) -> None:
    raw = torch.from_numpy(maps["recon_error"][:, None])
    for s in sigmas:
        maps[f"recon_error_blur_s{s:g}"] = GaussianBlur(s)(raw)[:, 0].numpy()


def add_minmax(maps: dict[str, np.ndarray]) -> None:
    """Each map also min-max normalized per image, as the paper's figures show attention: a
    diagnostic of whether the paper's numbers need it, never a product setting (a threshold on
    such maps would mean something different on every image, and every good image gets a 1)."""
    for k in [k for k in maps if not k.startswith("trivial_")]:
        m = maps[k].reshape(len(maps[k]), -1)
        lo, hi = m.min(1, keepdims=True), m.max(1, keepdims=True)
        maps[f"{k}/minmax"] = ((m - lo) / np.maximum(hi - lo, 1e-12)).reshape(maps[k].shape).astype(np.float32)


def match_brightness(split: Split, reference: np.ndarray) -> Split:
    """The test images scaled so that each one's mean gray equals the training images' mean: a
    diagnostic for the shared half's lighting shift (its good images are darker), not a product
    preprocessing step."""
    target = float(reference.mean())
    scaled = split.images.astype(np.float32) * (target / np.maximum(mean_gray(split.images), 1.0))[:, None, None, None]
    return replace(split, images=np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    if args.epochs:
        config = merge(config, {"train": {"epochs": args.epochs}})
    name = Path(args.config).stem + ("_matched" if args.match_brightness else "") + ("_minmax" if args.minmax else "")
    out = Path(args.out) / name
    started = time.time()
    if args.checkpoint:
        ckpt, train_s = Path(args.checkpoint), None
    else:
        ckpt = train(config, out / "run", torch_device(args.device), progress=not args.quiet)
        train_s = time.time() - started
    model, config = load_model(ckpt)
    mcfg, inf = config["model"], config["inference"]
    split, normal = load_splits(config)
    if args.match_brightness:
        split = match_brightness(split, normal.images)
    t0 = time.time()
    scales = fusion_scales(model, config, args.layers, args.scores, normal=normal.images)
    maps, kl, thresholds = all_maps(model, split, normal, args.layers, args.scores, args.variants,
                                    float(inf["blur_sigma"]), per_dim=True, scales=scales,
                                    extend=lambda m: extra_blurs(m, args.sigmas))
    if args.minmax:
        add_minmax(maps)
    eval_s = time.time() - t0
    metrics = score_maps(maps, split, kl, thresholds)
    for k, m in maps.items():  # maps only: kl and trivial_brightness are image scores
        metrics[k]["darkness_corr"] = darkness_correlation(m, maps["trivial_darkness"])
    ranked = sorted((k for k in metrics if k != "kl" and not k.startswith("trivial_")),
                    key=lambda k: (metrics[k]["aupro"], metrics[k]["best_iou"]), reverse=True)
    best_att = next(k for k in ranked if k.startswith("attention/"))
    best_vae = next(k for k in ranked if not k.startswith("template"))
    result = {
        "config": str(args.config), "model": mcfg, "train": config["train"], "inference": inf,
        "registration": split.registration.to_mapping(),
        "epochs": config["train"]["epochs"], "train_seconds": train_s, "eval_seconds": eval_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "test_images": len(split), "anomalous": int(split.labels.sum()),
        "skipped": [{"file": f, "reason": r} for f, r in split.skipped],
        "metrics": metrics, "best_map": ranked[0], "best_vae_map": best_vae, "best_attention": best_att,
        "targets": TARGETS, "targets_met_by_best": {k: metrics[ranked[0]][k] >= v for k, v in TARGETS.items()},
    }
    write_json(out / "localization.json", result)
    save_grid(out / "grid.png", split, maps, [best_att, "recon_error", best_vae, "template"])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.localization", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--epochs", type=int)
    p.add_argument("--checkpoint", help="evaluate this checkpoint instead of training")
    p.add_argument("--layers", nargs="+", default=["layer1", "layer2", "layer3", "layer4"])
    p.add_argument("--scores", nargs="+", default=list(SCORES), choices=list(SCORES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--sigmas", nargs="+", type=float, default=[2.0, 8.0], help="extra blur sigmas for recon error")
    p.add_argument("--match-brightness", action="store_true",
                   help="diagnostic: scale each test image to the training images' mean gray (results in <config>_matched/)")
    p.add_argument("--minmax", action="store_true",
                   help="diagnostic: also every map min-max normalized per image (results in <config>_minmax/)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--device", default="auto", type=device_arg)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    try:
        r = run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(r["metrics"], extra=[*IMAGE_SCORES, "darkness_corr"]))
    print(f"\nepochs {r['epochs']}  train {r['train_seconds'] or 0:.0f} s  eval {r['eval_seconds']:.0f} s  "
          f"peak RSS {r['peak_rss_mb']:.0f} MB  size {r['model']['size']}")
    print(f"best map: {r['best_map']}  best VAE map: {r['best_vae_map']}  best attention: {r['best_attention']}  "
          f"targets met: {r['targets_met_by_best']}")
    if r["skipped"]:
        print(f"{len(r['skipped'])} test image(s) skipped (unreadable or not registrable): listed in localization.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Paper fig. 4: a one-class VAE trained on the digit 1; attention on the other digits.

    python -m bench.mnist_attention [--config configs/mnist_one_class.yaml] [--epochs N]

Writes bench/results/mnist_one_class/fig4.png (rows: digits 2-9, columns: input and attention for
each requested layer/score) and fig4.json with two numbers behind the paper's claim that the
attention on a "7" marks its top bar:
  top-quarter share  the share of each digit's attention mass in the image's top quarter, for 7s
                     and for the other digits (a map that marks the bar scores higher on 7s)
  bar lift           on 7s only: the share of the map's mass in the bar band (the top 30 % of
                     the 7's own bounding box) divided by the band's share of the image area;
                     1 = spread evenly, the bar-marking claim needs > 1, and more than the
                     reconstruction error's, which marks the bar because a 1 lacks it.
Layers relu1, relu2 (Eq. 2 as written) and conv2 with abs (the official code's target, encoder.2,
a conv output before its ReLU, with |.| instead of ReLU).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core.files import atomic_write, write_json

from training.checkpoint import load_model
from training.config import load_config, merge
from training.data import load_split
from training.evaluate import compute_maps
from training.train import train


def top_share(maps: np.ndarray, rows: int) -> np.ndarray:
    """Share of each map's mass in its first `rows` rows: [N]."""
    total = maps.reshape(len(maps), -1).sum(1)
    return maps[:, :rows].reshape(len(maps), -1).sum(1) / np.maximum(total, 1e-12)


def bar_band(images: np.ndarray, fraction: float = 0.3) -> np.ndarray:
    """bool [N, H, W]: the top `fraction` of rows of each digit's bounding box (ink > half of max)."""
    band = np.zeros(images.shape[:3], bool)
    for i, im in enumerate(images[..., 0].astype(np.float32)):
        rows = np.flatnonzero(im.max(1) > 0.5 * im.max())
        if len(rows):
            band[i, rows[0]:rows[0] + max(1, int(round(fraction * (rows[-1] - rows[0] + 1))))] = True
    return band


def bar_lift(maps: np.ndarray, band: np.ndarray) -> float:
    """Mean over images of (map mass in band / total) / (band area / image area)."""
    m = np.clip(maps, 0, None)
    share = (m * band).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1e-12)
    return float((share / np.maximum(band.mean((1, 2)), 1e-12)).mean())


def figure(path: Path, images: np.ndarray, digits: list[str], maps: dict[str, np.ndarray], names: list[str],
           per_digit: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(d, i) for d in sorted(set(digits) - {"1"}) for i in [j for j, x in enumerate(digits) if x == d][:per_digit]]
    fig, axes = plt.subplots(len(names) + 1, len(rows), figsize=(0.9 * len(rows), 1.0 * (len(names) + 1)), squeeze=False)
    for c, (d, i) in enumerate(rows):
        axes[0, c].imshow(images[i, :, :, 0], cmap="gray")
        axes[0, c].set_title(d, fontsize=7)
        for r, n in enumerate(names, 1):
            axes[r, c].imshow(images[i, :, :, 0], cmap="gray")
            axes[r, c].imshow(maps[n][i], cmap="jet", alpha=0.55)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    for r, n in enumerate(names, 1):
        axes[r, 0].set_ylabel(n.replace("attention/", ""), fontsize=5)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), ".png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mnist_attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/mnist_one_class.yaml")
    p.add_argument("--epochs", type=int)
    p.add_argument("--checkpoint", help="use this checkpoint instead of training")
    p.add_argument("--out", default="bench/results/mnist_one_class")
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be at least 1")
    try:
        return run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(2)
    out = Path(args.out)
    config = load_config(args.config)
    if args.epochs:
        config = merge(config, {"train": {"epochs": args.epochs}})
    t0 = time.time()
    ckpt = Path(args.checkpoint) if args.checkpoint else train(config, out / "run", torch.device("cpu"), progress=False)
    train_s = time.time() - t0
    model, config = load_model(ckpt)
    test = load_split(config["data"], "test", 28, 1, strict=True)
    layers, scores = ["relu1", "conv2", "relu2"], ["sum_mu", "difference"]
    maps, _ = compute_maps(model, test, layers, scores, ["eq2", "abs"], 1.0)
    names = [f"attention/{l}/{s}/eq2" for l in ("relu1", "relu2") for s in scores]
    names += [f"attention/conv2/{s}/abs" for s in scores] + ["recon_error"]
    figure(out / "fig4.png", test.images, test.kinds, maps, names)
    digits = np.array(test.kinds)
    sevens = digits == "7"
    band = bar_band(test.images[sevens])
    result = {"train_seconds": train_s, "epochs": config["train"]["epochs"], "test_images": len(test),
              "sevens": int(sevens.sum()), "top_quarter_share": {}, "bar_lift": {}}
    print(f"{'map':36s} {'7: top-quarter share':>22s} {'other digits':>14s} {'7: bar lift':>12s}")
    for n in names:
        share = top_share(maps[n], 7)
        seven, other = float(share[sevens].mean()), float(share[~sevens & (digits != "1")].mean())
        lift = bar_lift(maps[n][sevens], band)
        result["top_quarter_share"][n] = {"seven": seven, "others": other}
        result["bar_lift"][n] = lift
        print(f"{n:36s} {seven:22.3f} {other:14.3f} {lift:12.2f}")
    write_json(out / "fig4.json", result)
    print(f"wrote {out / 'fig4.png'} (train {train_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a dSprites model: the FactorVAE metric, reconstruction error and the fig. 9 figure.

    python -m training.disentanglement --checkpoint runs/dsprites_ad_factorvae/model.pt
        [--compare runs/dsprites_factorvae/model.pt] [--png fig9.png] [--json metrics.json]
        [--data dsprites_ndarray_*.npz] [--num-train 10000] [--num-eval 5000] [--seed 0]

Prints train/eval accuracy of the FactorVAE metric (disentanglement_lib protocol on the encoder
mean), active dimensions and the reconstruction error as paper fig. 8 plots it (per-image summed
BCE, z sampled from q(z|x), mean over `--recon-images` random images). The PNG follows fig. 9:
inputs on top, then for each model the attention of the latent dimension with the highest
response |mu| and of the next one (`--compare` adds a second model's two rows, e.g. the baseline).
Exit codes: 0 done, 1 failure (message names the file), 2 usage.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.cli import require
from core.device import GRAMMAR, device_arg
from core.files import atomic_write, write_json
from training.checkpoint import load_model
from training.data.dsprites import SHAPES, DSprites, load_dsprites
from training.factorvae_train import dims_attention, top_dims
from training.loop import torch_device
from training.losses import vae_loss
from training.metrics.factorvae import factor_vae_metric
from training.models.factorvae import FactorVAEModel


def load_factorvae(path: str | Path, device: str | torch.device = "cpu") -> tuple[FactorVAEModel, dict[str, Any]]:
    """A trained dSprites model (eval mode) and its config."""
    model, config = load_model(path, device, arch="factorvae")
    return model.to(device), config  # type: ignore[return-value]


def encoder_mean(model: FactorVAEModel, batch: int = 1024) -> Any:
    """The representation the metric scores: uint8 images [N, 64, 64, 1] -> mu [N, D] (numpy)."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def represent(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch):
            x = model.preprocess(torch.from_numpy(images[i:i + batch]).to(device))[1]
            out.append(model.encode_features(x)[0].cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    return represent


@torch.no_grad()
def reconstruction_error(model: FactorVAEModel, data: DSprites, n: int = 10_000, seed: int = 0, batch: int = 1000) -> float:
    """Mean per-image summed BCE of images drawn uniformly, z ~ q(z|x) with seeded noise (the
    reconstruction term of the training objective, as paper fig. 8 and Kim & Mnih plot it)."""
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    idx = rng.integers(0, len(data), n)
    total = 0.0
    for i in range(0, n, batch):
        image = torch.from_numpy(data.images(idx[i:i + batch])).to(device)
        eps = torch.randn(len(image), model.latent, generator=g).to(device)
        o = model(image, eps)
        total += float(vae_loss(o.recon, o.target, o.mu, o.logvar, "bce").recon) * len(image)
    return total / n


def evaluate(model: FactorVAEModel, data: DSprites, seed: int = 0, num_train: int = 10_000, num_eval: int = 5_000,
             num_variance: int = 10_000, recon_images: int = 10_000) -> dict[str, Any]:
    t0 = time.time()
    score = factor_vae_metric(data, encoder_mean(model), seed, 64, num_train, num_eval, num_variance)
    recon = reconstruction_error(model, data, recon_images, seed)
    return {**score.summary(), "recon_error": recon, "latent": model.latent,
            "active": score.active.tolist(), "global_std": np.sqrt(score.global_variance).round(4).tolist(),
            "protocol": {"seed": seed, "batch_size": 64, "num_train": num_train, "num_eval": num_eval,
                         "num_variance": num_variance, "prune_std": 0.05, "recon_images": recon_images},
            "eval_seconds": round(time.time() - t0, 1)}


def figure_inputs(data: DSprites, n: int = 5, seed: int = 0) -> np.ndarray:
    """n images cycling through the three shapes, other factors random (seeded): uint8 [n, 64, 64, 1]."""
    f = data.sample_factors(n, np.random.default_rng(seed))
    f[:, 0] = np.arange(n) % len(SHAPES)
    return data.images_for_factors(f)


def top2_maps(model: FactorVAEModel, images: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Attention of the two strongest dimensions per image (the maps L_AD separates): maps
    [N, 2, 64, 64] and the dimensions [N, 2]."""
    device = next(model.parameters()).device
    with torch.enable_grad():
        x01, x = model.preprocess(torch.from_numpy(images).to(device))
        acts, mu, _ = model.encode_at(x, layer)
        dims = top_dims(mu)
        maps = dims_attention(acts, mu, dims, tuple(x01.shape[-2:]))
    return maps.detach().cpu().numpy(), dims.cpu().numpy()


def figure9(rows: list[tuple[str, FactorVAEModel, str]], images: np.ndarray, path: str | Path) -> None:
    """Paper fig. 9: inputs, then for each (label, model, layer) the top-1 and top-2 attention maps
    over the input. Colors are scaled per map for display only (the maps themselves are raw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1 + 2 * len(rows), n, figsize=(1.6 * n, 1.7 * (1 + 2 * len(rows))), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j, :, :, 0], cmap="gray", vmin=0, vmax=255)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for r, (label, model, layer) in enumerate(rows):
        maps, dims = top2_maps(model, images, layer)
        for k in range(2):
            ax_row = axes[1 + 2 * r + k]
            ax_row[0].set_ylabel(f"{label}\n{'highest' if k == 0 else 'next'}", fontsize=8)
            for j in range(n):
                ax_row[j].imshow(images[j, :, :, 0], cmap="gray", vmin=0, vmax=255)
                m = maps[j, k]
                ax_row[j].imshow(m / m.max() if m.max() > 0 else m, cmap="jet", alpha=0.55, vmin=0, vmax=1)
                ax_row[j].set_title(f"z{dims[j, k]}", fontsize=7, pad=2)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), suffix=".png")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.disentanglement", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model.pt of a dSprites model (configs/dsprites_*.yaml)")
    p.add_argument("--compare", help="a second checkpoint (e.g. the FactorVAE baseline) for the figure and the table")
    p.add_argument("--data", help="official dsprites_ndarray_*.npz (default: the project's render, cached)")
    p.add_argument("--png", help="fig. 9 style figure (default: fig9.png beside the checkpoint)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=10_000, help="training votes (disentanglement_lib: 10000)")
    p.add_argument("--num-eval", type=int, default=5_000, help="evaluation votes (disentanglement_lib: 5000)")
    p.add_argument("--num-variance", type=int, default=10_000, help="images for the global variance (10000)")
    p.add_argument("--recon-images", type=int, default=10_000, help="images for the reconstruction error")
    p.add_argument("--images", type=int, default=5, help="inputs in the figure (paper: 5)")
    p.add_argument("--device", default="cpu", type=device_arg, help=f"{GRAMMAR} (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require(build_parser(), checkpoint=args.checkpoint)
    for name in ("num_train", "num_eval", "num_variance", "recon_images", "images"):
        if getattr(args, name) < 1:
            build_parser().error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        device = torch_device(args.device)
        paths = [args.checkpoint] + ([args.compare] if args.compare else [])
        models = [(p, *load_factorvae(p, device)) for p in paths]
        data = load_dsprites(args.data)
        results: dict[str, Any] = {}
        for p, model, _ in models:
            r = evaluate(model, data, args.seed, args.num_train, args.num_eval, args.num_variance, args.recon_images)
            results[str(p)] = r
            print(f"{p}: FactorVAE metric train {r['train_accuracy']:.3f} eval {r['eval_accuracy']:.3f} | "
                  f"active dims {r['active_dims']}/{r['latent']} | recon error {r['recon_error']:.1f} "
                  f"({r['eval_seconds']:.0f} s)")
        png = Path(args.png) if args.png else Path(args.checkpoint).parent / "fig9.png"
        rows = [(Path(p).parent.name or str(p), m, c["inference"]["layer"]) for p, m, c in models]
        figure9(rows[::-1], figure_inputs(data, args.images, args.seed), png)  # baseline first, as fig. 9
        print(f"wrote {png}")
        if args.json:
            write_json(args.json, results)
            print(f"wrote {args.json}")
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

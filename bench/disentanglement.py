"""Paper fig. 8 on a CPU budget: beta-VAE, FactorVAE and AD-FactorVAE trained with the same seed
and number of steps, then scored with the FactorVAE metric and the reconstruction error.

    python -m bench.disentanglement [--steps 2000] [--latent 10] [--seed 0] [--threads 1]
        [--num-train 10000] [--num-eval 5000] [--lr 1e-4] [--models beta_vae,factorvae,ad_factorvae]

Trains from configs/dsprites_<model>.yaml (only steps, latent, seed and, if given, lr are
overridden) into runs/bench_disentanglement/<tag>/<model>/model.pt, prints a table (metric
train/eval accuracy, active dims, reconstruction error, wall time) and writes
bench/results/disentanglement_<tag>.json and a fig. 9 style PNG beside it (git-ignored).
--reuse skips training where a checkpoint of the same config and full budget exists. Exit codes: 0, 1 failure, 2 usage.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from core.files import write_json

from training.checkpoint import load_checkpoint
from training.config import load_config, merge
from training.data.dsprites import load_dsprites
from training.disentanglement import evaluate, figure9, figure_inputs, load_factorvae
from core.device import device_arg
from training.factorvae_train import train
from training.loop import torch_device

REPO = Path(__file__).resolve().parents[1]
MODELS = ("beta_vae", "factorvae", "ad_factorvae")
# name -> (config, train overrides): the three of fig. 8 (AD with alpha detached, the config's
# default), and AD with gradients through alpha too, for the detach_alpha comparison.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "beta_vae": ("dsprites_beta_vae", {}), "factorvae": ("dsprites_factorvae", {}),
    "ad_factorvae": ("dsprites_ad_factorvae", {}),
    "ad_factorvae_full": ("dsprites_ad_factorvae", {"detach_alpha": False})}
LABELS = {"beta_vae": "beta-VAE", "factorvae": "FactorVAE", "ad_factorvae": "AD-FactorVAE",
          "ad_factorvae_full": "AD-FV alpha"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.disentanglement", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="training steps per model (the paper: 300000)")
    p.add_argument("--latent", type=int, default=10, help="latent size (FactorVAE: 10; the paper's table 4: 32)")
    p.add_argument("--seed", type=int, default=0, help="training and metric seed, the same for every model")
    p.add_argument("--lr", type=float, help="override the VAE learning rate of every config (paper: 1e-4)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--num-train", type=int, default=10_000, help="metric training votes (disentanglement_lib: 10000)")
    p.add_argument("--num-eval", type=int, default=5_000, help="metric evaluation votes (disentanglement_lib: 5000)")
    p.add_argument("--num-variance", type=int, default=10_000, help="images for the metric's global variance")
    p.add_argument("--recon-images", type=int, default=10_000, help="images for the reconstruction error")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--data", help="official dsprites_ndarray_*.npz (default: the project's render)")
    p.add_argument("--device", default="cpu", type=device_arg)
    p.add_argument("--out", default=str(REPO / "runs" / "bench_disentanglement"), help="checkpoint folder")
    p.add_argument("--results", default=str(REPO / "bench" / "results"), help="JSON and PNG folder")
    p.add_argument("--reuse", action="store_true", help="reuse checkpoints that already have the full budget")
    return p


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<13} {'steps':>6} {'metric train':>12} {'metric eval':>11} {'active':>6} {'recon':>7} {'train s':>8} {'eval s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{LABELS[r['model']]:<13} {r['steps']:>6} {r['train_accuracy']:>12.3f} {r['eval_accuracy']:>11.3f} "
                     f"{r['active_dims']:>3}/{r['latent']:<2} {r['recon_error']:>7.1f} {r['train_seconds']:>8.0f} "
                     f"{r['eval_seconds']:>7.0f}")
    return "\n".join(lines)


def ordering(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Does the paper's ordering AD-FactorVAE > FactorVAE > beta-VAE hold on eval accuracy?"""
    acc = {r["model"]: r["eval_accuracy"] for r in rows}
    if not set(MODELS) <= set(acc):
        return {"checked": False}
    return {"checked": True, "ad_gt_factorvae": acc["ad_factorvae"] > acc["factorvae"],
            "factorvae_gt_beta_vae": acc["factorvae"] > acc["beta_vae"],
            "holds": acc["ad_factorvae"] > acc["factorvae"] > acc["beta_vae"]}


def _same_run(ckpt: dict[str, Any], cfg: dict[str, Any], steps: int) -> bool:
    """Reuse a checkpoint only if it has the full budget and was trained with this very model and
    train config (a changed config default must not silently reuse an old model)."""
    old = ckpt.get("config") or {}
    return (int(ckpt.get("step", 0)) >= steps and old.get("model") == cfg["model"]
            and old.get("train") == cfg["train"])


def merged_rows(path: Path, rows: list[dict[str, Any]], protocol: dict[str, Any]) -> list[dict[str, Any]]:
    """This run's rows plus the rows of other models already in `path` when they were measured
    with the same metric protocol: a seed run as several invocations (--models a, then b) keeps
    every model's row instead of the last invocation's."""
    import json

    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        old = {}
    if not isinstance(old, dict) or old.get("metric_protocol") != protocol:
        return rows
    ran = {r["model"] for r in rows}
    kept = [r for r in old.get("rows") or [] if isinstance(r, dict) and r.get("model") not in ran]
    order = {m: i for i, m in enumerate(VARIANTS)}
    return sorted(kept + rows, key=lambda r: order.get(r["model"], len(order)))


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    torch.set_num_threads(args.threads)
    device = torch_device(args.device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    tag = f"latent{args.latent}_steps{args.steps}_seed{args.seed}" + (f"_lr{args.lr:g}" if args.lr else "")
    t0 = time.time()
    data = load_dsprites(args.data)
    print(f"dSprites from {data.source} in {data.seconds:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []
    for name in models:
        config_name, variant = VARIANTS[name]
        cfg = load_config(REPO / "configs" / f"{config_name}.yaml")
        over: dict[str, Any] = {"model": {"latent": args.latent},
                                "train": {**variant, "steps": args.steps, "seed": args.seed, "epochs": None,
                                          "log_every": max(1, args.steps // 20), "checkpoint_every": max(1, args.steps // 4)}}
        if args.lr:
            over["train"]["lr"] = args.lr
        cfg = merge(cfg, over)
        out = Path(args.out) / tag / name
        ckpt = out / "model.pt"
        started = time.time()
        if args.reuse and ckpt.is_file() and _same_run(load_checkpoint(ckpt), cfg, args.steps):
            print(f"{LABELS[name]}: reusing {ckpt}", flush=True)
        else:
            print(f"{LABELS[name]}: training {args.steps} steps -> {ckpt}", flush=True)
            train(cfg, out, device, resume=False, max_steps=args.steps, progress=False, data=data)
        hist = load_checkpoint(ckpt).get("history") or [{}]
        train_seconds = float(hist[-1].get("seconds", time.time() - started))
        model, _ = load_factorvae(ckpt, device)
        r = evaluate(model, data, args.seed, args.num_train, args.num_eval, args.num_variance, args.recon_images)
        row = {"model": name, "steps": args.steps, "train_seconds": round(train_seconds, 1), "checkpoint": str(ckpt),
               "train": {k: cfg["train"][k] for k in ("lr", "beta", "gamma", "lambda_ad", "detach_alpha", "batch_size")
                         if k in cfg["train"]}, "last_log": hist[-1], **r}
        rows.append(row)
        print(f"{LABELS[name]}: metric train {r['train_accuracy']:.3f} eval {r['eval_accuracy']:.3f}, active "
              f"{r['active_dims']}/{r['latent']}, recon {r['recon_error']:.1f}, train {train_seconds:.0f} s, "
              f"eval {r['eval_seconds']:.0f} s", flush=True)
    print()
    print(table(rows))
    order = ordering(rows)
    if order["checked"]:
        print(f"\nordering AD-FactorVAE > FactorVAE > beta-VAE (eval accuracy): {'holds' if order['holds'] else 'does NOT hold'}"
              f" (AD > FV: {order['ad_gt_factorvae']}, FV > beta: {order['factorvae_gt_beta_vae']})")
    results = Path(args.results)
    path = results / f"disentanglement_{tag}.json"
    protocol = {"num_train": args.num_train, "num_eval": args.num_eval, "num_variance": args.num_variance,
                "batch_size": 64, "prune_std": 0.05, "recon_images": args.recon_images, "data": data.source}
    rows = merged_rows(path, rows, protocol)
    order = ordering(rows)
    report = {"command": "python -m bench.disentanglement " + " ".join(sys.argv[1:] if argv is None else argv),
              "tag": tag, "budget": {"steps": args.steps, "batch_size": 64, "threads": args.threads, "seed": args.seed},
              "metric_protocol": protocol,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "device": str(device)},
              "data": data.source, "rows": rows, "ordering": order, "total_seconds": round(time.time() - t0, 1),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(path, report)
    print(f"wrote {path}")
    ckpts = {r["model"]: Path(r["checkpoint"]) for r in rows}
    if {"factorvae", "ad_factorvae"} <= set(ckpts) and all(ckpts[n].is_file() for n in ("factorvae", "ad_factorvae")):
        figs = []  # redrawn whenever either model ran, from the checkpoints the JSON's rows name
        for n in ("factorvae", "ad_factorvae"):
            model, cfg = load_factorvae(ckpts[n], device)
            figs.append((LABELS[n], model, cfg["inference"]["layer"]))
        png = results / f"disentanglement_{tag}_fig9.png"
        figure9(figs, figure_inputs(data, 5, args.seed), png)
        print(f"wrote {png}")
    print(f"total {time.time() - t0:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    bad = [m for m in args.models.split(",") if m.strip() and m.strip() not in VARIANTS]
    if bad:
        parser.error(f"unknown model(s) {bad}; choose from {','.join(VARIANTS)}")
    if not any(m.strip() for m in args.models.split(",")):
        parser.error(f"--models names no model; choose from {','.join(VARIANTS)}")
    if min(args.steps, args.latent - 1, args.num_train, args.num_eval, args.num_variance - 1, args.recon_images, args.threads) < 1:
        parser.error("--steps, --num-train, --num-eval, --recon-images, --threads must be >= 1, --latent and --num-variance >= 2")
    try:
        return run(args, argv)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

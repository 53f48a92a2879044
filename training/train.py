"""Train a one-class VAE from a YAML config.

    python -m training.train --config configs/screw.yaml [--data DIR] [--out runs/screw]
        [--epochs N] [--max-steps N] [--device auto|cpu|cuda] [--resume]
    torchrun --nproc_per_node N -m training.train ...      (data-parallel, DDP)

Writes OUT/model.pt atomically after every epoch (resumable) and, at the end, the normal-data
statistics that attention (Eq. 4) and the fusion map need. Exit codes: 0 done, 1 failure, 2 usage.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from training.checkpoint import finite_weights, resume_checkpoint, save_checkpoint
from training.config import load_config, merge
from training.data import AugmentedImages, load_split
from training.losses import vae_loss
from training.models import build_model
from training.stats import fit_normal_stats


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def step_noise(seed: int, step: int, global_batch: int, latent: int, rank_slice: slice) -> torch.Tensor:
    """Reparameterization noise for one global batch, drawn from (seed, step) so that a resumed
    run and an N-process run draw exactly what one uninterrupted process would."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randn(global_batch, latent, generator=g)[rank_slice]


def learning_rate(base: float, step: int, total_steps: int, decay: float) -> float:
    """Constant, then a cosine to zero over the last `decay` fraction of the steps.

    A pure function of the step, not a scheduler object with state: a resumed or N-process run
    sets exactly the rate one uninterrupted process would, and the constant phase is bit-identical
    to a run without decay (so a decayed run can continue a constant-rate checkpoint).
    """
    start = total_steps * (1.0 - decay)
    if decay <= 0 or step < start:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - start) / (total_steps - start))))


def train(config: dict[str, Any], out: Path, device: torch.device, resume: bool = False,
          max_steps: int | None = None, progress: bool = True) -> Path:
    """Train and return the checkpoint path. Works in one process or under torchrun (DDP)."""
    if config["model"].get("arch") == "factorvae":  # dSprites family: VAE + TC discriminator loop
        from training.factorvae_train import train as train_factorvae
        return train_factorvae(config, out, device, resume, max_steps, progress)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    tcfg, mcfg, dcfg = config["train"], config["model"], config["data"]
    seed = int(tcfg["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    if device.type == "cuda":  # cuDNN's autotuner picks kernels by timing: runs would differ
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    # before the data and the first epoch: a bad --out or a resume of another experiment fails now
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "model.pt"
    ck = resume_checkpoint(ckpt_path, config, device) if resume else None
    split = load_split(dcfg, "train", mcfg["size"], mcfg.get("channels", 1), strict=True)
    for f, why in split.skipped if rank == 0 else ():
        print(f"note: {f}: {why}", file=sys.stderr)
    aug = dcfg.get("augment") or {}
    data = AugmentedImages(split.images, float(aug.get("rotate", 0)), bool(aug.get("hflip")),
                           bool(aug.get("vflip")), seed)
    global_batch = int(tcfg["batch_size"])
    if global_batch % world:
        raise ValueError(f"batch_size {global_batch} must divide evenly over {world} processes")
    local_batch = global_batch // world
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(data, batch_size=local_batch, sampler=sampler, drop_last=True,
                        num_workers=int(tcfg.get("workers", 0)))
    if len(loader) == 0:
        raise ValueError(f"{len(data)} training images are fewer than one batch of {global_batch}")

    model = build_model(mcfg).to(device)
    if world > 1 and device.type == "cuda":
        # Without it each process normalizes over its own slice of the batch and N processes no
        # longer train the model one process would. PyTorch's SyncBatchNorm runs on GPUs only, so
        # on CPU (gloo) a BatchNorm model's N-process run is close to, not equal to, one process.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg.get("weight_decay", 0)))
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    epoch, step = 0, 0
    history: list[dict[str, float]] = []
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        epoch, step = int(ck["epoch"]), int(ck["step"])
        history = list(ck.get("history") or [])
    ddp = DistributedDataParallel(model) if world > 1 else model
    epochs = int(tcfg["epochs"])
    if epochs < 1:
        raise ValueError(f"train.epochs {epochs} must be at least 1")
    base_lr, decay = float(tcfg["lr"]), float(tcfg.get("lr_decay", 0.0))
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"train.lr_decay {decay} must lie in [0, 1] (the decayed fraction of the steps)")
    total_steps = epochs * len(loader)
    if rank == 0 and ck is not None and epoch >= epochs:
        print(f"note: {ckpt_path} already has {epoch} epochs >= train.epochs {epochs}: only refitting the "
              "statistics", file=sys.stderr)

    def save(stats_ready: bool) -> None:
        # a finite loss can still give NaN gradients (a sqrt at 0): never write non-finite weights
        # over the last good checkpoint (every process checks its identical copy: they stop together)
        if not finite_weights(model):
            raise RuntimeError(f"non-finite weights after step {step}, not saved; {kept_note(ckpt_path)}")
        if rank == 0:
            save_checkpoint(ckpt_path, model, config, optimizer=opt.state_dict(), epoch=epoch, step=step,
                            history=history, stats_ready=stats_ready, scaler=scaler.state_dict() if amp else None)
    # DistributedSampler deals global positions round-robin (rank r holds r, r+world, ...), so
    # that is also the stride of this rank's rows of the global noise: image and noise stay paired
    # exactly as in one process.
    rows = slice(rank, global_batch, world)
    started = time.time() - (history[-1]["seconds"] if history else 0.0)
    done = max_steps is not None and step >= max_steps
    while epoch < epochs and not done:
        model.train()
        sampler.set_epoch(epoch)
        data.set_epoch(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress or rank != 0 or not sys.stderr.isatty(),
                   leave=False, dynamic_ncols=True)
        sums, count, t_epoch = np.zeros(3), 0, time.time()
        # A run stopped by --max-steps inside an epoch resumes inside it: the epoch's order and
        # augmentation are functions of (seed, epoch), so skipping the batches already taken
        # continues exactly where one uninterrupted run would be.
        skip = step - epoch * len(loader)
        for i, image in enumerate(bar):
            if i < skip:
                continue
            eps = step_noise(seed, step, global_batch, model.latent, rows).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                o = ddp(image.to(device), eps)
            terms = vae_loss(o.recon.float(), o.target, o.mu.float(), o.logvar.float(), tcfg["loss"],
                             float(tcfg["beta"]))
            vals = np.array([t.item() for t in terms])
            # one step on a NaN/inf loss ruins every weight, and each later epoch would overwrite the
            # last good checkpoint; all processes stop together (one alone would hang the others)
            bad = not np.isfinite(vals[0])
            if world > 1:
                flag = torch.tensor([float(bad)], device=device)
                dist.all_reduce(flag)
                bad = bool(flag.item())
            if bad:
                raise RuntimeError(f"non-finite loss at step {step} (epoch {epoch + 1}); {kept_note(ckpt_path)}")
            for group in opt.param_groups:
                group["lr"] = learning_rate(base_lr, step, total_steps, decay)
            opt.zero_grad(set_to_none=True)
            scaler.scale(terms.total).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            sums += vals
            count += 1
            bar.set_postfix(loss=f"{vals[0]:.1f}", recon=f"{vals[1]:.1f}", kl=f"{vals[2]:.1f}")
            if max_steps is not None and step >= max_steps:
                done = True
                break
        epoch = step // len(loader)  # unchanged when --max-steps stopped inside the epoch
        if world > 1:  # log the global batch's loss, not rank 0's share of it
            t = torch.tensor(sums, dtype=torch.float64)
            dist.all_reduce(t)
            sums = t.numpy() / world
        n = max(1, count)
        # One entry per stretch of steps run: a stopped epoch and its resumed rest are two entries.
        history.append({"epoch": step / len(loader), "step": step, "steps": count, "loss": float(sums[0] / n),
                        "recon": float(sums[1] / n), "kl": float(sums[2] / n), "seconds": time.time() - started})
        if rank == 0:
            if progress:
                h = history[-1]
                print(f"epoch {epoch}/{epochs} step {step} loss {h['loss']:.2f} recon {h['recon']:.2f} "
                      f"kl {h['kl']:.2f} ({count / (time.time() - t_epoch):.2f} it/s)", file=sys.stderr)
        save(stats_ready=False)
    if rank == 0:
        inf = config["inference"]
        fit_normal_stats(model, split.images, inf["layer"], inf["score"], float(inf["blur_sigma"]), device=device)
        save(stats_ready=True)
    if world > 1:
        dist.barrier()
    return ckpt_path


def kept_note(ckpt_path: Path) -> str:
    """What is left to resume from after training stopped on non-finite numbers."""
    if ckpt_path.is_file():
        return f"{ckpt_path} keeps the last good checkpoint: lower train.lr or check the data, then --resume"
    return "nothing was saved yet: lower train.lr or check the data, then start again"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    p.add_argument("--data", help="override data.root")
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue from OUT/model.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps {args.max_steps}: must be at least 1")
    try:
        config = load_config(args.config)
        over: dict[str, Any] = {}
        if args.data:
            over["data"] = {"root": args.data}
        if args.epochs is not None:
            over["train"] = {"epochs": args.epochs}
        config = merge(config, over)
        out = Path(args.out or Path("runs") / Path(args.config).stem)
        path = train(config, out, pick_device(args.device), args.resume, args.max_steps, not args.quiet)
    except (OSError, ValueError, RuntimeError) as e:  # OSError: FileNotFoundError, a full disk, --out a file
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

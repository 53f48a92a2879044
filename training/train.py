"""Train a one-class VAE from a YAML config.

    python -m training.train --config configs/screw.yaml [--data DIR] [--out runs/screw]
        [--epochs N] [--max-steps N] [--device auto|cpu|cuda|cuda:N] [--resume | --init CHECKPOINT] [--quiet]
    torchrun --nproc_per_node N -m training.train ...      (data-parallel, DDP)

Writes OUT/model.pt atomically after every epoch (resumable) and, at the end, the normal-data
statistics that attention (Eq. 4) and the fusion map need. A config's `registration` section
({method, lighting}, core.registration) is fitted on the training images, which are then registered
through core.prepare as every other layer prepares them; the checkpoint's config holds the fitted
spec (export copies it into the sidecar) and `registration_request` what the config asked for.
--init starts a new run from another checkpoint's weights (a warm start, e.g. retraining the
deployed model on new good parts).
A progress bar over all steps shows the rate and the time left where stderr is a terminal; one
summary line per epoch goes to stderr for logs. Exit codes: 0 done, 1 failure, 2 usage.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from core.cli import require_extra

require_extra("torch", "train", "training")  # before torch: an edge install gets one line, not a traceback
import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from core.device import GRAMMAR, device_arg
from core.registration import RegistrationSpec
from training.checkpoint import init_checkpoint, resume_checkpoint, save_checkpoint
from training.config import load_config, merge, registration_request
from training.data import AugmentedImages, load_split, registration_of
from training.factorvae_train import train as train_factorvae
from training.losses import vae_loss
from training.loop import (any_process, check_start, check_weights, load_init, log, mean_over_processes,
                           non_finite_stop, progress_bar, step_noise, torch_device)
from training.models import build_model
from training.stats import fit_normal_stats


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
          max_steps: int | None = None, progress: bool = True, init: Path | None = None) -> Path:
    """Train and return the checkpoint path. Works in one process or under torchrun (DDP).

    init: start a new run (fresh optimizer, step 0, empty history) from that checkpoint's
    weights; it must hold the model the config describes. progress: False turns off the
    progress bar and the per-epoch summary lines.
    """
    if config["model"].get("arch") == "factorvae":  # dSprites family: VAE + TC discriminator loop
        return train_factorvae(config, out, device, resume, max_steps, progress, init=init)
    check_start(resume, init)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)  # NCCL's collectives and barrier() use the current GPU: make it this one
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    tcfg, mcfg, dcfg = config["train"], config["model"], config["data"]
    request = registration_request(config, strict=True)
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
    start, init_record = init_checkpoint(init, config, device) if init is not None else (None, None)
    # registration is fitted on the training images once; a resumed run keeps the spec its
    # weights were trained with (the checkpoint's config holds it, the request beside it)
    spec = RegistrationSpec(**request)
    resumed = ck is not None and spec.active
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = load_split(dcfg, "train", mcfg["size"], mcfg.get("channels", 1), strict=True,
                           registration=registration_of(ck["config"]) if resumed else spec,
                           fit_registration=not resumed)
    if spec.active:  # what export, the runtime and evaluation register with
        config = {**config, "registration": split.registration.to_mapping()}
    for w in caught if rank == 0 else ():
        print(f"warning: {w.message}", file=sys.stderr)
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
    if start is not None:
        load_init(model, start, init)
        if rank == 0 and progress:
            log(f"note: starting from the weights of {init} (sha256 {init_record['sha256'][:12]})")
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        epoch, step = int(ck["epoch"]), int(ck["step"])
        history = list(ck.get("history") or [])
        init_record = ck.get("init")  # a resumed warm start still says where it started from
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
        check_weights(model, step, ckpt_path)  # every process checks its identical copy: they stop together
        if rank == 0:
            save_checkpoint(ckpt_path, model, config, optimizer=opt.state_dict(), epoch=epoch, step=step,
                            history=history, stats_ready=stats_ready, scaler=scaler.state_dict() if amp else None,
                            init=init_record, registration_request=request)
    # DistributedSampler deals global positions round-robin (rank r holds r, r+world, ...), so
    # that is also the stride of this rank's rows of the global noise: image and noise stay paired
    # exactly as in one process.
    rows = slice(rank, global_batch, world)
    started = time.time() - (history[-1]["seconds"] if history else 0.0)
    done = max_steps is not None and step >= max_steps
    with progress_bar(total_steps if max_steps is None else min(total_steps, max_steps), step,
                      progress and rank == 0) as bar:  # closed (its line cleared) also when a stop raises
        while epoch < epochs and not done:
            model.train()
            sampler.set_epoch(epoch)
            data.set_epoch(epoch)
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            sums, count, t_epoch = np.zeros(3), 0, time.time()
            # A run stopped by --max-steps inside an epoch resumes inside it: the epoch's order and
            # augmentation are functions of (seed, epoch), so skipping the batches already taken
            # continues exactly where one uninterrupted run would be.
            skip = step - epoch * len(loader)
            for i, image in enumerate(loader):
                if i < skip:
                    continue
                eps = step_noise(seed, step, global_batch, model.latent, rows).to(device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    o = ddp(image.to(device), eps)
                terms = vae_loss(o.recon.float(), o.target, o.mu.float(), o.logvar.float(), tcfg["loss"],
                                 float(tcfg["beta"]))
                vals = np.array([t.item() for t in terms])
                if any_process(not np.isfinite(vals[0]), device, world):  # all processes stop together
                    raise non_finite_stop(f"non-finite loss at step {step} (epoch {epoch + 1})", ckpt_path)
                for group in opt.param_groups:
                    group["lr"] = learning_rate(base_lr, step, total_steps, decay)
                opt.zero_grad(set_to_none=True)
                scaler.scale(terms.total).backward()
                scaler.step(opt)
                scaler.update()
                step += 1
                sums += vals
                count += 1
                bar.set_postfix({"loss": f"{vals[0]:.1f}", "recon": f"{vals[1]:.1f}", "kl": f"{vals[2]:.1f}"},
                                refresh=False)
                bar.update(1)
                if max_steps is not None and step >= max_steps:
                    done = True
                    break
            epoch = step // len(loader)  # unchanged when --max-steps stopped inside the epoch
            sums = mean_over_processes(sums, device, world)
            n = max(1, count)
            # One entry per stretch of steps run: a stopped epoch and its resumed rest are two entries.
            history.append({"epoch": step / len(loader), "step": step, "steps": count, "loss": float(sums[0] / n),
                            "recon": float(sums[1] / n), "kl": float(sums[2] / n), "seconds": time.time() - started})
            if rank == 0 and progress:
                h = history[-1]
                log(f"epoch {epoch}/{epochs} step {step} loss {h['loss']:.2f} recon {h['recon']:.2f} "
                    f"kl {h['kl']:.2f} ({count / (time.time() - t_epoch):.2f} it/s)")
            save(stats_ready=False)
    if rank == 0:
        inf = config["inference"]
        fit_normal_stats(model, split.images, inf["layer"], inf["score"], float(inf["blur_sigma"]), device=device)
        save(stats_ready=True)
    if world > 1:
        dist.barrier()
    return ckpt_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    p.add_argument("--data", help="override data.root")
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total")
    p.add_argument("--device", default="auto", type=device_arg, help=f"{GRAMMAR} (default auto)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/model.pt")
    p.add_argument("--init", type=Path, metavar="CHECKPOINT",
                   help="start a new run from this checkpoint's weights (same model section; new optimizer, step 0)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (shown only where stderr is a terminal) and no per-epoch summary lines")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps {args.max_steps}: must be at least 1")
    try:
        check_start(args.resume, args.init)
    except ValueError as e:
        parser.error(str(e))
    try:
        config = load_config(args.config)
        over: dict[str, Any] = {}
        if args.data:
            over["data"] = {"root": args.data}
        if args.epochs is not None:
            over["train"] = {"epochs": args.epochs}
        config = merge(config, over)
        out = Path(args.out or Path("runs") / Path(args.config).stem)
        path = train(config, out, torch_device(args.device), args.resume, args.max_steps, not args.quiet,
                     init=args.init)
    except (OSError, ValueError, RuntimeError) as e:  # OSError: FileNotFoundError, a full disk, --out a file
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What both training loops share (training.train: the one-class VAEs, training.factorvae_train:
the dSprites family): the device, the per-step noise, the stops on non-finite numbers, the
cross-process reductions and the progress display. It imports neither loop, so both import it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from core.device import Device, parse_device
from training.checkpoint import finite_weights


def torch_device(device: str | Device | None) -> torch.device:
    """The torch.device of the shared --device grammar (core.device: auto, cpu, cuda, cuda:N):
    the one place every training and evaluation command turns it into one. RuntimeError when
    it names a GPU that is not there."""
    d = device if isinstance(device, Device) else parse_device(device)
    if d.kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"--device {d}: no CUDA device is available (use --device cpu)")
    if d.index is not None and d.index >= torch.cuda.device_count():
        raise RuntimeError(f"--device {d}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 .. "
                           f"cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", d.index) if d.index is not None else torch.device("cuda")


def step_noise(seed: int, step: int, global_batch: int, latent: int, rank_slice: slice) -> torch.Tensor:
    """Reparameterization noise for one global batch, drawn from (seed, step) so that a resumed
    run and an N-process run draw exactly what one uninterrupted process would."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randn(global_batch, latent, generator=g)[rank_slice]


def check_start(resume: bool, init: Path | None) -> None:
    """ValueError for --resume with --init: one continues OUT/model.pt, the other starts anew."""
    if resume and init is not None:
        raise ValueError("--init starts a new run from another checkpoint's weights and --resume continues "
                         "OUT/model.pt: give one of them")


def load_init(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load the --init weights (training.checkpoint.init_checkpoint checked their model settings);
    weights that still do not fit are a ValueError naming the file, not torch's list of keys."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit the config's model ({str(e).splitlines()[0]})") from e


def kept_note(ckpt_path: Path) -> str:
    """What is left to resume from after training stopped on non-finite numbers."""
    if ckpt_path.is_file():
        return f"{ckpt_path} keeps the last good checkpoint: lower train.lr or check the data, then --resume"
    return "nothing was saved yet: lower train.lr or check the data, then start again"


def non_finite_stop(what: str, ckpt_path: Path) -> RuntimeError:
    """The error that ends a run on non-finite numbers: one step on a NaN/inf loss ruins every
    weight, and each later save would overwrite the last good checkpoint."""
    return RuntimeError(f"{what}; {kept_note(ckpt_path)}")


def check_weights(model: torch.nn.Module, step: int, ckpt_path: Path) -> None:
    """Raise before a save when a weight is not finite: a finite loss can still give NaN
    gradients (a sqrt at 0), and those weights must never replace the last good checkpoint."""
    if not finite_weights(model):
        raise non_finite_stop(f"non-finite weights after step {step}, not saved", ckpt_path)


def any_process(flag: bool, device: torch.device, world: int) -> bool:
    """`flag` of any process, on every process: a stop decided by one process alone would leave
    the others waiting in their next collective. The flag lives on `device`: NCCL reduces GPU
    tensors only."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item())


def mean_over_processes(values: np.ndarray, device: torch.device, world: int) -> np.ndarray:
    """The mean over the processes of each process's `values` (so the log shows the global
    batch's loss, not rank 0's share of it). The reduced tensor is created on `device` because
    NCCL (multi-GPU) reduces GPU tensors only; the result comes back to the host for logging."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().numpy() / world


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm:
    """One bar over every optimizer step of the run, with the rate and the time left. A resumed
    run's bar starts at its step. Off when not `enabled` (--quiet, processes other than rank 0)
    and where stderr is not a terminal: in a log file each redraw would be one more line."""
    return tqdm(total=max(total, initial), initial=initial, unit="step", dynamic_ncols=True, leave=False,
                file=sys.stderr, disable=not enabled or not sys.stderr.isatty())


def log(line: str) -> None:
    """A summary line for logs, printed above a live progress bar instead of through it."""
    tqdm.write(line, file=sys.stderr)

"""Training of the dSprites family: beta-VAE, FactorVAE and AD-FactorVAE (paper 3.4, Eq. 5-6).

One objective covers the three, chosen by the `train` section of the config:

    L = recon_BCE + beta * KL  +  gamma * TC  +  lambda_ad * L_AD
        beta-VAE: beta > 1, gamma = 0 | FactorVAE: beta = 1, gamma > 0 | AD-FactorVAE: + lambda_ad > 0

TC is the discriminator's density-ratio estimate E[D(z)_0 - D(z)_1] (Kim & Mnih 2018). L_AD
(Eq. 5) = 2 sum_ij min(A1, A2) / sum_ij (A1 + A2) over the attention maps (Eq. 2) of the two
latent dimensions with the largest |mu| of each sample, at the encoder layer `inference.layer`,
computed with create_graph so that L_AD trains the encoder.

Each step draws its batches and noise from (seed, step), so a resumed run continues exactly.
Called by `python -m training.train --config configs/dsprites_*.yaml` (arch factorvae).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from training.attention import attention_map
from training.checkpoint import init_checkpoint, resume_checkpoint, save_checkpoint
from training.data.dsprites import NUM_IMAGES, DSprites, load_dsprites
from training.losses import vae_loss
from training.loop import check_start, check_weights, load_init, log, non_finite_stop, progress_bar, step_noise
from training.models.factorvae import Discriminator, FactorVAEModel, build_factorvae, permute_dims

# The family's `train` keys and their defaults (the paper's FactorVAE settings where it has one).
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 300_000, "batch_size": 64, "lr": 1e-4, "betas": [0.9, 0.999], "lr_d": 1e-4, "betas_d": [0.5, 0.9],
    "loss": "bce", "beta": 1.0, "gamma": 0.0, "lambda_ad": 0.0, "detach_alpha": False, "seed": 0,
    "log_every": 100, "checkpoint_every": 1000,
}


def train_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The `train` section over TRAIN_DEFAULTS; `epochs`, when set, overrides `steps`."""
    t = {**TRAIN_DEFAULTS, **{k: v for k, v in config["train"].items() if v is not None}}
    if config["train"].get("epochs"):
        t["steps"] = int(config["train"]["epochs"]) * (NUM_IMAGES // int(t["batch_size"]))
    return t


def ad_loss(a1: torch.Tensor, a2: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 5 per sample: 2 * sum min(A1, A2) / sum (A1 + A2) over [N, ..., H, W] -> [N].
    0 when the maps do not overlap, 1 when they are identical; 0 when both maps are empty."""
    inter = torch.minimum(a1, a2).flatten(1).sum(1)
    total = (a1 + a2).flatten(1).sum(1)
    return 2 * inter / (total + eps)


def top_dims(mu: torch.Tensor, k: int = 2) -> torch.Tensor:
    """The k latent dimensions with the strongest response |mu_i| per sample: [N, k] (paper fig. 9
    explains the dimension with the highest response and the next; |.| because a latent axis's
    sign is arbitrary)."""
    return mu.detach().abs().topk(k, dim=1).indices


def dims_attention(acts: torch.Tensor, mu: torch.Tensor, dims: torch.Tensor, size: tuple[int, int],
                   detach_alpha: bool = False, create_graph: bool = False) -> torch.Tensor:
    """Attention maps (Eq. 2, training.attention.attention_map) of latent dimension dims[n, j] of
    each sample n: [N, J, H, W]. The code of a sample depends only on its own activations, so the
    backward of the batch sum of the chosen mu gives every sample's gradient at once.
    detach_alpha: the channel weights carry no gradient, L_AD trains through A alone."""
    maps = []
    for j in range(dims.shape[1]):
        picked = mu.gather(1, dims[:, j:j + 1])
        # Explain the response |mu_i| (sign(mu_i) mu_i), not mu_i: with the raw value, a negative
        # code makes Eq. 2's ReLU empty its map, and L_AD can be minimized by emptying one map.
        chosen = (picked * picked.detach().sign()).sum()
        (grads,) = torch.autograd.grad(chosen, acts, create_graph=create_graph, retain_graph=True)
        maps.append(attention_map(acts, grads.detach() if detach_alpha else grads, size))
    return torch.cat(maps, 1)


class StepTerms(NamedTuple):
    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    tc: torch.Tensor
    ad: torch.Tensor
    z: torch.Tensor  # the sampled codes of the batch, for the discriminator step


def vae_objective(model: FactorVAEModel, disc: Discriminator | None, image: torch.Tensor, eps: torch.Tensor,
                  t: dict[str, Any], layer: str) -> StepTerms:
    """The family's objective on one batch (uint8 images [N, 64, 64, 1], noise [N, D])."""
    lam, gamma = float(t["lambda_ad"]), float(t["gamma"])
    x01, x = model.preprocess(image)
    acts, mu, logvar = model.encode_at(x, layer if lam > 0 else None)
    z = mu + eps * torch.exp(0.5 * logvar)
    terms = vae_loss(model.decoder(z), x01, mu, logvar, t["loss"], float(t["beta"]))
    zero = terms.total.new_zeros(())
    tc = zero
    if gamma > 0 and disc is not None:
        logits = disc(z)
        tc = (logits[:, 0] - logits[:, 1]).mean()
    ad = zero
    if lam > 0:
        maps = dims_attention(acts, mu, top_dims(mu), tuple(x01.shape[-2:]), bool(t["detach_alpha"]), True)
        ad = ad_loss(maps[:, 0], maps[:, 1]).mean()
    total = terms.total + gamma * tc + lam * ad
    return StepTerms(total, terms.recon, terms.kl, tc, ad, z)


def discriminator_loss(disc: Discriminator, z: torch.Tensor, z_other: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of D on codes of q(z) (class 0) and permuted codes of a second batch (class 1),
    both detached: computed fresh after the VAE step, never from a D(z) of before the optimizer
    step (the popular reference's in-place autograd error). Returns (loss, accuracy)."""
    zp = permute_dims(z_other.detach(), generator)
    logits = torch.cat([disc(z.detach()), disc(zp)])
    target = torch.cat([torch.zeros(len(z), dtype=torch.long), torch.ones(len(zp), dtype=torch.long)]).to(z.device)
    loss = F.cross_entropy(logits, target)
    acc = (logits.argmax(1) == target).float().mean()
    return loss, acc


class Trainer:
    """The models, optimizers and one step of the family's training loop."""

    def __init__(self, config: dict[str, Any], device: torch.device) -> None:
        self.config, self.device = config, device
        self.t = train_settings(config)
        self.layer = config["inference"]["layer"]
        torch.manual_seed(int(self.t["seed"]))  # same seed -> same initial VAE for every variant
        self.model = build_factorvae(config["model"]).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=float(self.t["lr"]), betas=tuple(self.t["betas"]))
        self.disc: Discriminator | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        if float(self.t["gamma"]) > 0:
            self.disc = Discriminator(self.model.latent).to(device)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=float(self.t["lr_d"]), betas=tuple(self.t["betas_d"]))
        self.step = 0
        self.init: dict[str, str] | None = None  # {path, sha256} of the --init checkpoint, kept in every save

    def batch(self, data: DSprites, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two independent batches (the second feeds the discriminator's permuted codes) and their
        noise, all drawn from (seed, step)."""
        seed, b = int(self.t["seed"]), int(self.t["batch_size"])
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, len(data), 2 * b)
        images = torch.from_numpy(data.images(idx)).to(self.device)
        eps = step_noise(seed, step, 2 * b, self.model.latent, slice(0, 2 * b)).to(self.device)
        return images[:b], images[b:], eps[:b], eps[b:]

    def train_step(self, x1: torch.Tensor, x2: torch.Tensor, eps1: torch.Tensor, eps2: torch.Tensor) -> dict[str, float]:
        self.model.train()
        terms = vae_objective(self.model, self.disc, x1, eps1, self.t, self.layer)
        self.opt.zero_grad(set_to_none=True)
        terms.total.backward()
        self.opt.step()
        out = {k: float(v.detach()) for k, v in zip(("loss", "recon", "kl", "tc", "ad"), terms[:5])}
        if self.disc is not None and self.opt_d is not None:
            with torch.no_grad():  # the second batch's codes, from the encoder after its update
                mu2, logvar2 = self.model.encode_features(self.model.preprocess(x2)[1])
                z2 = mu2 + eps2 * torch.exp(0.5 * logvar2)
            g = torch.Generator().manual_seed(int(self.t["seed"]) * 1_000_003 + self.step)
            d_loss, d_acc = discriminator_loss(self.disc, terms.z, z2, g)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            out.update(d_loss=float(d_loss.detach()), d_acc=float(d_acc))
        self.step += 1
        return out

    def state(self, history: list[dict[str, float]]) -> dict[str, Any]:
        s: dict[str, Any] = {"optimizer": self.opt.state_dict(), "step": self.step, "epoch": 0, "history": history,
                             "init": self.init}
        if self.disc is not None and self.opt_d is not None:
            s.update(discriminator=self.disc.state_dict(), optimizer_d=self.opt_d.state_dict())
        return s

    def load(self, ckpt: dict[str, Any]) -> list[dict[str, float]]:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if self.disc is not None and self.opt_d is not None:
            self.disc.load_state_dict(ckpt["discriminator"])
            self.opt_d.load_state_dict(ckpt["optimizer_d"])
        self.step = int(ckpt["step"])
        self.init = ckpt.get("init")
        return list(ckpt.get("history", []))


def train(config: dict[str, Any], out: Path, device: torch.device, resume: bool = False,
          max_steps: int | None = None, progress: bool = True, data: DSprites | None = None,
          init: Path | None = None) -> Path:
    """Train and return OUT/model.pt (written atomically every `checkpoint_every` steps and at the end).
    init: start a new run from that checkpoint's VAE weights (the discriminator starts afresh)."""
    check_start(resume, init)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "model.pt"
    # both before rendering: a refused file fails in a second, not after the dataset
    ck = resume_checkpoint(ckpt_path, config, device, TRAIN_DEFAULTS) if resume else None
    start, init_record = init_checkpoint(init, config, device) if init is not None else (None, None)
    tr = Trainer(config, device)
    if start is not None:
        load_init(tr.model, start, init)
        tr.init = init_record
    t = tr.t
    steps = int(t["steps"]) if max_steps is None else min(int(t["steps"]), int(max_steps))
    if data is None:
        dcfg = config.get("data") or {}
        data = load_dsprites(dcfg.get("root"), dcfg.get("cache_dir"))
    history: list[dict[str, float]] = []
    if ck is not None:
        history = tr.load(ck)
    started = time.time() - (history[-1]["seconds"] if history else 0.0)
    sums: dict[str, float] = {}
    count = 0
    with progress_bar(steps, tr.step, progress) as bar:  # closed (its line cleared) also when a stop raises
        while tr.step < steps:
            vals = tr.train_step(*tr.batch(data, tr.step))
            if not all(math.isfinite(v) for v in vals.values()):
                raise non_finite_stop(f"non-finite loss terms at step {tr.step} ({vals})", ckpt_path)
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.update(1)
            if tr.step % int(t["log_every"]) == 0 or tr.step == steps:
                rec = {"step": tr.step, "seconds": time.time() - started, **{k: v / count for k, v in sums.items()}}
                history.append(rec)
                sums, count = {}, 0
                bar.set_postfix({"recon": f"{rec['recon']:.1f}", "kl": f"{rec['kl']:.1f}", "tc": f"{rec['tc']:.2f}",
                                 "ad": f"{rec['ad']:.3f}"})
                if progress:
                    log(" ".join(f"{k} {v:.4g}" for k, v in rec.items()))
            if tr.step % int(t["checkpoint_every"]) == 0 or tr.step == steps:
                check_weights(tr.model, tr.step, ckpt_path)
                save_checkpoint(ckpt_path, tr.model, config, **tr.state(history))
    if not ckpt_path.exists():  # resumed at or past the budget: still leave a checkpoint
        save_checkpoint(ckpt_path, tr.model, config, **tr.state(history))
    return ckpt_path

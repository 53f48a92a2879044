"""Supp. table 4 model, TC discriminator, L_AD (Eq. 5) and the training loop of the dSprites family."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import DEFAULTS, merge
from training.data import dsprites as ds
from training.factorvae_train import (Trainer, ad_loss, dims_attention, discriminator_loss, top_dims, train,
                                      vae_objective)
from training.models.factorvae import Discriminator, build_factorvae, permute_dims


class TinySprites:
    """A few real sprites standing in for the 737,280 (same interface as DSprites for training)."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        f = ds.DSprites.__new__(ds.DSprites).sample_factors(n, np.random.default_rng(seed))
        self.imgs = (ds.render(f) * 255)[..., None]

    def __len__(self) -> int:
        return len(self.imgs)

    def images(self, index: np.ndarray) -> np.ndarray:
        return self.imgs[np.asarray(index)]


def config(**train_over: object) -> dict:
    return merge(DEFAULTS, {
        "model": {"arch": "factorvae", "size": 64, "channels": 1, "latent": 10},
        "data": {"format": "dsprites", "root": None},
        "train": {"epochs": None, "steps": 4, "batch_size": 16, "lr": 1e-3, "loss": "bce", "beta": 1.0,
                  "gamma": 0.0, "lambda_ad": 0.0, "seed": 0, "log_every": 2, "checkpoint_every": 2, **train_over},
        "inference": {"layer": "relu4"},
    })


VARIANTS = {"beta_vae": {"beta": 4.0}, "factorvae": {"gamma": 40.0},
            "ad_factorvae": {"gamma": 40.0, "lambda_ad": 10.0},
            "ad_factorvae_detach": {"gamma": 40.0, "lambda_ad": 10.0, "detach_alpha": True}}


def test_table4_shapes() -> None:
    m = build_factorvae({"size": 64, "latent": 10})
    x01, x = m.preprocess(torch.zeros(3, 64, 64, 1, dtype=torch.uint8))
    acts, mu, logvar = m.encode_at(x, "relu4")
    assert acts.shape == (3, 64, 4, 4) and mu.shape == logvar.shape == (3, 10)
    assert m.encoder.conv5(acts).shape == (3, 128, 1, 1)  # padding 0, see the model's comment
    out = m(torch.zeros(3, 64, 64, 1, dtype=torch.uint8), torch.zeros(3, 10))
    assert out.recon.shape == (3, 1, 64, 64) and 0 <= out.recon.min() and out.recon.max() <= 1
    assert build_factorvae({"size": 64, "latent": 32})(torch.zeros(1, 64, 64, 1, dtype=torch.uint8)).mu.shape == (1, 32)
    with pytest.raises(ValueError, match="64x64"):
        build_factorvae({"size": 128})
    with pytest.raises(ValueError, match="unknown encoder layer"):
        m.encode_at(x, "layer3")


def test_discriminator_and_permutation() -> None:
    d = Discriminator(10)
    assert sum(isinstance(l, torch.nn.Linear) for l in d.net) == 7  # 6 hidden layers of 1000 + logits
    assert d(torch.zeros(5, 10)).shape == (5, 2)
    z = torch.arange(40.0).reshape(8, 5)
    p = permute_dims(z, torch.Generator().manual_seed(0))
    assert (p.sort(0).values == z).all() and not (p == z).all()  # each column shuffled on its own


def test_discriminator_loss_is_on_detached_codes() -> None:
    m = build_factorvae({"size": 64, "latent": 10})
    _, mu, _ = m.encode_at(m.preprocess(torch.full((8, 64, 64, 1), 255, dtype=torch.uint8))[1], None)
    loss, acc = discriminator_loss(Discriminator(10), mu, mu)
    loss.backward()
    assert all(p.grad is None for p in m.parameters())  # D's step never trains the encoder
    assert 0 <= float(acc) <= 1


def test_ad_loss_bounds() -> None:
    a = torch.zeros(2, 8, 8)
    b = torch.zeros(2, 8, 8)
    a[:, :4] = 1.0
    b[:, 4:] = 2.0
    assert torch.allclose(ad_loss(a, b), torch.zeros(2))  # disjoint
    assert torch.allclose(ad_loss(a, a), torch.ones(2))  # identical
    c = a.clone()
    c[:, :, :4] = 0
    assert 0 < float(ad_loss(a, c)[0]) < 1  # partial overlap
    assert torch.allclose(ad_loss(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)), torch.zeros(1))  # empty maps


@pytest.mark.parametrize("detach_alpha", [False, True])
def test_ad_loss_trains_the_encoder(detach_alpha: bool) -> None:
    torch.manual_seed(0)
    m = build_factorvae({"size": 64, "latent": 10})
    x01, x = m.preprocess(torch.from_numpy(TinySprites(8).imgs))
    acts, mu, _ = m.encode_at(x, "relu4")
    dims = top_dims(mu)
    assert (dims[:, 0] != dims[:, 1]).all() and (mu.abs().gather(1, dims[:, :1]) >= mu.abs()).all()
    maps = dims_attention(acts, mu, dims, (64, 64), detach_alpha, create_graph=True)
    assert maps.shape == (8, 2, 64, 64) and (maps >= 0).all()
    loss = ad_loss(maps[:, 0], maps[:, 1]).mean()
    assert 0 < float(loss.detach()) < 1
    loss.backward()
    for name in ("conv1", "conv4"):  # the layers below A, always
        g = getattr(m.encoder, name).weight.grad
        assert g is not None and g.abs().sum() > 0, name
    # the layers above A shape alpha = GAP(dmu/dA): trained by L_AD unless alpha is detached
    for layer in (m.encoder.conv5, m.fc_mu):
        assert (layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0) != detach_alpha


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_training_steps_lower_the_loss_on_a_fixed_batch(variant: str) -> None:
    tr = Trainer(config(**VARIANTS[variant]), torch.device("cpu"))
    x = torch.from_numpy(TinySprites(32).imgs)
    eps = torch.randn(32, 10, generator=torch.Generator().manual_seed(1))
    before = vae_objective(tr.model, tr.disc, x[:16], eps[:16], tr.t, tr.layer)
    for _ in range(3):
        vals = tr.train_step(x[:16], x[16:], eps[:16], eps[16:])
    after = vae_objective(tr.model, tr.disc, x[:16], eps[:16], tr.t, tr.layer)
    assert float(after.total.detach()) < float(before.total.detach())
    assert ("d_loss" in vals) == (tr.disc is not None)
    if VARIANTS[variant].get("lambda_ad"):
        assert 0 <= vals["ad"] <= 1


def test_train_writes_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    data = TinySprites(64)
    cfg = config(gamma=40.0, lambda_ad=10.0, batch_size=8)
    straight = train(cfg, tmp_path / "a", torch.device("cpu"), max_steps=4, progress=False, data=data)
    train(cfg, tmp_path / "b", torch.device("cpu"), max_steps=2, progress=False, data=data)
    resumed = train(cfg, tmp_path / "b", torch.device("cpu"), resume=True, max_steps=4, progress=False, data=data)
    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == 4 and [h["step"] for h in b["history"]] == [2, 4]
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    for k in a["discriminator"]:
        assert torch.allclose(a["discriminator"][k], b["discriminator"][k], atol=1e-6), k


def test_train_cli_dispatches_dsprites_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.factorvae_train as ft
    from training import train as train_cli

    monkeypatch.setattr(ft, "load_dsprites", lambda *a, **k: TinySprites(32))
    repo = Path(__file__).resolve().parents[1]
    for name in ("dsprites_beta_vae", "dsprites_factorvae", "dsprites_ad_factorvae"):
        out = tmp_path / name
        assert train_cli.main(["--config", str(repo / "configs" / f"{name}.yaml"), "--out", str(out),
                               "--max-steps", "1", "--quiet"]) == 0
        ck = torch.load(out / "model.pt", weights_only=True)
        assert ck["step"] == 1 and ck["config"]["model"]["arch"] == "factorvae"


def test_a_dsprites_config_missing_train_keys_gets_the_family_defaults(tmp_path: Path) -> None:
    from training.config import load_config
    from training.factorvae_train import TRAIN_DEFAULTS, train_settings

    cfg = tmp_path / "d.yaml"
    cfg.write_text("model: {arch: factorvae, latent: 10}\ntrain: {steps: 100, gamma: 40}\n")
    t = train_settings(load_config(cfg))
    assert t["steps"] == 100 and t["gamma"] == 40
    assert {k: t[k] for k in ("batch_size", "loss", "lr", "beta", "seed")} == \
        {k: TRAIN_DEFAULTS[k] for k in ("batch_size", "loss", "lr", "beta", "seed")}


def test_init_starts_the_dsprites_loop_from_another_checkpoints_vae(tmp_path: Path) -> None:
    data = TinySprites(32)
    first = train(config(gamma=40.0, batch_size=8), tmp_path / "a", torch.device("cpu"), max_steps=2,
                  progress=False, data=data)
    # lr 0: the VAE after one step is the one it started from; the discriminator starts afresh
    warm = train(config(gamma=40.0, batch_size=8, lr=0.0), tmp_path / "b", torch.device("cpu"), max_steps=1,
                 progress=False, data=data, init=first)
    a, b = torch.load(first, weights_only=True), torch.load(warm, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["step"] == 1 and b["init"]["path"] == str(first.resolve()) and len(b["init"]["sha256"]) == 64
    with pytest.raises(ValueError, match="--init from another model .*model.latent: 10 -> 6"):
        train(merge(config(), {"model": {"latent": 6}}), tmp_path / "c", torch.device("cpu"), max_steps=1,
              progress=False, data=data, init=first)

"""FactorVAE metric (disentanglement_lib protocol) and the training.disentanglement CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import dsprites as ds
from training.metrics import factor_vae_metric


class FactorData:
    """Ground truth whose 'images' are the factor rows themselves (dSprites' factor sizes)."""

    num_factors = 5

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, s, n) for s in ds.FACTOR_SIZES], 1)

    def images_for_factors(self, factors: np.ndarray) -> np.ndarray:
        return factors.astype(np.float64)


def test_perfect_code_scores_one() -> None:
    rng = np.random.default_rng(1)

    def represent(f: np.ndarray) -> np.ndarray:  # the factors, permuted and rescaled, + 3 noise dims
        return np.concatenate([f[:, ::-1] * np.array([0.3, 2.0, 1.0, 5.0, 0.5]), rng.normal(size=(len(f), 3))], 1)

    s = factor_vae_metric(FactorData(), represent, seed=0, num_train=500, num_eval=300, num_variance=2000)
    assert s.train_accuracy == 1.0 and s.eval_accuracy == 1.0 and s.active_dims == 8
    assert s.train_votes.sum() == 500 and s.eval_votes.sum() == 300


def test_random_code_scores_about_chance() -> None:
    rng = np.random.default_rng(2)
    s = factor_vae_metric(FactorData(), lambda f: rng.normal(size=(len(f), 10)), seed=0, num_train=2000,
                          num_eval=1000, num_variance=2000)
    assert 0.12 < s.eval_accuracy < 0.3  # 5 factors: chance is 0.2
    assert s.train_accuracy >= s.eval_accuracy - 0.05


def test_collapsed_dims_are_pruned() -> None:
    rng = np.random.default_rng(3)

    def represent(f: np.ndarray) -> np.ndarray:  # a dim at the prior (std 0.01) would win every argmin
        return np.concatenate([f.astype(float), 0.01 * rng.normal(size=(len(f), 2))], 1)

    s = factor_vae_metric(FactorData(), represent, seed=0, num_train=200, num_eval=100, num_variance=1000)
    assert s.active_dims == 5 and not s.active[5:].any() and s.eval_accuracy == 1.0
    none = factor_vae_metric(FactorData(), lambda f: np.zeros((len(f), 4)), num_train=10, num_eval=10)
    assert none.train_accuracy == none.eval_accuracy == 0.0 and none.active_dims == 0


def test_metric_is_seeded() -> None:
    rng_code = np.random.default_rng(0).normal(size=(5, 10))

    def represent(f: np.ndarray) -> np.ndarray:
        return np.tanh(f @ rng_code)

    a = factor_vae_metric(FactorData(), represent, seed=7, num_train=300, num_eval=200, num_variance=500)
    b = factor_vae_metric(FactorData(), represent, seed=7, num_train=300, num_eval=200, num_variance=500)
    assert a.eval_accuracy == b.eval_accuracy and (a.train_votes == b.train_votes).all()


class RenderedSprites:
    """dSprites drawn on demand: the DSprites interface without the 737,280-image render."""

    num_factors = 5

    def __init__(self) -> None:
        self.sample_factors = ds.DSprites.sample_factors.__get__(self)

    def __len__(self) -> int:
        return ds.NUM_IMAGES

    def images(self, index: np.ndarray) -> np.ndarray:
        return self.images_for_factors(ds.index_to_factors(index))

    def images_for_factors(self, factors: np.ndarray) -> np.ndarray:
        return (ds.render(factors) * 255)[..., None]


@pytest.fixture
def checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    from tests.test_factorvae import TinySprites, config
    from training.factorvae_train import train

    data = TinySprites(32)
    a = train(config(gamma=40.0, batch_size=8), tmp_path / "factorvae", torch.device("cpu"), max_steps=2,
              progress=False, data=data)
    b = train(config(gamma=40.0, lambda_ad=10.0, batch_size=8), tmp_path / "ad_factorvae", torch.device("cpu"),
              max_steps=2, progress=False, data=data)
    return a, b


def test_cli_prints_metric_and_writes_figure(checkpoints, tmp_path: Path, monkeypatch, capsys) -> None:
    import training.disentanglement as dis

    monkeypatch.setattr(dis, "load_dsprites", lambda *a, **k: RenderedSprites())
    base, ad = checkpoints
    png, js = tmp_path / "fig9.png", tmp_path / "m.json"
    rc = dis.main(["--checkpoint", str(ad), "--compare", str(base), "--png", str(png), "--json", str(js),
                   "--num-train", "20", "--num-eval", "10", "--num-variance", "200", "--recon-images", "50"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "FactorVAE metric train" in out and "recon error" in out
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    res = json.loads(js.read_text())
    assert set(res) == {str(ad), str(base)}
    r = res[str(ad)]
    assert 0 <= r["eval_accuracy"] <= 1 and r["recon_error"] > 0 and r["protocol"]["num_train"] == 20


def test_cli_errors(tmp_path: Path, capsys) -> None:
    import training.disentanglement as dis

    with pytest.raises(SystemExit) as e:
        dis.main(["--help"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        dis.main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        dis.main(["--checkpoint", "x.pt", "--num-train", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:  # a path typed wrong: a usage error
        dis.main(["--checkpoint", str(tmp_path / "missing.pt")])
    assert e.value.code == 2 and "missing.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert dis.main(["--checkpoint", str(bad)]) == 1
    assert "bad.pt" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    torch.save({"config": {"model": {"arch": "resnet18"}}, "model": {}}, other)
    assert dis.main(["--checkpoint", str(other)]) == 1
    assert "other.pt: model.arch is 'resnet18', not 'factorvae'" in capsys.readouterr().err

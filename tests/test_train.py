"""Training: checkpoint round-trip, resume, data-parallel equivalence, atomic writes, CLI errors."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, tiny_config
from core.files import atomic_write
from training.checkpoint import load_checkpoint, load_model
from training.config import merge
from training.train import main as train_main
from training.train import learning_rate, train


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_checkpoint_round_trip_and_stats(mvtec_dir: Path, tmp_path: Path):
    cfg = tiny_config(mvtec_dir)
    ckpt = train(cfg, tmp_path / "run", torch.device("cpu"), max_steps=2, progress=False)
    ck = load_checkpoint(ckpt)
    assert ck["stats_ready"] and ck["step"] == 2 and ck["config"]["model"]["arch"] == "resnet18"
    model, config = load_model(ckpt)
    assert config == cfg
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ck["model"][k], rtol=0, atol=0)
    # the statistics, recomputed independently from the training images with the loaded model
    from training.attention import explain
    from training.data import load_split
    from training.maps import GaussianBlur, recon_error

    split = load_split(cfg["data"], "train", 64, 1, strict=True)
    x = torch.from_numpy(split.images)
    with torch.no_grad():
        o = model(x)
        err_q = GaussianBlur(cfg["inference"]["blur_sigma"])(recon_error(o.target, o.recon)).flatten(1).quantile(0.99, 1)
    torch.testing.assert_close(model.normal_mu, o.mu.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.normal_var, o.logvar.exp().mean(0) + o.mu.var(0, unbiased=False), rtol=1e-5, atol=1e-6)
    att = explain(model, x, cfg["inference"]["layer"], cfg["inference"]["score"]).attention.detach()
    torch.testing.assert_close(model.map_scale[0], att.flatten(1).quantile(0.99, 1).median(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(model.map_scale[1], err_q.median(), rtol=1e-5, atol=1e-8)


def test_noise_is_drawn_per_step_and_sliced_per_rank():
    from training.loop import step_noise

    assert not torch.equal(step_noise(7, 0, 8, 4, slice(None)), step_noise(7, 1, 8, 4, slice(None)))
    assert not torch.equal(step_noise(7, 0, 8, 4, slice(None)), step_noise(8, 0, 8, 4, slice(None)))
    torch.testing.assert_close(step_noise(7, 3, 8, 4, slice(1, 8, 2)), step_noise(7, 3, 8, 4, slice(None))[1::2])


def test_beta_weighs_the_kl_term():
    from training.losses import kl_divergence, vae_loss

    target = torch.full((1, 1, 4, 4), 0.5)
    mu, logvar = torch.ones(1, 2), torch.zeros(1, 2)
    assert float(kl_divergence(mu, logvar)) == pytest.approx(1.0)       # 0.5 * sum(mu^2) with unit variance
    assert float(kl_divergence(torch.zeros(1, 2), logvar)) == 0.0
    terms = vae_loss(target, target, mu, logvar, "mse", beta=4.0)
    assert float(terms.total.mean()) == pytest.approx(4.0) and float(terms.recon.mean()) == 0.0


@pytest.mark.parametrize("decay,stop", [(0.0, "epoch end"), (0.5, "epoch end"), (0.5, "mid-epoch")])
def test_resume_gives_identical_weights(mvtec_dir: Path, tmp_path: Path, decay: float, stop: str):
    cfg = merge(tiny_config(mvtec_dir, epochs=2), {"train": {"lr_decay": decay}})
    straight = train(cfg, tmp_path / "a", torch.device("cpu"), progress=False)
    per_epoch = int(load_checkpoint(straight)["history"][0]["step"])
    assert per_epoch >= 2
    # killed inside or after the first epoch of the same 2-epoch run: the batch order, the
    # augmentation and the decay must all pick up where they were
    first = per_epoch if stop == "epoch end" else per_epoch // 2
    train(cfg, tmp_path / "b", torch.device("cpu"), max_steps=first, progress=False)
    assert load_checkpoint(tmp_path / "b" / "model.pt")["epoch"] == (1 if stop == "epoch end" else 0)
    resumed = train(cfg, tmp_path / "b", torch.device("cpu"), resume=True, progress=False)
    wa, wb = _weights(straight), _weights(resumed)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    ck = load_checkpoint(resumed)
    assert ck["epoch"] == 2 and ck["step"] == 2 * per_epoch
    # the history keeps the stopped run's entries and counts every step once
    assert ck["history"][0]["step"] == first and sum(h["steps"] for h in ck["history"]) == 2 * per_epoch


def test_zero_epochs_is_refused(mvtec_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="epochs"):
        train(tiny_config(mvtec_dir, epochs=0), tmp_path / "r", torch.device("cpu"), progress=False)


def test_learning_rate_is_constant_then_cosine_to_zero():
    lrs = [learning_rate(1.0, s, 100, 0.4) for s in range(101)]
    assert lrs[:61] == [1.0] * 61                       # the first 60 % of the steps are untouched
    assert lrs[80] == pytest.approx(0.5) and lrs[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert [learning_rate(1.0, s, 100, 0.0) for s in (0, 99)] == [1.0, 1.0]


def test_lr_decay_outside_unit_interval_is_refused(mvtec_dir: Path, tmp_path: Path):
    cfg = merge(tiny_config(mvtec_dir), {"train": {"lr_decay": 1.5}})
    with pytest.raises(ValueError, match="lr_decay"):
        train(cfg, tmp_path / "r", torch.device("cpu"), progress=False)


def test_loss_decreases_on_fixed_data(mvtec_dir: Path, tmp_path: Path):
    cfg = tiny_config(mvtec_dir, arch="mnist", size=28, epochs=6, lr=1e-3)
    cfg["data"]["augment"] = {}
    hist = load_checkpoint(train(cfg, tmp_path / "r", torch.device("cpu"), progress=False))["history"]
    assert hist[-1]["recon"] < 0.7 * hist[0]["recon"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one(mvtec_dir: Path, tmp_path: Path):
    """torchrun with gloo and 2 processes follows the 1-process loss curve on the same global batch."""
    cfg = tiny_config(mvtec_dir, arch="mnist", size=28, epochs=2, batch_size=8, lr=1e-3)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    one = subprocess.run([sys.executable, "-m", "training.train", "--config", str(cfg_path), "--out",
                          str(tmp_path / "one"), "--quiet", "--device", "cpu"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "training.train", "--config", str(cfg_path), "--out", str(tmp_path / "two"),
                          "--quiet", "--device", "cpu"], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=180)
    assert two.returncode == 0, two.stderr[-2000:]
    h1 = load_checkpoint(tmp_path / "one" / "model.pt")["history"]
    h2 = load_checkpoint(tmp_path / "two" / "model.pt")["history"]
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2):
        assert a["step"] == b["step"]
        # the logged loss is the global batch's, averaged over the ranks
        assert b["recon"] == pytest.approx(a["recon"], rel=1e-4)
    w1, w2 = _weights(tmp_path / "one" / "model.pt"), _weights(tmp_path / "two" / "model.pt")
    for k in w1:
        if k in ("normal_mu", "normal_var", "map_scale"):
            continue  # statistics derived from the weights compared here; they amplify fp noise
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def test_write_json_is_strict_json_and_readable_by_others(tmp_path: Path):
    import json

    from core.files import write_json

    write_json(tmp_path / "m.json", {"auc": float("nan"), "rows": [1.5, float("inf")], "name": "é"})
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"auc": None, "rows": [1.5, None], "name": "é"} and "NaN" not in text
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_atomic_write_keeps_the_old_file_on_crash(tmp_path: Path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def crash(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_cli_errors_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert train_main(["--config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        train_main([])
    assert e.value.code == 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "nowhere")))
    assert train_main(["--config", str(cfg), "--out", str(tmp_path / "o")]) == 1
    assert "nowhere" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    foreign = tmp_path / "state_dict.pt"  # loads under weights_only, but says nothing of its model
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="state_dict.pt: not a checkpoint of this project"):
        load_model(foreign)
    for flag, value in (("--max-steps", "0"), ("--max-steps", "-5"), ("--epochs", "0")):
        with pytest.raises(SystemExit) as e:
            train_main(["--config", str(cfg), flag, value])
        assert e.value.code == 2 and f"{flag} {value}: must be at least 1" in capsys.readouterr().err


def test_resume_refuses_another_experiment_and_a_missing_checkpoint(mvtec_dir: Path, tmp_path: Path):
    cfg = tiny_config(mvtec_dir, epochs=2)
    train(cfg, tmp_path / "run", torch.device("cpu"), max_steps=2, progress=False)
    for change in ({"train": {"batch_size": 8}}, {"train": {"lr": 0.5, "beta": 7.0}}, {"model": {"latent": 8}},
                   {"train": {"weight_decay": 0.5}}):
        with pytest.raises(ValueError, match="--resume with another experiment") as e:
            train(merge(cfg, change), tmp_path / "run", torch.device("cpu"), resume=True, progress=False)
        section, values = next(iter(change.items()))
        assert all(f"{section}.{k}:" in str(e.value) for k in values)
    # more epochs, another data root (moved to another machine): the same experiment, resumed
    moved = tmp_path / "moved"
    shutil.copytree(mvtec_dir, moved)
    train(merge(cfg, {"train": {"epochs": 3}, "data": {"root": str(moved)}}), tmp_path / "run", torch.device("cpu"),
          resume=True, max_steps=3, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(cfg, tmp_path / "typo", torch.device("cpu"), resume=True, progress=False)


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(mvtec_dir: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    import training.train as tt

    cfg = tiny_config(mvtec_dir, epochs=3)
    train(cfg, tmp_path / "run", torch.device("cpu"), max_steps=4, progress=False)  # one epoch of 4 steps
    good = _weights(tmp_path / "run" / "model.pt")
    real = tt.vae_loss

    def poisoned(*a, **k):
        t = real(*a, **k)
        return t._replace(total=t.total * float("nan"))

    monkeypatch.setattr(tt, "vae_loss", poisoned)
    with pytest.raises(RuntimeError, match=r"non-finite loss at step 4 \(epoch 2\)"):
        train(cfg, tmp_path / "run", torch.device("cpu"), resume=True, progress=False)
    after = _weights(tmp_path / "run" / "model.pt")
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_out_that_is_a_file_fails_before_training(mvtec_dir: Path, tmp_path: Path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(mvtec_dir)))
    (tmp_path / "afile").write_text("x")
    assert train_main(["--config", str(cfg), "--out", str(tmp_path / "afile"), "--quiet"]) == 1
    assert "afile" in capsys.readouterr().err


def test_nan_gradients_behind_a_finite_loss_never_reach_the_checkpoint(mvtec_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    import training.train as tt

    cfg = tiny_config(mvtec_dir, epochs=3)
    train(cfg, tmp_path / "run", torch.device("cpu"), max_steps=4, progress=False)
    good = _weights(tmp_path / "run" / "model.pt")
    real, calls = tt.vae_loss, []

    def nan_grads(*a, **k):  # the last step of epoch 2: loss finite, d sqrt(0) = inf, times 0 = NaN
        calls.append(1)
        t = real(*a, **k)
        return t._replace(total=t.total + (a[2] * 0).sum().sqrt()) if len(calls) == 4 else t

    monkeypatch.setattr(tt, "vae_loss", nan_grads)
    with pytest.raises(RuntimeError, match="non-finite weights after step 8, not saved; .* keeps the last good"):
        train(cfg, tmp_path / "run", torch.device("cpu"), resume=True, progress=False)
    after = _weights(tmp_path / "run" / "model.pt")
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_resume_fills_defaults_and_allows_a_decay_on_a_constant_run(mvtec_dir: Path, tmp_path: Path):
    from training.checkpoint import resume_conflicts

    cfg = tiny_config(mvtec_dir, epochs=2)
    old = merge(cfg, {})
    del old["train"]["lr_decay"], old["train"]["weight_decay"]  # a checkpoint older than these defaults
    old["model"].pop("fc_relu", None)
    assert resume_conflicts(old, merge(cfg, {"model": {"fc_relu": False}, "train": {"lr_decay": 0.5}})) == []
    assert resume_conflicts(old, merge(cfg, {"model": {"fc_relu": True}})) == ["model.fc_relu: False -> True"]


def test_a_checkpoint_write_that_fails_keeps_the_old_one_and_says_so(tmp_path: Path, monkeypatch):
    from training.checkpoint import save_checkpoint
    from training.models import build_model

    model = build_model({"arch": "mnist", "size": 28, "channels": 1, "latent": 4})
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, {"model": {"arch": "mnist"}}, step=1)
    before = path.read_bytes()

    def full(obj, f, *a, **k):  # what torch's C++ writer raises on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 896 vs 790")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write .*model.pt \(the write failed: disk full\?\); the previous "
                                      r"checkpoint, if any, is kept"):
        save_checkpoint(path, model, {"model": {"arch": "mnist"}}, step=2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def _params(path: Path, model_cfg: dict) -> dict[str, torch.Tensor]:
    """The trained parameters (not the buffers: training refits the normal-data statistics)."""
    from training.models import build_model

    names = {n for n, _ in build_model(model_cfg).named_parameters()}
    return {k: v for k, v in _weights(path).items() if k in names}


def test_init_starts_a_new_run_from_another_checkpoints_weights(mvtec_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]):
    from core.files import sha256

    cfg = tiny_config(mvtec_dir, arch="mnist", size=28, epochs=2)
    deployed = train(cfg, tmp_path / "deployed", torch.device("cpu"), max_steps=3, progress=False)
    # lr 0: whatever the first step's gradient, the weights after it are the ones it started from
    frozen = merge(cfg, {"train": {"lr": 0.0}})
    cfg_path = tmp_path / "frozen.yaml"
    cfg_path.write_text(yaml.safe_dump(frozen))
    assert train_main(["--config", str(cfg_path), "--out", str(tmp_path / "warm"), "--init", str(deployed),
                       "--max-steps", "1", "--quiet"]) == 0
    warm = tmp_path / "warm" / "model.pt"
    a, b = _params(deployed, cfg["model"]), _params(warm, cfg["model"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    ck = load_checkpoint(warm)
    # a new run: step 1 of its own, a fresh history and optimizer, and where its weights came from
    assert ck["step"] == 1 and ck["epoch"] == 0 and [h["step"] for h in ck["history"]] == [1]
    assert {int(s["step"]) for s in ck["optimizer"]["state"].values()} == {1}
    assert ck["init"] == {"path": str(deployed.resolve()), "sha256": sha256(deployed)} and ck["stats_ready"]
    # without --init the same run starts from the seed's weights, not the deployed ones
    cold = train(frozen, tmp_path / "cold", torch.device("cpu"), max_steps=1, progress=False)
    assert not all(torch.equal(a[k], v) for k, v in _params(cold, cfg["model"]).items())
    assert load_checkpoint(cold)["init"] is None
    # a resumed warm start still says where it started from
    train(frozen, tmp_path / "warm", torch.device("cpu"), resume=True, max_steps=2, progress=False)
    assert load_checkpoint(warm)["init"] == ck["init"] and load_checkpoint(warm)["step"] == 2


def test_init_refuses_another_model_a_foreign_file_and_non_finite_weights(mvtec_dir: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]):
    cfg = tiny_config(mvtec_dir, arch="mnist", size=28)
    deployed = train(cfg, tmp_path / "deployed", torch.device("cpu"), max_steps=1, progress=False)
    for change in ({"latent": 8}, {"fc_relu": False}, {"arch": "resnet18", "size": 64}, {"channels": 3}):
        with pytest.raises(ValueError, match=r"deployed/model.pt: --init from another model") as e:
            train(merge(cfg, {"model": change}), tmp_path / "r", torch.device("cpu"), init=deployed, progress=False)
        assert all(f"model.{k}:" in str(e.value) for k in change)
    foreign = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    ck = load_checkpoint(deployed)
    ck["model"]["fc.weight"][0, 0] = float("nan")
    poisoned = tmp_path / "nan.pt"
    torch.save(ck, poisoned)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    for bad, why in ((foreign, "not a checkpoint of this project"), (poisoned, "non-finite"),
                     (tmp_path / "missing.pt", "checkpoint not found")):
        assert train_main(["--config", str(cfg_path), "--out", str(tmp_path / "r"), "--init", str(bad), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad}: ") and why in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "model.pt").exists()  # refused before anything was trained
    with pytest.raises(SystemExit) as e:
        train_main(["--config", str(cfg_path), "--out", str(tmp_path / "deployed"), "--init", str(deployed),
                    "--resume"])
    assert e.value.code == 2 and "--init" in capsys.readouterr().err
    with pytest.raises(ValueError, match="give one of them"):
        train(cfg, tmp_path / "deployed", torch.device("cpu"), resume=True, init=deployed, progress=False)

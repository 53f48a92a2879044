"""Checkpoints: weights + full config + optimizer state, written atomically, loaded weights-only."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from core.files import atomic_write
from training.config import DEFAULTS, merge, registration_request
from training.models import VAE, build_model
from training.models.factory import model_settings


def all_finite(tensors: Any) -> bool:
    """Whether every float tensor among `tensors` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def finite_weights(model: torch.nn.Module) -> bool:
    """Whether every float parameter and buffer is finite (a NaN step must not reach a checkpoint)."""
    return all_finite(model.state_dict().values())


def save_checkpoint(path: str | Path, model: VAE, config: dict[str, Any], **state: Any) -> None:
    payload = {"config": config, "model": model.state_dict(), **state}
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except (OSError, RuntimeError) as e:  # torch's C++ writer reports a full disk as a bare RuntimeError
        reason = getattr(e, "strerror", None) or "the write failed: disk full?"
        raise OSError(f"cannot write {path} ({reason}); the previous checkpoint, if any, is kept: "
                      "free space, then --resume") from e


def _torch_load(path: Path, source: str | Path | io.BytesIO, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: {str(e)[:200]})") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return _torch_load(Path(path), path, map_location)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], str]:
    """(checkpoint, sha256) from ONE read of the file's bytes: hashing the file again after
    loading it would record another file's hash if training rewrote it in between."""
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    return _torch_load(path, io.BytesIO(data), map_location), hashlib.sha256(data).hexdigest()


# `train` keys a resumed run may change: how long it runs and how it logs, and the decayed
# fraction (the constant phase is bit-identical, so a decayed run may continue a constant one)
RESUMABLE_TRAIN_KEYS = frozenset({"epochs", "steps", "workers", "log_every", "checkpoint_every", "lr_decay"})
# `data` keys that do not change what is trained: where it lies, and the test split's size
RESUMABLE_DATA_KEYS = frozenset({"root", "cache_dir", "max_test"})


def resume_conflicts(old: dict[str, Any], new: dict[str, Any], train_defaults: dict[str, Any] | None = None,
                     sections: tuple[str, ...] = ("model", "train", "data", "registration")) -> list[str]:
    """What a --resume would silently change in the experiment: 'section.key: old -> new' for every
    model setting, every train setting outside RESUMABLE_TRAIN_KEYS, the data's format and
    augmentation, and the registration asked for (of `sections`). Both sides get the defaults
    first: a key a checkpoint predates is not a change. A registration section compares as its
    method and lighting: the values training fitted are no change of the experiment."""
    filled = {"model": model_settings,
              "train": lambda c: {**(DEFAULTS["train"] if train_defaults is None else train_defaults), **c},
              "data": lambda c: merge(DEFAULTS["data"], c),
              "registration": lambda c: registration_request({"registration": c})}
    free = {"model": frozenset(), "train": RESUMABLE_TRAIN_KEYS, "data": RESUMABLE_DATA_KEYS,
            "registration": frozenset()}
    diffs = []
    for section in sections:
        fill = filled[section]
        a, b = fill(old.get(section) or {}), fill(new.get(section) or {})
        for k in sorted((set(a) | set(b)) - free[section]):
            if a.get(k) != b.get(k):
                diffs.append(f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs


def resume_checkpoint(path: Path, config: dict[str, Any], map_location: str | torch.device,
                      train_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint --resume continues, after checking that it is there and was trained with the
    same experiment as `config` (ValueError listing every difference otherwise)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nothing to resume (drop --resume to start a new run there)")
    ck = _project_checkpoint(load_checkpoint(path, map_location), path)
    # the fitted section's method reads "none" where fit fell back: compare what was asked for
    old = {**ck["config"], "registration": ck.get("registration_request", ck["config"].get("registration"))}
    diffs = resume_conflicts(old, config, train_defaults)
    if diffs:
        raise ValueError(f"{path}: --resume with another experiment than the checkpoint's ({'; '.join(diffs)}); "
                         "resume with its config, or train into another --out")
    return ck


def init_checkpoint(path: str | Path, config: dict[str, Any],
                    map_location: str | torch.device) -> tuple[dict[str, Any], dict[str, str]]:
    """The weights --init starts a new run from, and the record of where they came from
    ({path, sha256} of the bytes loaded). ValueError naming the file unless it is a checkpoint of
    this project, of the model `config` describes (the `model` settings fix every layer's shape:
    another arch, size, channels, latent or fc_relu cannot be loaded), with finite weights."""
    path = Path(path)
    ck, digest = read_checkpoint(path, map_location)
    _project_checkpoint(ck, path)
    diffs = resume_conflicts(ck["config"], config, sections=("model",))
    if diffs:
        raise ValueError(f"{path}: --init from another model than the config's ({'; '.join(diffs)}); "
                         "give a checkpoint of the same model section, or train from scratch")
    if not all(isinstance(t, torch.Tensor) for t in ck["model"].values()):
        raise ValueError(f"{path}: not a checkpoint of this project (its model state holds more than tensors)")
    if not all_finite(ck["model"].values()):
        raise ValueError(f"{path}: non-finite (NaN/inf) weights cannot start a run; give another --init checkpoint")
    return ck["model"], {"path": str(path.resolve()), "sha256": digest}


def _project_checkpoint(ckpt: Any, path: str | Path) -> dict[str, Any]:
    """`ckpt` when it carries a config and a model state, else ValueError naming the file."""
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and isinstance(ckpt.get("model"), dict)):
        raise ValueError(f"{path}: not a checkpoint of this project (no config and model state; "
                         "a bare state_dict or tensor cannot say which model it is)")
    return ckpt


def _model_from(ckpt: dict[str, Any], path: str | Path, arch: str | None) -> tuple[VAE, dict[str, Any]]:
    """The trained model in eval mode and the config it was trained with; `arch` rejects a
    checkpoint of another family with a message naming the file."""
    _project_checkpoint(ckpt, path)
    if ckpt.get("stats_ready") is False:  # Eq. 4 and fusion would silently use placeholders
        raise ValueError(f"{path}: training stopped before the normal-data statistics were fitted; "
                         "finish it with python -m training.train --resume")
    config = ckpt["config"]
    found = config.get("model", {}).get("arch")
    if arch is not None and found != arch:
        raise ValueError(f"{path}: model.arch is {found!r}, not {arch!r}")
    model = build_model(config["model"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), config


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               arch: str | None = None) -> tuple[VAE, dict[str, Any]]:
    return _model_from(load_checkpoint(path, map_location), path, arch)


def load_model_hashed(path: str | Path, map_location: str | torch.device = "cpu",
                      arch: str | None = None) -> tuple[VAE, dict[str, Any], str]:
    """load_model plus the sha256 of the bytes the model was built from (export, parity check,
    the torch backend: what they record or verify must be what they loaded)."""
    ckpt, digest = read_checkpoint(path, map_location)
    return (*_model_from(ckpt, path, arch), digest)

"""Checkpoints: weights + full config + optimizer state, written atomically, loaded weights-only."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from training.models import VAE, build_model


def atomic_write(path: str | Path, write: Any, suffix: str = ".tmp") -> None:
    """Call write(tmp_path), then rename over `path`: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: VAE, config: dict[str, Any], **state: Any) -> None:
    payload = {"config": config, "model": model.state_dict(), **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: {str(e)[:200]})") from e


def load_model(path: str | Path, map_location: str | torch.device = "cpu",
               arch: str | None = None) -> tuple[VAE, dict[str, Any]]:
    """The trained model in eval mode and the config it was trained with; `arch` rejects a
    checkpoint of another family with a message naming the file."""
    ckpt = load_checkpoint(path, map_location)
    config = ckpt["config"]
    found = config.get("model", {}).get("arch")
    if arch is not None and found != arch:
        raise ValueError(f"{path}: model.arch is {found!r}, not {arch!r}")
    model = build_model(config["model"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), config

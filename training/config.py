"""YAML configs (yaml.safe_load) with defaults; one dict travels into the checkpoint."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from core.registration import RegistrationSpec
from families import family_of

DEFAULTS: dict[str, Any] = {
    "model": {"arch": "resnet18", "size": 256, "channels": 1, "latent": 32},
    "data": {"format": "mvtec", "augment": {"rotate": 0, "hflip": False, "vflip": False}},
    "train": {"epochs": 10, "batch_size": 8, "lr": 1e-4, "loss": "mse", "beta": 1.0, "seed": 0,
              "weight_decay": 0.0, "lr_decay": 0.0},
    # What inference (evaluation, export, runtime) computes: target layer, latent score, and the
    # map that drives masks and verdicts (chosen from bench.localization, see docs/benchmarks.md).
    "inference": {"layer": "layer3", "score": "sum_mu", "anomaly_map": "recon_error_blur", "blur_sigma": 4.0},
    # Host-side registration (core.registration) before the model: what a config asks for. Training
    # fits it on the training images and the checkpoint's config holds the fitted spec instead.
    "registration": {"method": "none", "lighting": "none"},
}
REGISTRATION_KEYS = ("method", "lighting")


def registration_request(config: dict[str, Any], strict: bool = False) -> dict[str, str]:
    """The config's `registration` section as asked for ({method, lighting}, defaults filled in);
    ValueError for an unknown value. strict (a training config): ValueError for any other key too,
    since the fitted values (background, poses, zoom...) come from the training images, never from
    YAML. Not strict, a checkpoint's fitted section reads as its method and lighting."""
    section = config.get("registration") or {}
    if not isinstance(section, dict):
        raise ValueError(f"registration: expected a mapping with {', '.join(REGISTRATION_KEYS)}, got {section!r}")
    unknown = sorted(set(section) - set(REGISTRATION_KEYS)) if strict else []
    if unknown:
        raise ValueError(f"registration.{unknown[0]}: unknown key (a config sets {' and '.join(REGISTRATION_KEYS)}; "
                         "training fits the rest on the training images)")
    request = {k: section.get(k, DEFAULTS["registration"][k]) for k in REGISTRATION_KEYS}
    RegistrationSpec(**request)  # validates the values against core.registration's one list of choices
    return request


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config is a mapping with model/data/train/inference sections")
    if not isinstance(raw.get("model") or {}, dict):
        raise ValueError(f"{path}: model: expected a mapping")
    try:
        family = family_of(raw).name
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if family != "vae":
        # another family's model and train keys have defaults of their own (families/<name>/); only
        # the registration request is shared
        return merge({"registration": DEFAULTS["registration"]}, raw)
    model = raw.get("model")
    if isinstance(model, dict) and model.get("arch") == "factorvae":
        # the dSprites family has its own `train` keys and defaults (factorvae_train.TRAIN_DEFAULTS);
        # the one-class defaults above would silently replace them
        return merge({**DEFAULTS, "train": {}}, raw)
    return merge(DEFAULTS, raw)

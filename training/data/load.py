"""The config-driven loader: picks the format's loader. The loaders import `Split` from
training.data.split, so the dispatch lives here, above them, and nothing imports back."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.registration import RegistrationSpec
from training.data import folder, mnist, mvtec, ucsd
from training.data.split import Split


def load_split(data_cfg: dict[str, Any], split: str, size: int, channels: int, strict: bool,
               root: str | Path | None = None, registration: RegistrationSpec | None = None,
               fit_registration: bool = False) -> Split:
    """Load `split` ('train' or 'test') of the dataset a config's `data` section describes.

    strict=True (training) raises on the first bad file; strict=False (evaluation) skips it and
    records the reason in Split.skipped. registration: the host registration every image goes
    through (core.prepare; a trained model's is `registration_of(config)`); fit_registration: fit
    it on this split's images first (training); Split.registration is then the fitted spec.
    """
    fmt = data_cfg.get("format", "mvtec")
    root = root or data_cfg.get("root")
    if not root:
        raise ValueError("data.root is not set: give it in the config's data section or with --data")
    root = Path(root)
    if not root.exists():
        where = "" if root.is_absolute() else (f" (relative to the current folder {Path.cwd()}: run from the "
                                                "repository root or pass --data)")
        raise FileNotFoundError(f"{root}: data folder does not exist{where}")
    reg = (registration, fit_registration)
    if fmt == "mvtec":
        return mvtec.load(root, split, size, channels, strict, *reg)
    if fmt == "folder":
        return folder.load(root, size, channels, strict, *reg)
    if fmt == "mnist":
        if registration is not None and registration.active:
            raise ValueError("registration: MNIST digits are centred already; set registration.method and "
                             "lighting to none for format mnist")
        return mnist.load(root, split, size, channels, data_cfg.get("normal_digit", 1), data_cfg.get("max_test", 2000))
    if fmt == "ucsd":
        return ucsd.load(root, split, size, channels, strict, data_cfg.get("sequences"), *reg)
    raise ValueError(f"unknown data format '{fmt}'; choose mvtec, folder, mnist or ucsd")


def registration_of(config: dict[str, Any]) -> RegistrationSpec:
    """The registration a trained model's config (its checkpoint's) carries: the fitted spec, or
    none for checkpoints older than registration. ValueError for a malformed section."""
    return RegistrationSpec.from_mapping(config.get("registration"))

"""The config-driven loader: picks the format's loader. The loaders import `Split` from
training.data.split, so the dispatch lives here, above them, and nothing imports back."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from training.data import folder, mnist, mvtec, ucsd
from training.data.split import Split


def load_split(data_cfg: dict[str, Any], split: str, size: int, channels: int, strict: bool,
               root: str | Path | None = None) -> Split:
    """Load `split` ('train' or 'test') of the dataset a config's `data` section describes.

    strict=True (training) raises on the first bad file; strict=False (evaluation) skips it and
    records the reason in Split.skipped.
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
    if fmt == "mvtec":
        return mvtec.load(root, split, size, channels, strict)
    if fmt == "folder":
        return folder.load(root, size, channels, strict)
    if fmt == "mnist":
        return mnist.load(root, split, size, channels, data_cfg.get("normal_digit", 1), data_cfg.get("max_test", 2000))
    if fmt == "ucsd":
        return ucsd.load(root, split, size, channels, strict, data_cfg.get("sequences"))
    raise ValueError(f"unknown data format '{fmt}'; choose mvtec, folder, mnist or ucsd")

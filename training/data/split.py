"""The common in-memory form of a dataset split, augmentation, and the config-driven loader."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int [N], 1 = anomalous
    masks: np.ndarray | None  # bool [N, H, W] or None when the split has no pixel ground truth
    names: list[str]
    kinds: list[str]  # defect type per image ("good" for normal)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray | list[int]) -> "Split":
        idx = np.asarray(idx, dtype=int)
        return Split(self.images[idx], self.labels[idx], None if self.masks is None else self.masks[idx],
                     [self.names[i] for i in idx], [self.kinds[i] for i in idx], list(self.skipped))


def rotate_flip(img: np.ndarray, angle: float, hflip: bool, vflip: bool) -> np.ndarray:
    """The paper's MVTec augmentation: rotation and mirroring. Reflected borders, so rotation
    adds no black corners that the model would learn as normal."""
    h, w = img.shape[:2]
    if angle:
        m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, 1.0)
        img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        img = img[:, :, None] if img.ndim == 2 else img
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    return np.ascontiguousarray(img)


class AugmentedImages(Dataset):
    """Training images with seeded augmentation: item i in epoch e always gets the same
    transform, whatever the worker or process (so DDP and resumed runs see the same data)."""

    def __init__(self, images: np.ndarray, rotate: float = 0.0, hflip: bool = False, vflip: bool = False,
                 seed: int = 0) -> None:
        self.images, self.rotate, self.hflip, self.vflip, self.seed = images, rotate, hflip, vflip, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.images[i]
        if self.rotate or self.hflip or self.vflip:
            rng = np.random.default_rng(zlib.crc32(f"{self.seed}:{self.epoch}:{i}".encode()))
            angle = float(rng.uniform(-self.rotate, self.rotate)) if self.rotate else 0.0
            img = rotate_flip(img, angle, self.hflip and rng.random() < 0.5, self.vflip and rng.random() < 0.5)
        return torch.from_numpy(np.ascontiguousarray(img))


def load_split(data_cfg: dict[str, Any], split: str, size: int, channels: int, strict: bool,
               root: str | Path | None = None) -> Split:
    """Load `split` ('train' or 'test') of the dataset a config's `data` section describes.

    strict=True (training) raises on the first bad file; strict=False (evaluation) skips it and
    records the reason in Split.skipped.
    """
    from training.data import folder, mnist, mvtec, ucsd

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

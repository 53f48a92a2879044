"""The common in-memory form of a dataset split, and augmentation (the loaders build a `Split`;
training.data.load picks the loader a config names)."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from core.registration import Registration, RegistrationSpec, warp_back


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int [N], 1 = anomalous
    masks: np.ndarray | None  # bool [N, H, W] or None when the split has no pixel ground truth
    names: list[str]
    kinds: list[str]  # defect type per image ("good" for normal)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    # images are the registered model inputs (core.prepare) when the spec is active; masks stay in
    # the image's own frame at model size, and each image's Registration takes its maps there
    registration: RegistrationSpec = field(default_factory=RegistrationSpec)
    registrations: list[Registration] | None = None   # None: registration off, maps need no warp

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray | list[int]) -> "Split":
        idx = np.asarray(idx, dtype=int)
        return Split(self.images[idx], self.labels[idx], None if self.masks is None else self.masks[idx],
                     [self.names[i] for i in idx], [self.kinds[i] for i in idx], list(self.skipped),
                     self.registration, None if self.registrations is None else [self.registrations[i] for i in idx])

    def to_original(self, maps: np.ndarray) -> np.ndarray:
        """Model-frame maps [N, h, w] -> float32 [N, h, w] in each image's own frame at model size,
        where the masks are (registration undone; outside the registered field 0): the one warp
        that evaluation, the benchmarks and their pictures use. Unchanged without registration."""
        if self.registrations is None:
            return maps
        h, w = maps.shape[-2:]
        return np.stack([warp_back(m, r, h, w) for m, r in zip(maps, self.registrations)]) if len(maps) else maps


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

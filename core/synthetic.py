"""Synthetic screw-like parts in MVTec AD's layout, for the demo where the shared data is absent and
for tests: a bar with a wider head at a random pose on a bright background, defects (a spot, a
scratch) drawn with their masks.

    make_parts(Path("runs/demo/data"))   # train/good, test/{good,spot,scratch}, ground_truth/...
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("spot", "scratch")


def part(rng: np.random.Generator, size: int = 96, defect: str | None = None,
         defect_gray: int = 125) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 gray image [size, size], uint8 mask {0, 255}) of one part at a random pose."""
    s = size / 96
    img = np.full((size, size), 200, np.uint8)
    cv2.rectangle(img, (round(20 * s), round(44 * s)), (round(76 * s), round(52 * s)), 50, -1)
    cv2.rectangle(img, (round(16 * s), round(38 * s)), (round(28 * s), round(58 * s)), 50, -1)  # the head
    mask = np.zeros_like(img)
    if defect == "spot":
        cv2.circle(mask, (round(60 * s), round(48 * s)), max(1, round(4 * s)), 255, -1)
    elif defect == "scratch":
        cv2.line(mask, (round(34 * s), round(46 * s)), (round(52 * s), round(50 * s)), 255, max(1, round(1.5 * s)))
    elif defect is not None:
        raise ValueError(f"defect {defect!r}: choose one of {', '.join(DEFECTS)}")
    img[mask > 0] = defect_gray  # a lighter mark inside the part: Otsu still calls it part
    angle = rng.uniform(-180, 180)
    centre = (size / 2 + rng.uniform(-4, 4) * s, size / 2 + rng.uniform(-4, 4) * s)
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    img = cv2.warpAffine(img, m, (size, size), borderValue=200)
    mask = cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_NEAREST)
    noisy = (img.astype(int) + rng.integers(-3, 4, img.shape)).clip(0, 255).astype(np.uint8)
    return noisy, mask


def make_parts(root: str | Path, n_train: int = 40, n_good: int = 8, n_defect: int = 8, size: int = 192,
               seed: int = 0, noise: float = 0.0, defect_gray: int = 125) -> Path:
    """Write an MVTec-layout folder of synthetic parts (n_defect per defect kind); returns `root`.
    `noise` (gray levels, training images only) makes them worse references; `defect_gray` closer
    to the part's 50 makes defects subtler."""
    root, rng = Path(root), np.random.default_rng(seed)
    for sub in ["train/good", "test/good", *(f"test/{d}" for d in DEFECTS), *(f"ground_truth/{d}" for d in DEFECTS)]:
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        img = part(rng, size)[0].astype(float) + (rng.normal(0, noise, (size, size)) if noise else 0)
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), img.clip(0, 255).astype(np.uint8))
    for i in range(n_good):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), part(rng, size)[0])
    for d in DEFECTS:
        for i in range(n_defect):
            img, mask = part(rng, size, d, defect_gray)
            cv2.imwrite(str(root / "test" / d / f"{i:03d}.png"), img)
            cv2.imwrite(str(root / "ground_truth" / d / f"{i:03d}_mask.png"), mask)
    return root

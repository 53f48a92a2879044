"""Shared fixtures: tiny synthetic datasets in MVTec layout and paths to the shared real data."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SCREW = SHARED / "mvtec" / "screw"
MNIST = SHARED / "mnist"
UCSD = SHARED / "ucsd" / "UCSDped2"

torch.set_num_threads(1)  # the CI machine has 2 cores; keep tests from oversubscribing them


def _part(rng: np.random.Generator, size: int, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    img = np.full((size, size), 200, np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 4, 60, -1)
    img = (img.astype(int) + rng.integers(-5, 6, img.shape)).clip(0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if defect:
        x, y = rng.integers(size // 4, 3 * size // 4, 2)
        cv2.rectangle(mask, (int(x), int(y)), (int(x) + size // 8, int(y) + size // 8), 255, -1)
        img[mask > 0] = 255
    return img, mask


def make_mvtec(root: Path, n_train: int = 16, n_good: int = 3, n_bad: int = 3, size: int = 64, seed: int = 0) -> Path:
    """A tiny MVTec-layout dataset: train/good, test/{good,crack}, ground_truth/crack."""
    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), _part(rng, size, False)[0])
    for i in range(n_good):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), _part(rng, size, False)[0])
    for i in range(n_bad):
        img, mask = _part(rng, size, True)
        cv2.imwrite(str(root / "test/crack" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "ground_truth/crack" / f"{i:03d}_mask.png"), mask)
    return root


@pytest.fixture
def mvtec_dir(tmp_path: Path) -> Path:
    return make_mvtec(tmp_path / "parts")


def tiny_config(root: Path, arch: str = "resnet18", size: int = 64, **train: object) -> dict:
    from training.config import DEFAULTS, merge

    return merge(DEFAULTS, {
        "model": {"arch": arch, "size": size, "channels": 1, "latent": 4},
        "data": {"format": "mvtec", "root": str(root), "augment": {"rotate": 30, "hflip": True}},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, **train},
        "inference": {"layer": "layer3" if arch == "resnet18" else "conv2", "score": "sum_mu",
                      "anomaly_map": "recon_error_blur", "blur_sigma": 2.0},
    })

"""MNIST idx.gz: one-class split (train on `normal_digit`, test on every digit).

Only the official test set is available here, so it is divided deterministically: the first
half of the normal digit's images train, the rest of the set (capped at max_test) tests.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from training.data.split import Split


def read_idx(path: Path) -> np.ndarray:
    """A gzipped idx file of unsigned bytes (MNIST's type); ValueError naming the file otherwise."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError) as e:  # not gzip, truncated stream
        raise ValueError(f"{path}: not a readable gzip file ({e})") from e
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] == 0:
        raise ValueError(f"{path}: not an idx file of unsigned bytes (header {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != header + int(np.prod(dims)):
        raise ValueError(f"{path}: {len(data) - header} data bytes for dims {dims} "
                         f"({header + int(np.prod(dims))} expected): truncated or not this file")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load(root: Path, split: str, size: int, channels: int, normal_digit: int, max_test: int) -> Split:
    if size != 28 or channels != 1:
        raise ValueError(f"MNIST is 28x28 grayscale: set model.size 28 and model.channels 1 (got {size}, {channels})")
    images = read_idx(root / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(int)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{root}: t10k-images {list(images.shape)} and t10k-labels {list(labels.shape)} are not "
                         "N 28x28 images with N labels")
    normal = np.flatnonzero(labels == normal_digit)
    train_idx = normal[: len(normal) // 2]
    if split == "train":
        idx = train_idx
    else:
        rest = np.setdiff1d(np.arange(len(labels)), train_idx)
        idx = rest[np.linspace(0, len(rest) - 1, min(max_test, len(rest))).astype(int)]
    imgs = images[idx][:, :, :, None]
    y = (labels[idx] != normal_digit).astype(int)
    return Split(imgs, y, None, [f"{labels[i]}/{i:05d}" for i in idx], [str(labels[i]) for i in idx])

"""The one definition of preprocessing, shared by training, export, calibration and runtime.

Host side (numpy/OpenCV) does only what a graph cannot do cheaply and identically everywhere:
decode, color conversion and resize to the model's input size, producing uint8 [H, W, C].
Everything numeric (cast, scale, normalize, layout) is `Preprocess`, an nn.Module that the model
runs first and that the exported graph contains, so training-time and exported scores cannot drift.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the reason."""


def decode_file(path: str | Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file as stored (any depth and channel count, OpenCV's BGR order).

    Raises ImageError naming the file for unreadable, zero-byte, corrupt or non-image files, and
    for headers OpenCV refuses to allocate (it raises cv2.error, e.g. a PNG claiming 100000^2 pixels).
    """
    p = Path(path)
    try:
        data = np.fromfile(str(p), dtype=np.uint8)  # np.fromfile copes with unicode names
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror or e})") from e
    if data.size == 0:
        raise ImageError(f"{p}: empty file (0 bytes)")
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as e:
        raise ImageError(f"{p}: OpenCV refuses to decode it ({getattr(e, 'err', '') or str(e).strip()[:200]})") from e
    if img is None:
        raise ImageError(f"{p}: not a decodable image (corrupt, truncated or not an image)")
    return img


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Decode an image file to uint8 [H, W, C] with C = channels (1 gray, 3 RGB).

    16-bit images are scaled to 8 bit, RGBA drops alpha, gray is replicated to RGB when asked.
    Raises ImageError naming the file for zero-byte, corrupt or non-image files.
    """
    return to_uint8_channels(decode_file(path), channels, source=str(path))


def to_uint8_channels(img: np.ndarray, channels: int, source: str = "image") -> np.ndarray:
    """Bring a decoded OpenCV image (BGR order, any depth) to uint8 [H, W, channels] (RGB/gray)."""
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"{source}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ImageError(f"{source}: unsupported image shape {img.shape}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ImageError(f"{source}: image too small ({img.shape[1]}x{img.shape[0]})")
    c = img.shape[2]
    if channels == 1:
        if c == 1:
            return img
        code = cv2.COLOR_BGRA2GRAY if c == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(img, code)[:, :, None]
    if channels == 3:
        if c == 1:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        code = cv2.COLOR_BGRA2RGB if c == 4 else cv2.COLOR_BGR2RGB
        return cv2.cvtColor(img, code)
    raise ValueError(f"channels must be 1 or 3, not {channels}")


def resize_to_model(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 [H, W, C] to the model's input size; INTER_AREA when shrinking (no aliasing)."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    shrink = img.shape[0] > height or img.shape[1] > width
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def load_for_model(path: str | Path, height: int, width: int, channels: int) -> np.ndarray:
    """Read + convert + resize: the whole host-side path from file to model input."""
    return resize_to_model(read_image(path, channels), height, width)


class Preprocess(nn.Module):
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [0, 1] (the reconstruction target) and the
    normalized encoder input. Lives inside the model so export carries it into the graph."""

    def __init__(self, channels: int, mean: float = 0.5, std: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), float(mean)))
        self.register_buffer("std", torch.full((1, channels, 1, 1), float(std)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cast before the transpose: TensorRT accepts uint8 only as an input to a Cast
        x01 = image.to(torch.float32).permute(0, 3, 1, 2) / 255.0
        return x01, self.normalize(x01)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """The encoder input from an image in [0, 1], e.g. a reconstruction fed back to the encoder."""
        return (x01 - self.mean) / self.std

"""Synthetic defects pasted on registered good parts: what the discriminative family learns from
(no defective part is needed), and what the automatic set-up scores settings on when the user
has no labelled defects. Numpy and OpenCV only, deterministic given the generator.

A defect is a region and what fills it (the idea behind DRAEM, Zavrtanik et al. 2021, without its
texture data set, which cannot be downloaded here):
  regions   "blob": a smooth random field at a random scale, thresholded (stains, dents, missing
            material); "scratch": 1 to 4 nearly parallel thin lines; both kept on the part
  fill      "donor": another good part, turned, scaled and re-coloured (a foreign texture that
            still looks like the material); "colour": the part shifted in colour; "light": the
            part brighter or darker; "noise": a random colour with grain; "warp": the part's own
            pixels from a few pixels away (a bent or shifted piece)
blended in with a random opacity over a slightly soft edge; the mask is the region.
"""
from __future__ import annotations

import cv2
import numpy as np

REGIONS = ("blob", "blob", "scratch")       # blobs twice as often: most defects are areas
FILLS = ("donor", "colour", "light", "noise", "warp")
MIN_PIXELS = 4


def blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 {0, 1} [h, w]: a thresholded smooth random field at a random scale."""
    scale = int(rng.choice([4, 8, 16, 32])) * max(h, w) // 128 or 1
    field = rng.standard_normal((max(2, h // scale), max(2, w // scale))).astype(np.float32)
    f = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    f = cv2.GaussianBlur(f, (0, 0), max(1.0, scale / 4))
    f = (f - f.mean()) / (f.std() + 1e-6)
    return (f > rng.uniform(0.8, 1.8)).astype(np.float32)


def scratch(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 {0, 1} [h, w]: 1 to 4 nearly parallel thin lines somewhere in the middle."""
    m = np.zeros((h, w), np.uint8)
    x, y = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    a = rng.uniform(0, np.pi)
    half = rng.uniform(0.05, 0.2) * max(h, w)
    width = max(1, round(max(h, w) / 128 * rng.integers(1, 3)))
    for i in range(int(rng.integers(1, 5))):
        dx, dy = np.cos(a + rng.normal(0, 0.05)), np.sin(a + rng.normal(0, 0.05))
        ox, oy = rng.uniform(-4, 4, 2) * i * max(h, w) / 128
        cv2.line(m, (int(x - dx * half + ox), int(y - dy * half + oy)), (int(x + dx * half + ox), int(y + dy * half + oy)),
                 1, width)
    return m.astype(np.float32)


def _fill(rng: np.random.Generator, kind: str, x: np.ndarray, donors: np.ndarray) -> np.ndarray:
    h, w, c = x.shape
    if kind == "donor":
        d = donors[rng.integers(len(donors))].astype(np.float32)
        M = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(0, 360), rng.uniform(0.5, 2.0))
        M[:, 2] += rng.uniform(-w / 4, w / 4, 2)
        d = cv2.warpAffine(d, M, (w, h), borderMode=cv2.BORDER_REFLECT).reshape(h, w, c)
        return d * rng.uniform(0.5, 1.5, c).astype(np.float32)
    if kind == "colour":
        return x + rng.uniform(-120, 120, c).astype(np.float32)
    if kind == "light":
        return x * np.float32(rng.uniform(0.2, 1.8))
    if kind == "noise":
        return rng.uniform(0, 255, c).astype(np.float32) + rng.normal(0, 30, (h, w, c)).astype(np.float32)
    d = rng.uniform(-6, 6, 2) * max(h, w) / 128
    return cv2.warpAffine(x, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), (w, h),
                          borderMode=cv2.BORDER_REFLECT).reshape(h, w, c)


def defect(rng: np.random.Generator, x: np.ndarray, donors: np.ndarray,
           where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A good registered part uint8 [h, w, C] -> (the part with one synthetic defect, uint8; its
    mask float32 {0, 1} [h, w]). donors: good parts [N, h, w, C] to take foreign texture from;
    where: float32 [h, w], 1 where a defect may lie (the part, not the background)."""
    h, w, _ = x.shape
    m = np.zeros((h, w), np.float32)
    for _ in range(10):     # a region that misses the part is drawn again
        m = (blob if rng.choice(REGIONS) == "blob" else scratch)(rng, h, w) * where
        if m.sum() >= MIN_PIXELS:
            break
    xf = x.astype(np.float32)
    content = np.clip(_fill(rng, str(rng.choice(FILLS)), xf, donors), 0, 255)
    alpha = np.float32(rng.uniform(0.3, 1.0)) * cv2.GaussianBlur(m, (0, 0), 0.7)[:, :, None]
    out = xf * (1 - alpha) + content * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), (m > 0).astype(np.float32)


def part_region(images: np.ndarray, margin: int = 3, contrast: float = 20.0) -> np.ndarray:
    """float32 [h, w]: where registered parts lie (their mean differs from the border's gray by
    more than `contrast` levels), widened by `margin` pixels; everywhere when the parts fill the
    picture (no background to tell apart)."""
    mean = images.astype(np.float32).mean(axis=0)
    c = mean.shape[2]
    border = np.concatenate([mean[0], mean[-1], mean[:, 0], mean[:, -1]]).reshape(-1, c)
    fg = (np.abs(mean - np.median(border, axis=0)).max(axis=2) > contrast).astype(np.uint8)
    if fg.mean() < 0.05 or fg.mean() > 0.95:
        return np.ones(fg.shape, np.float32)
    return cv2.dilate(fg, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)).astype(np.float32)

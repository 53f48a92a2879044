"""dSprites (Matthey et al. 2017), rendered by the project, or the official npz when a user has it.

    python -m training.data.dsprites [--npz dsprites_ndarray_*.npz] [--grid out.png] [--cache-dir DIR]

737,280 binary 64x64 images: 3 shapes (square, ellipse, heart) x 6 scales linspace(0.5, 1) x
40 orientations linspace(0, 2 pi) x 32 posX x 32 posY linspace(0, 1), in the official order
(posY varies fastest), so an index means the same image in both sources.

The dataset cannot be downloaded here, so `render` draws it: each sprite is a polygon centred on
its area centroid, scaled, rotated counter-clockwise on screen, and filled with sub-pixel
precision (cv2.fillPoly, 8 fractional bits), binary as the original. Position maps linearly
onto the central half of the canvas (centroid x = 15.5 + 32 posX in pixel-centre coordinates):
32 steps of about one pixel, the original's "smallest step changes while ensuring that all
pixel outputs were different", with every sprite fully inside the image.

The full render (a few seconds) is cached as a bit-packed compressed npz named by the hash of
the renderer's specification, under $VAE_INSPECT_CACHE or ~/.cache/vae-inspect (outside git).
In memory the images stay bit-packed (377 MB instead of 3 GB) and are unpacked per batch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
SIZE = 64
NUM_IMAGES = int(np.prod(FACTOR_SIZES))
# Row-major strides of the official ordering: index = factors @ BASES.
BASES = np.array([int(np.prod(FACTOR_SIZES[i + 1:])) for i in range(len(FACTOR_SIZES))], dtype=np.int64)

# Renderer geometry, in pixels at scale 1. Part of the cache key: change any of it and the cache
# file name changes with it.
RENDER_SPEC: dict[str, Any] = {
    "version": 1,
    "square_side": 16.0,
    "ellipse_axes": [11.0, 5.5],  # semi-axes along x and y before rotation
    "heart_width": 18.0,
    "ellipse_vertices": 64,
    "heart_vertices": 96,
    "pos_range": [15.5, 47.5],  # centroid at posX/posY = 0 and 1, pixel-centre coordinates
    "subpixel_bits": 8,
}


def factor_values() -> dict[str, np.ndarray]:
    """The value of each factor class, as the official `latents_values` (shape as 0, 1, 2)."""
    return {"shape": np.arange(3, dtype=np.float64), "scale": np.linspace(0.5, 1.0, 6),
            "orientation": np.linspace(0.0, 2 * np.pi, 40), "posX": np.linspace(0.0, 1.0, 32),
            "posY": np.linspace(0.0, 1.0, 32)}


def _centred(poly: np.ndarray) -> np.ndarray:
    """Shift a closed polygon so that its area centroid is the origin (the rotation centre and
    the point that posX/posY place)."""
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    c = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)
    return poly - c


def base_polygons(spec: dict[str, Any] = RENDER_SPEC) -> list[np.ndarray]:
    """[V, 2] polygons (x right, y down) at scale 1, orientation 0, centred on their centroid."""
    h = spec["square_side"] / 2
    square = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    t = np.linspace(0, 2 * np.pi, spec["ellipse_vertices"], endpoint=False)
    a, b = spec["ellipse_axes"]
    ellipse = np.stack([a * np.cos(t), b * np.sin(t)], 1)
    # The classic heart curve (x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t): two
    # lobes up, point down, like the dSprites heart; y is negated because image y points down.
    t = np.linspace(0, 2 * np.pi, spec["heart_vertices"], endpoint=False)
    heart = np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    heart *= spec["heart_width"] / 32.0
    return [_centred(p) for p in (square, ellipse, heart)]


def render(factors: np.ndarray, spec: dict[str, Any] = RENDER_SPEC) -> np.ndarray:
    """Draw sprites for factor classes [N, 5] (shape, scale, orientation, posX, posY): uint8
    [N, 64, 64] with values {0, 1}. Vertex transforms are vectorized; filling is one cv2 call
    per image (~8 us)."""
    f = np.asarray(factors, dtype=np.int64).reshape(-1, len(FACTOR_SIZES))
    _check_factors(f)
    vals = factor_values()
    out = np.zeros((len(f), SIZE, SIZE), np.uint8)
    lo, hi = spec["pos_range"]
    one = 1 << spec["subpixel_bits"]
    for s, poly in enumerate(base_polygons(spec)):
        idx = np.flatnonzero(f[:, 0] == s)
        if idx.size == 0:
            continue
        scale = vals["scale"][f[idx, 1]][:, None, None]
        th = vals["orientation"][f[idx, 2]]
        c, sn = np.cos(th)[:, None], np.sin(th)[:, None]
        px, py = poly[None, :, 0] * scale[:, :, 0], poly[None, :, 1] * scale[:, :, 0]
        # Counter-clockwise on screen (y down): x' = x cos + y sin, y' = -x sin + y cos.
        rx, ry = px * c + py * sn, -px * sn + py * c
        cx = lo + (hi - lo) * vals["posX"][f[idx, 3]][:, None]
        cy = lo + (hi - lo) * vals["posY"][f[idx, 4]][:, None]
        pts = np.round(np.stack([rx + cx, ry + cy], -1) * one).astype(np.int32)  # fixed point
        for j, i in enumerate(idx):
            cv2.fillPoly(out[i], [pts[j]], 1, cv2.LINE_8, spec["subpixel_bits"])
    return out


def _check_factors(f: np.ndarray) -> None:
    if f.ndim != 2 or f.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"factors must be [N, {len(FACTOR_SIZES)}] ({', '.join(FACTOR_NAMES)}), got {f.shape}")
    if (f < 0).any() or (f >= np.array(FACTOR_SIZES)).any():
        raise ValueError(f"factor classes out of range; sizes are {dict(zip(FACTOR_NAMES, FACTOR_SIZES))}")


def factors_to_index(factors: np.ndarray) -> np.ndarray:
    """Factor classes [N, 5] -> image indices [N] in the official order."""
    f = np.asarray(factors, dtype=np.int64).reshape(-1, len(FACTOR_SIZES))
    _check_factors(f)
    return f @ BASES


def index_to_factors(index: np.ndarray) -> np.ndarray:
    """Image indices [N] -> factor classes [N, 5]."""
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    return (idx[:, None] // BASES) % np.array(FACTOR_SIZES)


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAE_INSPECT_CACHE") or Path.home() / ".cache" / "vae-inspect")


def spec_hash(spec: dict[str, Any] = RENDER_SPEC) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class DSprites:
    """All 737,280 images, bit-packed [N, 64, 8], with the ground-truth factor helpers that the
    FactorVAE metric and training need. `source`: 'rendered', 'cache' or the npz path."""

    num_factors = len(FACTOR_SIZES)
    factor_sizes = FACTOR_SIZES
    factor_names = FACTOR_NAMES

    def __init__(self, packed: np.ndarray, source: str, seconds: float = 0.0, cache_path: Path | None = None) -> None:
        if packed.shape != (NUM_IMAGES, SIZE, SIZE // 8) or packed.dtype != np.uint8:
            raise ValueError(f"{source}: expected bit-packed images {(NUM_IMAGES, SIZE, SIZE // 8)}, got {packed.shape}")
        self.packed, self.source, self.seconds, self.cache_path = packed, source, seconds, cache_path

    def __len__(self) -> int:
        return NUM_IMAGES

    def images(self, index: np.ndarray) -> np.ndarray:
        """uint8 [N, 64, 64, 1] with values {0, 255}: the model input format (training.preprocess)."""
        bits = np.unpackbits(self.packed[np.asarray(index, dtype=np.int64)], axis=-1)
        return (bits * np.uint8(255))[..., None]

    def images_for_factors(self, factors: np.ndarray) -> np.ndarray:
        return self.images(factors_to_index(factors))

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n factor rows, each factor uniform over its classes (disentanglement_lib's sampling)."""
        return np.stack([rng.integers(0, s, n) for s in FACTOR_SIZES], 1)


def _save_cache(path: Path, packed: np.ndarray) -> None:
    from core.files import atomic_write

    digest = hashlib.sha256(packed.tobytes()).hexdigest()
    atomic_write(path, lambda tmp: np.savez_compressed(open(tmp, "wb"), packed=packed, sha256=np.array(digest)))


def _load_cache(path: Path) -> np.ndarray | None:
    """The cached images, or None (and the file removed) when it is unreadable or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            packed, digest = z["packed"], str(z["sha256"])
        if hashlib.sha256(packed.tobytes()).hexdigest() == digest:
            return packed
    except Exception:  # noqa: BLE001 - any failure means: render again
        pass
    print(f"warning: {path}: corrupt dSprites cache, rendering again", file=sys.stderr)
    path.unlink(missing_ok=True)
    return None


def render_all(chunk: int = 16384) -> np.ndarray:
    """Render every image in the official order, packed chunk by chunk (never 3 GB at once)."""
    packed = np.empty((NUM_IMAGES, SIZE, SIZE // 8), np.uint8)
    for lo in range(0, NUM_IMAGES, chunk):
        idx = np.arange(lo, min(lo + chunk, NUM_IMAGES))
        packed[idx] = np.packbits(render(index_to_factors(idx)), axis=-1)
    return packed


def load_official(path: str | Path) -> DSprites:
    """The official dsprites_ndarray_*.npz: its `imgs` and `latents_classes` (metadata, a pickle,
    is never read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dSprites npz not found")
    t0 = time.time()
    try:
        with np.load(path, allow_pickle=False) as z:
            imgs, classes = z["imgs"], z["latents_classes"]
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a dSprites npz with imgs and latents_classes ({e})") from e
    if imgs.shape != (NUM_IMAGES, SIZE, SIZE) or classes.shape != (NUM_IMAGES, 6):
        raise ValueError(f"{path}: expected imgs {(NUM_IMAGES, SIZE, SIZE)} and latents_classes ({NUM_IMAGES}, 6), "
                         f"got {imgs.shape} and {classes.shape}")
    order = factors_to_index(classes[:, 1:])  # column 0 is the constant color
    packed = np.empty((NUM_IMAGES, SIZE, SIZE // 8), np.uint8)
    packed[order] = np.packbits(imgs.astype(bool), axis=-1)
    return DSprites(packed, str(path), time.time() - t0)


def load_dsprites(npz: str | Path | None = None, cache_dir: str | Path | None = None, use_cache: bool = True) -> DSprites:
    """The official npz when given, else the project's render (from the cache when present)."""
    if npz:
        return load_official(npz)
    path = Path(cache_dir or default_cache_dir()) / f"dsprites-{spec_hash()}.npz"
    t0 = time.time()
    if use_cache and path.is_file():
        packed = _load_cache(path)
        if packed is not None:
            return DSprites(packed, "cache", time.time() - t0, path)
    packed = render_all()
    seconds = time.time() - t0
    if use_cache:
        try:
            _save_cache(path, packed)
        except OSError as e:  # a read-only home must not stop training: warn and go on
            print(f"warning: {path}: cannot write the dSprites cache ({e.strerror or e})", file=sys.stderr)
            path = None
    return DSprites(packed, "rendered", seconds, path)


def grid(images: np.ndarray, cols: int) -> np.ndarray:
    """[N, H, W(, 1)] -> one uint8 image with a 1-pixel grey border between tiles."""
    imgs = images.reshape(len(images), SIZE, SIZE)
    rows = -(-len(imgs) // cols)
    out = np.full((rows * (SIZE + 1) + 1, cols * (SIZE + 1) + 1), 128, np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        out[1 + r * (SIZE + 1):1 + r * (SIZE + 1) + SIZE, 1 + c * (SIZE + 1):1 + c * (SIZE + 1) + SIZE] = im
    return out


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 image atomically (the suffix tells OpenCV the format)."""
    from core.files import atomic_write

    def write(tmp: str) -> None:
        if not cv2.imwrite(tmp, image):
            raise OSError(f"{path}: cannot write PNG")

    atomic_write(path, write, suffix=".png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.data.dsprites",
                                description="Render (or load) dSprites, fill the cache, report time and size.")
    p.add_argument("--npz", help="official dsprites_ndarray_*.npz instead of the project's render")
    p.add_argument("--cache-dir", help="cache folder (default $VAE_INSPECT_CACHE or ~/.cache/vae-inspect)")
    p.add_argument("--no-cache", action="store_true", help="render without reading or writing the cache")
    p.add_argument("--grid", help="write a PNG of every shape x 8 orientations x a few positions and scales")
    args = p.parse_args(argv)
    try:
        d = load_dsprites(args.npz, args.cache_dir, not args.no_cache)
        size = d.cache_path.stat().st_size if d.cache_path and d.cache_path.is_file() else 0
        print(f"dSprites: {len(d)} images from {d.source} in {d.seconds:.1f} s"
              + (f"; cache {d.cache_path} ({size / 2**20:.1f} MiB)" if size else ""))
        if args.grid:
            rng = np.random.default_rng(0)
            f = np.stack([np.repeat(np.arange(3), 8), rng.integers(0, 6, 24), np.tile(np.arange(0, 40, 5), 3),
                          rng.integers(0, 32, 24), rng.integers(0, 32, 24)], 1)
            write_png(args.grid, grid(d.images_for_factors(f), 8))
            print(f"wrote {args.grid}")
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

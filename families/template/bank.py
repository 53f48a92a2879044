"""The "template" anomaly map: a training-free comparison with the nearest registered good parts.

Once the parts are registered (core.registration), a good part looks like some training part:
for each test image the k nearest bank images (L2 between SEARCH x SEARCH INTER_AREA copies,
OpenCV's brute-force search: ~0.2 ms for 320 images) are compared pixel by pixel, and the map is
the per-pixel minimum |difference| over those k (a pixel is anomalous only if no close good part
explains it), Gaussian-blurred. With a `tolerance` of t pixels a reference explains a pixel when
the pixel's value lies within the reference's range over the (2t + 1)^2 pixels around it (its
local minimum and maximum): what a part that sits a pixel or two off its reference shows at every
edge is not a difference then. Whether that helps is the part's: on metal_nut (the lobes' edges
never align exactly) the template's image AUROC rose from 0.898 to 0.922 at 128 px with t = 1; on
screws (fine thread defects) it fell from 0.969 to 0.957 at 256 px, so the set-up measures it.

    bank = TemplateBank(registered_train_images, k=5)             # uint8 [N, h, w, C]
    maps = bank.anomaly_map(registered_test_images)               # float32 [N, 1, h, w]
    bank.save("bank.npz"); bank = TemplateBank.load("bank.npz")

Maps are in gray levels / 255 (the units of a reconstruction error of images in [0, 1]); colour
images take the largest channel difference. The default blur is the classical baseline's sigma
3 at 256 x 256 scaled to the model's size. Torch-free: numpy and OpenCV only.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np

from core.files import atomic_write

SEARCH = 64          # side of the copies compared to pick the nearest bank images
MAX_TOLERANCE = 4    # pixels: beyond a few, whole small defects fit inside a reference's range
FORMAT = "template_bank/1"


class TemplateError(ValueError):
    """A bank (or a graph of it) cannot be built from this data; the message names the folder or
    file and the reason."""


def _small(images: np.ndarray) -> np.ndarray:
    """uint8 [N, h, w, C] -> float32 [N, SEARCH * SEARCH * C], HWC order: block means (INTER_AREA,
    no aliasing) kept in float, not rounded to uint8, so that the exported graph (an average pool)
    computes the very same copies."""
    return np.stack([cv2.resize(img.astype(np.float32), (SEARCH, SEARCH), interpolation=cv2.INTER_AREA).ravel()
                     for img in images])


def _check_batch(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3) or len(images) == 0:
        raise ValueError(f"{what}: expected uint8 [N, h, w, 1|3] with N >= 1, got {images.dtype} {list(images.shape)}")
    return images


class TemplateBank:
    """Registered good images at model size and the per-pixel nearest-template anomaly map.

    `sigma` is in model pixels (None: 3 * h / 256); k is capped by the bank size; `tolerance` in
    model pixels (module docstring)."""

    def __init__(self, images: np.ndarray, k: int = 5, sigma: float | None = None, tolerance: int = 0) -> None:
        self.images = np.ascontiguousarray(_check_batch(images, "template bank"))
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"template bank k: {k!r} is not a count >= 1")
        self.k = int(min(k, len(self.images)))
        self.sigma = 3.0 * self.images.shape[1] / 256 if sigma is None else float(sigma)
        if not np.isfinite(self.sigma) or self.sigma < 0:
            raise ValueError(f"template bank sigma: {sigma!r} is not a number >= 0")
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) \
                or not 0 <= tolerance <= MAX_TOLERANCE:
            raise ValueError(f"template bank tolerance: {tolerance!r} is not a count of pixels in [0, {MAX_TOLERANCE}]")
        self.tolerance = int(tolerance)
        self.small = _small(self.images)
        self.low = self.high = self.images
        if self.tolerance:
            kernel = np.ones((2 * self.tolerance + 1,) * 2, np.uint8)
            self.low = np.stack([cv2.erode(im, kernel).reshape(im.shape) for im in self.images])
            self.high = np.stack([cv2.dilate(im, kernel).reshape(im.shape) for im in self.images])

    @property
    def nbytes(self) -> int:
        extra = self.low.nbytes + self.high.nbytes if self.tolerance else 0
        return int(self.images.nbytes + self.small.nbytes + extra)

    def nearest(self, batch: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices int64 [N, k], RMS distances in gray levels float32 [N, k]), nearest first."""
        q = _small(self._check(batch))
        # OpenCV's brute-force k nearest, on OpenCV's threads: a BLAS product stalled for ms per
        # query on a busy 2-core machine
        d2, idx = cv2.batchDistance(q, self.small, cv2.CV_32F, normType=cv2.NORM_L2SQR, K=k or self.k)
        return idx.astype(np.int64), np.sqrt(d2 / q.shape[1]).astype(np.float32)

    def anomaly_map(self, batch: np.ndarray) -> np.ndarray:
        """Registered uint8 [N, h, w, C] at the bank's size -> float32 [N, 1, h, w], in gray / 255."""
        batch = self._check(batch)
        return self._maps(batch, self.nearest(batch)[0])

    def leave_one_out(self) -> np.ndarray:
        """Each bank image's map against the others (itself left out): what the map looks like on
        good parts it has not seen, float32 [N, 1, h, w], for the normal scale and thresholds."""
        return self._maps(self.images, self.others())

    def others(self) -> np.ndarray:
        """int64 [N, k]: each bank image's k nearest other bank images (itself left out)."""
        if len(self.images) < 2:
            raise ValueError("template bank: leave-one-out needs at least 2 images")
        k = min(self.k, len(self.images) - 1)
        idx, _ = self.nearest(self.images, k + 1)
        # drop each image's own index (distance 0, normally first; a duplicate image may come first)
        return np.array([row[row != i][:k] for i, row in enumerate(idx)])

    def references(self, img: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One registered image and its nearest bank images -> (their mean, float32 [h, w, C];
        the least |difference| to them per pixel, worst channel, uint8 [h, w]): the template map
        before its blur, and what a learned family compares the part with."""
        diff = np.full(img.shape, 255, np.uint8)
        for j in near:
            if self.tolerance:   # saturating: at most one of the two is above 0 (low <= high)
                d = cv2.add(cv2.subtract(img, self.high[j]), cv2.subtract(self.low[j], img))
            else:
                d = cv2.absdiff(img, self.images[j])
            np.minimum(diff, d.reshape(img.shape), out=diff)
        return self.images[near].mean(axis=0, dtype=np.float32), diff.max(axis=2)

    def _maps(self, batch: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(batch), 1) + batch.shape[1:3], np.float32)
        for i, (img, near) in enumerate(zip(batch, idx)):
            m = self.references(img, near)[1].astype(np.float32) * np.float32(1 / 255)
            out[i, 0] = cv2.GaussianBlur(m, (0, 0), self.sigma) if self.sigma > 0 else m
        return out

    def _check(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch, "template map")
        if batch.shape[1:] != self.images.shape[1:]:
            raise ValueError(f"template map: images are {list(batch.shape[1:])}, the bank holds "
                             f"{list(self.images.shape[1:])} (h, w, C)")
        return batch

    def save(self, path: str | Path) -> None:
        """An atomic .npz (no pickles): the images, k, sigma and tolerance."""
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, format=np.array(FORMAT), images=self.images, k=np.array(self.k),
                         sigma=np.array(self.sigma), tolerance=np.array(self.tolerance))
        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> TemplateBank:
        """Read a bank written by save(); ValueError naming the file for anything else."""
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            with z:
                if "format" not in z.files or str(z["format"]) != FORMAT:
                    raise ValueError(f"no '{FORMAT}' format marker")
                # banks written before tolerance existed compared pixel by pixel
                tolerance = int(z["tolerance"]) if "tolerance" in z.files else 0
                return cls(z["images"], int(z["k"]), float(z["sigma"]), tolerance)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a template bank ({e})") from e

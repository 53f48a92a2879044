"""What calibration measured on the held-out images, in one container that can be split by image.

Per image: the label (defective or good), the runtime's own image score (Inspection.score, the
max of the anomaly map at model size; +inf for an image whose registration failed, which the line
rejects), and for the pixel statistics the anomaly map and the defect mask, both in the original
image's frame (registration undone) at the model's resolution. Without defect masks (image labels
only: `masked` False) a defective image's pixels are of unknown class, and only the good images'
pixels count. `take(idx)` gives the images of a fold, so a threshold chosen on a subset can only
have seen that subset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    files: tuple[str, ...]      # relative paths, the data set's order
    labels: np.ndarray          # bool [N]: defective
    scores: np.ndarray          # float64 [N]: Inspection.score; +inf where registration failed
    maps: np.ndarray            # float32 [N, h, w]: anomaly map, original frame, model resolution (0 if failed)
    masks: np.ndarray           # bool [N, h, w]: defect pixels at the same resolution
    index: np.ndarray           # int [N]: position in the full data set (folds and tests)
    masked: bool = True         # the defective images' masks are known (False: image labels only)

    def __post_init__(self) -> None:
        n = len(self.files)
        shapes = (self.labels.shape, self.scores.shape, self.index.shape, self.maps.shape[:1], self.masks.shape[:1])
        if any(s != (n,) for s in shapes) or self.maps.shape != self.masks.shape:
            raise ValueError(f"inconsistent calibration arrays for {n} images: {shapes}, maps {self.maps.shape}, "
                             f"masks {self.masks.shape}")

    @classmethod
    def build(cls, files: list[str], labels: list[bool], scores: list[float], maps: np.ndarray,
              masks: np.ndarray, masked: bool = True) -> "Scores":
        return cls(tuple(files), np.asarray(labels, bool), np.asarray(scores, np.float64), maps, masks,
                   np.arange(len(files)), masked)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def scored(self) -> np.ndarray:
        """bool [N]: the image went through the model (registration did not fail)."""
        return np.isfinite(self.scores)

    @property
    def labelled(self) -> bool:
        """Both classes present: ROC, best IoU and recall are defined."""
        return bool(self.labels.any() and (~self.labels).any())

    def take(self, idx: np.ndarray) -> "Scores":
        """The images at positions `idx` (a fold), their arrays copied."""
        idx = np.asarray(idx, dtype=int)
        return Scores(tuple(self.files[i] for i in idx), self.labels[idx], self.scores[idx], self.maps[idx],
                      self.masks[idx], self.index[idx], self.masked)

    @property
    def pixel_images(self) -> np.ndarray:
        """bool [N]: the images whose pixels the pixel statistics count: scored, and of known pixel
        class (every scored image with masks; the good ones alone with image labels only)."""
        return self.scored & (~self.labels if not self.masked else True)

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(defect, map value) of every pixel of the pixel_images, flattened."""
        ok = self.pixel_images
        return self.masks[ok].ravel(), self.maps[ok].ravel()

"""Registration method `shift`: parts that already sit in one pose (a fixture, a conveyor stop),
where only the camera or the fixture jitters by a few pixels. A turned, moved or missing part is
the defect there, so this method corrects only a translation, and only as far as the training
pictures moved: a part moved further stays moved and lights the map up.

  shift     phase correlation (sub-pixel, Hanning window) of the gray work copy against the
            fitted reference, clamped to spec.shift_limit.
  residual  1 - the correlation with the reference once shifted (reported, never a failure: a
            missing or broken part must be scored, not skipped).
  frame     the picture itself, shifted; edge pixels fill what the shift uncovers (such parts
            often fill the picture: a constant fill would draw a false edge).
  fit       the reference (the mean of the training pictures, aligned to it FIT_ROUNDS times), the
            largest training shift widened by FIT_MARGIN plus half a work pixel, the residuals.
No silhouette is needed: the part may fill the picture, without a background to find.
"""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np

from core.registration.silhouette import Silhouette
from core.registration.spec import (FIT_MARGIN, Failure, Pose, RegistrationSpec, decode_picture, encode_picture,
                                    phase_shift)

NEEDS_PART = False
FIT_ROUNDS = 2


def _shift(work: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.array(phase_shift(reference, work))


def _moved(work: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The work copy moved by -d (onto the reference)."""
    M = np.array([[1.0, 0.0, -d[0]], [0.0, 1.0, -d[1]]])
    return cv2.warpAffine(work, M, work.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _residual(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(1.0 - (a * b).sum() / max(math.sqrt(float((a * a).sum() * (b * b).sum())), 1e-6))


def pose(image: np.ndarray, sil: Silhouette, spec: RegistrationSpec) -> Pose | Failure:
    if spec.reference is None or spec.shift_limit is None:
        raise ValueError("registration reference: unset; fit the spec on training images (method shift)")
    reference = decode_picture(spec.reference)
    if sil.work.shape != reference.shape:
        return Failure("unusual_pose", f"the picture's shape ({image.shape[1]}x{image.shape[0]}) differs from the "
                                       "training pictures' (another camera or region?)")
    d = _shift(sil.work, reference)
    limit = spec.shift_limit * max(sil.work.shape)
    norm = math.hypot(*d)
    if norm > limit:   # moved further than any training part: correct the jitter only
        d = d * (limit / norm)
    residual = _residual(_moved(sil.work, d), reference)
    shift = d / np.asarray(sil.scale)            # decoded pixels
    H, W = image.shape[:2]
    A = np.array([[1.0, 0.0, -shift[0]], [0.0, 1.0, -shift[1]], [0.0, 0.0, 1.0]])
    centre = (float((W - 1) / 2 + shift[0]), float((H - 1) / 2 + shift[1]))
    return Pose(A, 0.0, centre, False, residual, border="replicate")


def fit(spec: RegistrationSpec, images: list[np.ndarray], sils: list[Silhouette]) -> RegistrationSpec:
    shapes = {s.work.shape for s in sils}
    if len(shapes) > 1:
        raise ValueError(f"registration fit (shift): the training pictures have different shapes "
                         f"({', '.join(f'{w}x{h}' for h, w in sorted(shapes))} at the work size); one camera and "
                         "region is needed")
    works = [s.work for s in sils]
    reference = np.mean(works, axis=0)
    shifts = np.zeros((len(works), 2))
    for _ in range(FIT_ROUNDS):
        shifts = np.stack([_shift(w, reference) for w in works])
        reference = np.mean([_moved(w, d) for w, d in zip(works, shifts)], axis=0)
    largest = float(np.hypot(shifts[:, 0], shifts[:, 1]).max())
    residual = max(_residual(_moved(w, d), reference) for w, d in zip(works, shifts))
    long_side = max(works[0].shape)
    return replace(spec, reference=encode_picture(reference), residual=round(residual, 4),
                   shift_limit=round((largest * (1 + FIT_MARGIN) + 0.5) / long_side, 5))

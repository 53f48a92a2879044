"""Run the deployed model over the calibration images, exactly as inspection and the camera do.

Each image goes through runtime.pipeline (decode, colour, registration, resize, the backend of the
model file's extension, and `judge`), so its score is the runtime's own Inspection.score and a
threshold chosen on it gives the same verdict in runtime.inspect. For the pixel statistics the
model-size anomaly map is taken back onto the original image frame (core.registration.warp_back,
which undoes the registration) at the model's resolution, and the mask is brought to that size
(INTER_AREA, > 127): the memory per image is two model-size arrays, whatever the images' size.

An image whose registration fails has no score: it is recorded with its reason, scored +inf (the
line rejects it to manual check) and contributes no pixels.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from calibration.data import DataError, Dataset, Sample
from calibration.scores import Scores
from core.images import ImageError, read_image
from core.prepare import Prepared
from core.registration import warp_back
from runtime.pipeline import Pipeline, registration_error
from runtime.postprocess import OutputError, Thresholds

MASK_RESIZE = "INTER_AREA, > 127"


@dataclass
class Collected:
    scores: Scores
    samples: tuple[Sample, ...]
    failures: list[dict[str, Any]]       # {file, status, reason} of failed registrations
    statuses: dict[str, int]             # registration status counts
    gains: list[float]                   # lighting gains of the good parts (lighting normalization on)
    normal_p99: float | None             # 99th percentile of the good parts' model-size maps, pooled
    resolution: tuple[int, int]          # (h, w) of the pixel statistics


def model_mask(sample: Sample, p: Prepared, height: int, width: int) -> np.ndarray:
    """The sample's defect mask (False everywhere for a good part) at height x width. DataError
    when the mask does not have its image's size."""
    if sample.mask is None:
        return np.zeros((height, width), bool)
    try:
        m = read_image(sample.mask, 1)[:, :, 0]
    except ImageError as e:
        raise DataError(str(e)) from e
    if m.shape != p.original:
        raise DataError(f"{sample.mask}: mask is {m.shape[1]}x{m.shape[0]}, its image is "
                        f"{p.original[1]}x{p.original[0]}")
    return cv2.resize(m, (width, height), interpolation=cv2.INTER_AREA) > 127


def collect(pipe: Pipeline, ds: Dataset, batch: int = 8, progress: bool = False) -> Collected:
    """Scores, maps and masks of every sample (see the module docstring).

    Raises DataError for an unreadable image or a bad mask, OutputError (naming the file) for a
    model output that is not finite, BackendError when the backend fails."""
    from tqdm import tqdm

    h, w = pipe.spec.height, pipe.spec.width
    scorer = Pipeline(pipe.model, Thresholds())  # scores only: no full-size mask work per image
    n = len(ds.samples)
    maps = np.zeros((n, h, w), np.float32)
    masks = np.zeros((n, h, w), bool)
    scores = np.full(n, np.inf)
    failures: list[dict[str, Any]] = []
    statuses: Counter[str] = Counter()
    gains: list[float] = []
    normal_maps: list[np.ndarray] = []
    lighting = pipe.spec.registration.lighting != "none"
    bar = tqdm(total=n, unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    for start in range(0, n, batch):
        chunk = list(range(start, min(start + batch, n)))
        prepared = []
        for i in chunk:
            s = ds.samples[i]
            try:
                p = pipe.load(s.path, keep_image=False)
            except ImageError as e:
                raise DataError(str(e)) from e
            masks[i] = model_mask(s, p, h, w)
            statuses[p.registration.status] += 1
            if p.ok:
                prepared.append((i, p))
            else:
                failures.append({"file": s.rel, "status": p.registration.status, "reason": registration_error(p)})
        outs = scorer.infer([p for _, p in prepared])
        for (i, p), out in zip(prepared, outs):
            s = ds.samples[i]
            try:
                scores[i] = scorer.judge(p, out).score
            except OutputError as e:
                raise OutputError(f"{s.path}: {e}") from e
            maps[i] = warp_back(out["anomaly_map"], p.registration, h, w)
            if not s.defective:
                normal_maps.append(np.asarray(out["anomaly_map"], np.float32).ravel())
                if lighting:
                    gains.append(float(p.registration.gain))
        bar.update(len(chunk))
    bar.close()
    p99 = float(np.percentile(np.concatenate(normal_maps), 99)) if normal_maps else None
    data = Scores.build([s.rel for s in ds.samples], [s.defective for s in ds.samples], list(scores), maps, masks,
                        ds.masked)
    return Collected(data, ds.samples, failures, dict(statuses), gains, p99, (h, w))


def shift_warnings(c: Collected, model_scale: float | None) -> tuple[list[str], dict[str, Any]]:
    """Reasons to believe the held-out normals differ from the training images, and the numbers
    behind them: many registration failures among good parts (training parts register), a
    lighting gain far from 1 (the background is brighter or darker than training's), or anomaly
    maps whose 99th percentile is far from the one measured on the training images
    (model.anomaly_scale in the sidecar)."""
    good = int((~c.scores.labels).sum())
    failed_good = int((~c.scores.labels & ~c.scores.scored).sum())
    stats: dict[str, Any] = {"good": good, "good_failed_registration": failed_good,
                             "lighting_gain_median": float(np.median(c.gains)) if c.gains else None,
                             "normal_map_p99": c.normal_p99, "training_map_p99": model_scale}
    reasons = []
    if good and failed_good / good > 0.1:
        reasons.append(f"{failed_good} of {good} good parts fail registration (pose or framing differs from training)")
    gain = stats["lighting_gain_median"]
    if gain is not None and abs(gain - 1.0) > 0.1:
        reasons.append(f"their background needs a lighting gain of {gain:.2f} to match training's "
                       f"({'darker' if gain > 1 else 'brighter'} lighting)")
    if model_scale and c.normal_p99 is not None:
        ratio = c.normal_p99 / model_scale
        stats["map_p99_ratio"] = ratio
        if not 0.5 <= ratio <= 2.0:
            reasons.append(f"their anomaly maps' 99th percentile is {ratio:.2f} x the training images' "
                           f"({c.normal_p99:.4g} vs {model_scale:.4g})")
    return reasons, stats

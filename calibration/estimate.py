"""How the chosen thresholds will behave on parts they were not chosen on.

k-fold: the images are dealt into k folds stratified by label (seeded); for each fold the
thresholds are chosen on the other k - 1 folds only (`choose` is handed those images, never the
held-out ones) and measured on the held-out fold. The spread over folds is the honest estimate
of the line's FPR, recall, precision and pixel IoU, including the optimism of choosing a threshold
on the very images it is judged on. With fewer images of a class than folds, k is reduced to
that count (said in `note`); under 2, there is no estimate.

Bootstrap: the images (not pixels: pixels of one image are not independent) are resampled with
replacement within each class, the thresholds kept fixed, and the percentile interval of the
in-sample rates is reported. It says how much the in-sample numbers move with the draw of
parts, not how optimistic they are (that is k-fold's job).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, TypeVar

import numpy as np

from calibration.roc import rates
from calibration.scores import Scores

T = TypeVar("T")
METRICS = ("image_fpr", "recall", "precision", "pixel_iou", "pixel_fpr")


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Held-out index arrays of k folds, each class dealt round-robin after a seeded shuffle (the
    next class continues where the previous stopped, so fold sizes differ by at most one)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=int)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.nonzero(labels == c)[0])
        fold[idx] = (start + np.arange(idx.size)) % k
        start += idx.size
    return [np.nonzero(fold == f)[0] for f in range(k)]


def folds_for(labels: np.ndarray, k: int) -> tuple[int, str | None]:
    """The k to use (at most the smallest class's count) and a note when it had to be reduced."""
    labels = np.asarray(labels, bool)
    sizes = {name: int(n) for name, n in (("good", (~labels).sum()), ("defective", labels.sum())) if n}
    smallest = min(sizes.values()) if sizes else 0
    if smallest >= k:
        return k, None
    which = min(sizes, key=sizes.get) if sizes else "any"  # type: ignore[arg-type]
    if smallest < 2:
        return 0, f"{smallest} {which} image(s): too few for a held-out estimate (k-fold needs 2 per class)"
    return smallest, f"only {smallest} {which} images: k reduced from {k} to {smallest}"


def summary(values: list[float]) -> dict[str, Any]:
    """mean and std (sample, ddof 1) over folds, ignoring folds where a metric is undefined."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    return {"mean": float(ok.mean()) if ok.size else None,
            "std": float(ok.std(ddof=1)) if ok.size > 1 else (0.0 if ok.size else None),
            "values": [float(x) if np.isfinite(x) else None for x in v]}


def kfold(data: Scores, k: int, seed: int, choose: Callable[[Scores], T],
          measure: Callable[[Scores, T], dict[str, Any]]) -> dict[str, Any]:
    """Stratified k-fold estimate: per fold, measure(held_out, choose(the other folds)).

    Returns {k, requested, seed, note, folds: [{held_out, chosen_on, thresholds}], per metric of
    METRICS {mean, std, values}, pooled: the METRICS of the held-out counts summed over the folds
    (every image judged once, by thresholds it did not help choose: steadier than the mean of
    small folds)}; k 0 with only the note when the data is too small. `measure` returns the
    METRICS and, optionally, `image_counts` / `pixel_counts` (for `pooled`) and the `thresholds`
    it was given (kept per fold).
    """
    used, note = folds_for(data.labels, k)
    out: dict[str, Any] = {"k": used, "requested": k, "seed": seed, "note": note}
    if used < 2:
        return out
    per: dict[str, list[float]] = {m: [] for m in METRICS}
    pooled: dict[str, Counter[str]] = {"image_counts": Counter(), "pixel_counts": Counter()}
    sizes = []
    for held in stratified_folds(data.labels, used, seed):
        rest = np.setdiff1d(np.arange(len(data)), held)
        chosen = choose(data.take(rest))
        got = measure(data.take(held), chosen)
        for m in METRICS:
            per[m].append(float(got[m]))
        for key, total in pooled.items():
            total.update(got.get(key) or {})
        sizes.append({"held_out": int(held.size), "chosen_on": int(rest.size),
                      **({"thresholds": got["thresholds"]} if "thresholds" in got else {})})
    out["folds"] = sizes
    out.update({m: summary(v) for m, v in per.items()})
    if pooled["image_counts"]:
        img, pix = rates(_counts(pooled["image_counts"])), rates(_counts(pooled["pixel_counts"]))
        labelled = bool(data.labels.any())
        out["pooled"] = {"image_fpr": img["fpr"], "recall": img["recall"] if labelled else None,
                         "precision": img["precision"] if labelled else None, "pixel_iou": pix["iou"],
                         "pixel_fpr": pix["fpr"]}
    return out


def _counts(c: Counter[str]) -> dict[str, int]:
    return {k: int(c.get(k, 0)) for k in ("tp", "fp", "fn", "tn")}


def _interval(values: np.ndarray, level: float) -> dict[str, float | None]:
    ok = values[np.isfinite(values)]
    if not ok.size:
        return {"low": None, "high": None}
    lo, hi = np.percentile(ok, [50 * (1 - level), 50 * (1 + level)])
    return {"low": float(lo), "high": float(hi)}


def bootstrap(data: Scores, pixel: float, image: float, resamples: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, Any]:
    """Percentile intervals of image_fpr, recall, precision and pixel_iou at fixed thresholds over
    `resamples` stratified resamples of the images (seeded)."""
    labels = data.labels
    ng = data.scores >= image                          # +inf (failed registration): rejected
    ok = data.pixel_images
    hot = data.maps >= pixel
    tp = np.where(ok, (hot & data.masks).sum((1, 2)), 0)
    fp = np.where(ok, (hot & ~data.masks).sum((1, 2)), 0)
    fn = np.where(ok, (~hot & data.masks).sum((1, 2)), 0)
    rng = np.random.default_rng(seed)
    good, bad = np.nonzero(~labels)[0], np.nonzero(labels)[0]
    sums = {key: np.zeros(resamples) for key in ("fp_img", "tp_img", "tp", "fp", "fn")}
    chunk = max(1, 200_000 // max(len(labels), 1))  # bounds the index matrix of a large set
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        g = good[rng.integers(0, good.size, (b, good.size))] if good.size else np.zeros((b, 0), int)
        d = bad[rng.integers(0, bad.size, (b, bad.size))] if bad.size else np.zeros((b, 0), int)
        both = np.concatenate([g, d], axis=1)
        sl = slice(start, start + b)
        sums["fp_img"][sl] = ng[g].sum(1)
        sums["tp_img"][sl] = ng[d].sum(1)
        for key, per_image in (("tp", tp), ("fp", fp), ("fn", fn)):
            sums[key][sl] = per_image[both].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = {
            "image_fpr": sums["fp_img"] / good.size if good.size else np.full(resamples, np.nan),
            "recall": sums["tp_img"] / bad.size if bad.size else np.full(resamples, np.nan),
            "precision": (sums["tp_img"] / (sums["tp_img"] + sums["fp_img"])) if bad.size
            else np.full(resamples, np.nan),
            "pixel_iou": sums["tp"] / (sums["tp"] + sums["fp"] + sums["fn"]) if data.masks.any()
            else np.full(resamples, np.nan),
        }
    return {"resamples": resamples, "seed": seed, "level": level, "stratified": True,
            **{k: _interval(v, level) for k, v in values.items()}}

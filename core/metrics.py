"""Localization and detection metrics, one place for evaluation, calibration and benchmarks.

pixel ROC AUC and best IoU over the ROC thresholds (paper 3.3.1); AUPRO up to 30% FPR as MVTec AD
defines it (Bergmann et al. 2021: mean overlap over ground-truth connected components, integrated
over the false-positive rate of normal pixels, divided by the limit); image ROC AUC.
"""
from __future__ import annotations

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


NORMAL_QUANTILE = 0.99


def normal_scale(maps: np.ndarray, floor: float = 1e-8) -> float:
    """A map's scale on normal images [N, ...]: the median over images of each one's
    NORMAL_QUANTILE, at least `floor` (where overlays put their colours before calibration, and
    what one map is divided by to weigh it against another)."""
    q = np.quantile(np.asarray(maps).reshape(len(maps), -1), NORMAL_QUANTILE, axis=1)
    return max(float(np.median(q)), floor)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels).ravel().astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).ravel()))


def auroc_standard_error(auroc: float, positives: int, negatives: int) -> float:
    """The standard error of an image AUROC measured on `positives` defective and `negatives`
    good parts (Hanley & McNeil 1982): how far apart two settings' AUROCs on the same few parts
    must be before their order says more than which parts happened to be in the set. 0 when
    either count is 0 (nothing known)."""
    if positives < 1 or negatives < 1 or not np.isfinite(auroc):
        return 0.0
    a = float(auroc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (positives * negatives)
    return float(np.sqrt(max(var, 0.0)))


def best_iou(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best pooled IoU = TP / (TP + FP + FN) over all ROC thresholds; returns (iou, threshold)."""
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0:
        return float("nan"), float("nan")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    tp, fp = tpr * pos, fpr * neg
    iou = tp / (fp + pos)  # TP + FP + FN = FP + P
    i = int(np.argmax(iou))
    return float(iou[i]), float(thr[i])


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, steps: int = 300) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, normalized to [0, 1].

    masks, maps: [N, H, W]. Thresholds are quantiles of the normal pixels' scores, so the FPR axis
    is sampled evenly; per-region overlaps come from each region's sorted scores (searchsorted).
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    normal = np.sort(maps[~masks])
    if normal.size == 0 or not masks.any():
        return float("nan")
    regions = []
    for m, a in zip(masks, maps):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        for r in range(1, n):
            regions.append(np.sort(a[lab == r]))
    fprs = np.linspace(0.0, fpr_limit, steps)
    # threshold giving FPR f: the (1 - f) quantile of the normal scores; predicted positive is > t.
    # Ties among normal scores make the real FPR jump; the curve is then interpolated linearly
    # between the points actually reached, closed by (0, pro at the top) and (1, 1).
    q = np.quantile(normal, 1.0 - fprs)
    # When tied normal scores straddle the limit, the curve's next point lies beyond it: the tie
    # itself counted as positive (threshold just below it), needed to interpolate at the limit
    # (MVTec's reference computes the whole curve; this is the one point past the limit it uses).
    # Just below the tie, not at the next lower normal score: region pixels between the two are
    # reached later on the true curve.
    past = [np.nextafter(q[-1], -np.inf)] if normal[0] < q[-1] else []
    thr = np.concatenate([[max(normal[-1], max(r[-1] for r in regions))], q, past])
    actual_fpr = 1.0 - np.searchsorted(normal, thr, side="right") / normal.size
    pro = np.zeros_like(thr)
    for reg in regions:
        pro += 1.0 - np.searchsorted(reg, thr, side="right") / reg.size
    pro /= len(regions)
    x = np.concatenate([actual_fpr, [1.0]])
    y = np.concatenate([pro, [1.0]])
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    keep = x <= fpr_limit
    xs = np.concatenate([x[keep], [fpr_limit]])
    ys = np.concatenate([y[keep], [np.interp(fpr_limit, x, y)]])
    return float(np.trapezoid(ys, xs) / fpr_limit)


def localization_metrics(masks: np.ndarray, maps: np.ndarray, image_labels: np.ndarray,
                         image_scores: np.ndarray | None = None) -> dict[str, float]:
    """All metrics for one map kind. image score defaults to the max of the map."""
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float32)
    iou, thr = best_iou(masks, maps)
    if image_scores is None:
        image_scores = maps.reshape(len(maps), -1).max(1)
    return {
        "pixel_auroc": roc_auc(masks, maps),
        "best_iou": iou,
        "best_iou_threshold": thr,
        "aupro": aupro(masks, maps),
        "image_auroc": roc_auc(image_labels, image_scores),
    }

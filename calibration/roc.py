"""Confusion counts at every threshold of a score: what calibration's rules choose from and plots.

NG (positive) means score >= threshold, exactly as runtime.postprocess decides. A `Curve` lists the
distinct finite scores in descending order v[0] > v[1] > ... and, for every cut j = 0..m, the
counts when the j highest values are NG (j = 0: nothing scored is NG; j = m: everything is).
Every threshold in (v[j], v[j-1]] gives the same decisions on the data, so `Curve.threshold(j)`
returns the midpoint of that interval: a one-ulp difference in a score between backends or batch
sizes cannot flip a verdict on the calibration images themselves.

A score of +inf is an image that is always rejected (a failed registration: the line sends such a
part to manual check): it counts as NG at every cut and is never a threshold itself.

The summary metrics (ROC AUC, best IoU) are core.metrics'; this module only counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    """Counts at every cut; see the module docstring. tp/fp have m + 1 entries."""
    values: np.ndarray   # float64 [m], distinct finite scores, descending
    tp: np.ndarray       # int64 [m + 1]: positives that are NG at cut j
    fp: np.ndarray       # int64 [m + 1]: negatives that are NG at cut j
    pos: int
    neg: int

    @classmethod
    def of(cls, labels: np.ndarray, scores: np.ndarray) -> "Curve":
        """From per-item labels (True: defective / defect pixel) and scores (+inf: always NG).
        Raises ValueError for NaN scores (NaN compares False: such a part would always pass)."""
        y = np.asarray(labels).ravel().astype(bool)
        s = np.asarray(scores, dtype=np.float64).ravel()
        if y.shape != s.shape:
            raise ValueError(f"labels {y.shape} and scores {s.shape} differ in size")
        if np.isnan(s).any():
            raise ValueError("scores hold NaN")
        always = np.isposinf(s)
        fin = ~always
        order = np.argsort(-s[fin], kind="stable")
        ss, yy = s[fin][order], y[fin][order]
        if ss.size:
            last = np.r_[np.nonzero(np.diff(ss))[0], ss.size - 1]  # last item of each run of equal values
            tp = np.r_[0, np.cumsum(yy)[last]]
            fp = np.r_[0, np.cumsum(~yy)[last]]
            values = ss[last]
        else:
            tp = fp = np.zeros(1, np.int64)
            values = np.zeros(0)
        tp = tp.astype(np.int64) + int((always & y).sum())
        fp = fp.astype(np.int64) + int((always & ~y).sum())
        return cls(values, tp, fp, int(y.sum()), int((~y).sum()))

    @property
    def cuts(self) -> int:
        """m: the last cut index (everything scored is NG)."""
        return int(self.values.size)

    def threshold(self, j: int) -> float:
        """The threshold of cut j: the midpoint between the lowest NG value and the highest OK
        value; above the maximum (j = 0) or below the minimum (j = m) by 1% of the score range."""
        v, m = self.values, self.values.size
        if m == 0:
            raise ValueError("no finite scores to place a threshold between")
        if not 0 <= j <= m:
            raise ValueError(f"cut {j} outside 0..{m}")
        if 0 < j < m:
            return float((v[j - 1] + v[j]) / 2.0)
        pad = max(float(v[0] - v[-1]) * 0.01, abs(float(v[0])) * 1e-6, 1e-12)
        return float(v[0] + pad) if j == 0 else float(v[-1] - pad)

    def cut_at(self, threshold: float) -> int:
        """The cut a threshold makes: how many distinct values are >= it."""
        return int(np.searchsorted(-self.values, -threshold, side="right"))

    # rates per cut (nan where undefined)
    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.neg if self.neg else np.full(self.fp.shape, np.nan)

    @property
    def tpr(self) -> np.ndarray:
        return self.tp / self.pos if self.pos else np.full(self.tp.shape, np.nan)

    @property
    def precision(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.tp + self.fp > 0, self.tp / np.maximum(self.tp + self.fp, 1), np.nan)

    @property
    def iou(self) -> np.ndarray:
        """TP / (TP + FP + FN) = TP / (FP + P), as core.metrics.best_iou pools it."""
        return self.tp / (self.fp + self.pos) if self.pos else np.full(self.tp.shape, np.nan)

    @property
    def f1(self) -> np.ndarray:
        """2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)."""
        return 2 * self.tp / (self.tp + self.fp + self.pos) if self.pos else np.full(self.tp.shape, np.nan)

    def sample(self, points: int = 2000) -> np.ndarray:
        """At most `points` cut indices spread over the curve (plots of a million pixels)."""
        return np.unique(np.linspace(0, self.cuts, min(points, self.cuts + 1)).round().astype(int))


def counts(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """tp, fp, fn, tn of `scores >= threshold` (+inf: always NG)."""
    y = np.asarray(labels).ravel().astype(bool)
    ng = np.asarray(scores, dtype=np.float64).ravel() >= threshold
    return {"tp": int((ng & y).sum()), "fp": int((ng & ~y).sum()), "fn": int((~ng & y).sum()),
            "tn": int((~ng & ~y).sum())}


def rates(c: dict[str, int]) -> dict[str, float]:
    """fpr, recall, precision, iou, f1 of counts (nan where a denominator is zero)."""
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]

    def div(a: float, b: float) -> float:
        return float(a / b) if b else float("nan")
    return {"fpr": div(fp, fp + tn), "recall": div(tp, tp + fn), "precision": div(tp, tp + fp),
            "iou": div(tp, tp + fp + fn) if tp + fn else float("nan"), "f1": div(2 * tp, 2 * tp + fp + fn)}

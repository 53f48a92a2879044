"""Threshold rules: how a pixel and an image threshold are chosen, and what they give.

Rules (the command line's --pixel-rule / --image-rule):

    pixel  best-iou    the threshold of the best pooled IoU over all pixels (the paper's choice;
                       core.metrics.best_iou), the default
           fpr=X       the lowest threshold whose pixel false-positive rate is <= X (0 < X < 1)
           f1          the best pooled pixel F1
    image  fpr=X       the lowest threshold whose image false-positive rate is <= X (default 0.05)
           youden      the best recall - FPR (Youden's J)
           f1          the best image F1
           recall=X    the highest threshold whose recall of defective images is >= X

    parse_rule("fpr=0.05", "image")          # Rule('image', 'fpr', 0.05)
    chosen = choose(scores, parse_rule("best-iou", "pixel"), parse_rule("fpr=0.05", "image"))
    measure(held_out, chosen.pixel.threshold, chosen.image.threshold)   # {"image_fpr": ..., ...}

NG means score >= threshold (runtime.postprocess). A threshold is placed midway between two
scores (calibration.roc), so it makes the same decisions as the rule's score itself. A failed
registration (score +inf) is rejected at any threshold: it counts as NG for a good part (a false
positive) and for a defective one.

Normal-only data (no defective images, the common factory case): the image threshold is a
conformal bound. With n normal scores and alpha = X of fpr=X, k = ceil((n + 1)(1 - alpha)); a part
passes when its score is <= the k-th smallest normal score, so a new normal part exchangeable with
them is rejected with probability (n + 1 - k) / (n + 1) <= alpha (marginally, over calibration
sets). Fewer than 1/alpha - 1 normals cannot reach alpha: the threshold is then put above every
normal score and the bound, 1/(n + 1), is reported as not meeting the target. The pixel
threshold: fpr=X is the per-pixel upper quantile of the normal pixels; best-iou and f1 need
defect masks, so the pixel threshold is the image threshold itself (a good part that passes shows
no outline; every NG part outlines its hottest region).

Image labels only (good and defective images, no defect masks, the common factory case too): the
image threshold comes from the labelled ROC as with masks; the pixel threshold rests on the good
images alone. fpr=X is the per-pixel upper quantile of their pixels; best-iou and f1 need masks,
so the pixel threshold is the conformal bound of the good images' maxima at the image rule's FPR
(fpr=X, else 0.05), rule `normal-max fpr=X`: a good part shows an outline with probability at
most that bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calibration.roc import Curve, counts, rates
from calibration.scores import Scores
from core.metrics import best_iou

PIXEL_FORMS = ("best-iou", "fpr=X", "f1")
IMAGE_FORMS = ("fpr=X", "youden", "f1", "recall=X")
_VALUED = ("fpr", "recall")
SAME_AS_IMAGE = "same-as-image"
NORMAL_MAX = "normal-max"


@dataclass(frozen=True)
class Rule:
    """A parsed rule: `level` pixel or image, `name` (best-iou, fpr, f1, youden, recall), `value`
    X for fpr=X / recall=X. str() gives the canonical text ('fpr=0.05')."""
    level: str
    name: str
    value: float | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}={self.value!r}"


def parse_rule(text: str, level: str) -> Rule:
    """'best-iou', 'fpr=0.05', ... -> Rule.

    Args:
        text: the rule as typed (case and spaces around '=' ignored).
        level: 'pixel' or 'image'.
    Returns the Rule. Raises ValueError naming the accepted forms for anything else (X must lie
    strictly between 0 and 1).

        parse_rule("recall=0.9", "image")   # Rule('image', 'recall', 0.9)
        parse_rule("youden", "pixel")       # ValueError: ... use one of best-iou, fpr=X, f1
    """
    forms = {"pixel": PIXEL_FORMS, "image": IMAGE_FORMS}.get(level)
    if forms is None:
        raise ValueError(f"rule level {level!r}: 'pixel' or 'image'")
    accepted = f"--{level}-rule {text!r}: use one of {', '.join(forms)} (X between 0 and 1, exclusive)"
    name, eq, value = (part.strip() for part in str(text).strip().lower().partition("="))
    if f"{name}=X" in forms and eq:
        try:
            x = float(value)
        except ValueError:
            raise ValueError(accepted) from None
        if not (math.isfinite(x) and 0.0 < x < 1.0):
            raise ValueError(accepted)
        return Rule(level, name, x)
    if name in forms and not eq:
        return Rule(level, name)
    raise ValueError(accepted)


@dataclass(frozen=True)
class Choice:
    """A chosen threshold: the rule as applied ('fpr=0.05', 'same-as-image'), how ('curve',
    'core.metrics.best_iou', 'conformal'), a note when the rule could not be met as asked, and
    what the rule measured (e.g. the in-sample IoU, or the conformal k, n and bound). `met` False:
    no threshold reaches the rule's target on this data (the threshold is only the nearest one)."""
    threshold: float
    rule: str
    method: str
    note: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    met: bool = True


@dataclass(frozen=True)
class Chosen:
    pixel: Choice
    image: Choice
    mode: str            # "labelled", "image-labels" (no defect masks) or "normal-only"


def _largest(ok: np.ndarray) -> int | None:
    hits = np.nonzero(ok)[0]
    return int(hits[-1]) if hits.size else None


def _smallest(ok: np.ndarray) -> int | None:
    hits = np.nonzero(ok)[0]
    return int(hits[0]) if hits.size else None


def _at_rate(curve: Curve, rule: Rule, what: str) -> tuple[int, str | None]:
    """The cut of fpr=X (lowest threshold with FPR <= X) or recall=X (highest with recall >= X)."""
    x = float(rule.value)  # type: ignore[arg-type]
    eps = 1e-12  # counts / n compared with a decimal X: 0.05 of 20 must be 1, not 1.0000000000000002
    if rule.name == "fpr":
        j = _largest(curve.fpr <= x + eps)
        if j is None:  # failed registrations alone are more false positives than X allows
            return 0, (f"no {what} threshold reaches FPR <= {x:g}: the rejected (unregistered) normal images alone "
                       f"give FPR {curve.fpr[0]:.3g}")
        return j, None
    j = _smallest(curve.tpr >= x - eps)
    return (curve.cuts, None) if j is None else (j, None)


def choose_image(rule: Rule, labels: np.ndarray, scores: np.ndarray) -> Choice:
    """The image threshold of `rule` on labelled scores (+inf: always rejected)."""
    curve = Curve.of(labels, scores)
    note = None
    if rule.name in _VALUED:
        j, note = _at_rate(curve, rule, "image")
    elif rule.name == "youden":
        j = int(np.argmax(curve.tpr - curve.fpr))   # first maximum: the highest such threshold
    elif rule.name == "f1":
        j = int(np.argmax(curve.f1))
    else:
        raise ValueError(f"image rule {rule} is not one of {', '.join(IMAGE_FORMS)}")
    return Choice(curve.threshold(j), str(rule), "curve", note,
                  {"fpr": float(curve.fpr[j]), "recall": float(curve.tpr[j])}, met=note is None)


def choose_pixel(rule: Rule, labels: np.ndarray, scores: np.ndarray) -> Choice:
    """The pixel threshold of `rule` on pooled pixels (labels: defect pixels; scores: map values)."""
    curve = Curve.of(labels, scores)
    note = None
    if rule.name == "best-iou":
        iou, thr = best_iou(labels, scores)  # the one implementation of the paper's metric
        if not math.isfinite(iou):
            raise ValueError("best-iou needs defect pixels; the masks hold none")
        j = curve.cut_at(thr)
        return Choice(curve.threshold(j), str(rule), "core.metrics.best_iou", None,
                      {"iou": iou, "fpr": float(curve.fpr[j])})
    if rule.name == "fpr":
        j, note = _at_rate(curve, rule, "pixel")
    elif rule.name == "f1":
        j = int(np.argmax(curve.f1))
    else:
        raise ValueError(f"pixel rule {rule} is not one of {', '.join(PIXEL_FORMS)}")
    return Choice(curve.threshold(j), str(rule), "curve", note,
                  {"iou": float(curve.iou[j]), "fpr": float(curve.fpr[j])}, met=note is None)


def conformal(scores: np.ndarray, alpha: float) -> Choice:
    """The image threshold at target FPR `alpha` from normal scores only (see the module
    docstring); +inf scores (rejected parts) are the highest. info: n, k, flagged (normals of
    the calibration set that are NG), bound = (n + 1 - k) / (n + 1), the guaranteed FPR."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    n = int(s.size)
    if n == 0:
        raise ValueError("no normal scores")
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    curve = Curve.of(np.zeros(n, bool), s)
    note = None
    if k > n:
        j = 0
        bound = 1.0 / (n + 1)
        note = (f"{n} normal images cannot guarantee FPR <= {alpha:g} (that needs at least "
                f"{math.ceil(1 / alpha) - 1}); threshold above every normal score, guaranteed FPR <= {bound:.3g}")
    else:
        kth = np.sort(s)[k - 1]
        j = 0 if np.isposinf(kth) else int(np.sum(curve.values > kth))   # pass when score <= the k-th
        bound = (n + 1 - k) / (n + 1)
    return Choice(curve.threshold(j), f"fpr={alpha!r}", "conformal", note,
                  {"n": n, "k": k, "flagged": int(curve.fp[j]), "bound": bound, "target": alpha,
                   "fpr": float(curve.fpr[j])})


def choose(data: Scores, pixel_rule: Rule, image_rule: Rule) -> Chosen:
    """Both thresholds on `data`: labelled rules when both classes are present (the pixel one on
    the good images alone without defect masks), otherwise the normal-only mode (module
    docstring). Raises ValueError when there are no normal images, or no scored image to place a
    threshold on."""
    if not (~data.labels).any():
        raise ValueError("no good images: an image threshold needs normal parts")
    pix_labels, pix_scores = data.pixels()
    if pix_scores.size == 0:
        raise ValueError("every image failed registration: nothing was scored")
    alpha = float(image_rule.value) if image_rule.name == "fpr" else 0.05  # type: ignore[arg-type]
    if data.labelled:
        image = choose_image(image_rule, data.labels, data.scores)
        if data.masked:
            pixel = choose_pixel(pixel_rule, pix_labels, pix_scores) if pix_labels.any() else \
                Choice(image.threshold, SAME_AS_IMAGE, "fallback", "the defect masks hold no pixels: pixel threshold "
                       "= image threshold")
            return Chosen(pixel, image, "labelled")
        if pixel_rule.name == "fpr":  # pixels() holds the good images' alone
            return Chosen(choose_pixel(pixel_rule, pix_labels, pix_scores), image, "image-labels")
        bound = conformal(data.scores[~data.labels], alpha)
        pixel = Choice(bound.threshold, f"{NORMAL_MAX} fpr={alpha!r}", "conformal",
                       f"pixel rule {pixel_rule} needs defect masks: pixel threshold = the conformal bound of the good "
                       f"images' maxima (a good part shows an outline with probability <= {bound.info['bound']:.3g})",
                       bound.info)
        return Chosen(pixel, image, "image-labels")
    image = conformal(data.scores, alpha)
    if image_rule.name != "fpr":
        image = Choice(image.threshold, image.rule, image.method,
                       f"image rule {image_rule} needs defective images; used fpr=0.05 (conformal)", image.info)
    if pixel_rule.name == "fpr":
        pixel = choose_pixel(pixel_rule, pix_labels, pix_scores)
    else:
        pixel = Choice(image.threshold, SAME_AS_IMAGE, "normal-only",
                       f"pixel rule {pixel_rule} needs defect masks: pixel threshold = image threshold (the same "
                       "upper quantile of the normal images' maxima), so a passing part shows no outline")
    return Chosen(pixel, image, "normal-only")


def measure(data: Scores, pixel: float, image: float) -> dict[str, Any]:
    """What the thresholds give on `data`: image_fpr, recall, precision (over all images; a failed
    registration is rejected), pixel_iou and pixel_fpr (pooled over the scored images' pixels),
    and the counts behind them. Recall and precision are nan without defective images."""
    img = counts(data.labels, data.scores, image)
    r = rates(img)
    defect, values = data.pixels()
    pix = counts(defect, values, pixel)
    p = rates(pix)
    labelled = data.labels.any()
    return {"image_fpr": r["fpr"], "recall": r["recall"] if labelled else float("nan"),
            "precision": r["precision"] if labelled else float("nan"), "pixel_iou": p["iou"],
            "pixel_fpr": p["fpr"], "image_counts": img, "pixel_counts": pix}

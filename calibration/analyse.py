"""From what the model measured on the calibration images to thresholds and their estimates.

Pure numbers (no model, no files): `analyse(collected, pixel_rule, image_rule, folds, seed,
resamples)` returns the body of calibration.json and the chosen thresholds. calibrate.py runs the
model and writes the files around it.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from calibration.collect import MASK_RESIZE, Collected
from calibration.estimate import bootstrap, kfold
from calibration.scores import Scores
from calibration.thresholds import Chosen, Choice, Rule, choose, measure
from core.metrics import aupro, best_iou, roc_auc

REJECTED = ("an image whose registration fails has no score; the line sends such a part to manual check, so it "
            "counts as rejected (NG) at every threshold: a false positive when good, detected when defective; "
            "it adds no pixels to the pixel statistics")


class CalibrationError(ValueError):
    """Data that no threshold can be chosen on (no good parts, constant scores...)."""


def line_ranking(scores: np.ndarray) -> np.ndarray:
    """Image scores with each failed registration (+inf) just above the highest score: the line
    rejects such a part, so a registration that refuses a turned or missing part has caught it."""
    finite = np.isfinite(scores)
    top = float(scores[finite].max()) if finite.any() else 0.0
    return np.where(finite, scores, top + 1.0)


def check_scores(data: Scores) -> None:
    """CalibrationError for data a threshold cannot mean anything on: no good images, nothing
    scored, or constant image scores or maps (a dead or untrained model)."""
    if not (~data.labels).any():
        raise CalibrationError("no good images: the image threshold is chosen on good parts (add <data>/good/)")
    finite = data.scores[data.scored]
    if finite.size == 0:
        raise CalibrationError("every image failed registration: nothing was scored")
    if finite.size > 1 and np.ptp(finite) == 0:
        raise CalibrationError(f"all {finite.size} image scores equal {finite[0]:.6g}: the model separates "
                               "nothing (untrained or broken?)")
    _, values = data.pixels()
    if np.ptp(values) == 0:
        raise CalibrationError(f"every anomaly map pixel equals {values[0]:.6g}: the model separates nothing")


def confusion(data: Scores, image: float) -> dict[str, dict[str, int]]:
    """Per class: inspected OK, inspected NG, failed (registration) at the image threshold:
    what runtime.inspect's verdicts on the same images count."""
    out = {}
    for name, cls in (("good", ~data.labels), ("defective", data.labels)):
        scored = cls & data.scored
        out[name] = {"ok": int((scored & (data.scores < image)).sum()),
                     "ng": int((scored & (data.scores >= image)).sum()), "failed": int((cls & ~data.scored).sum())}
    return out


def refusals(data: Scores, chosen: Chosen) -> list[str]:
    """Why the thresholds must not be written as chosen: a rule no threshold reaches on this data
    (the nearest threshold was taken), or an image threshold that passes every defective part the
    model scored (recall 0: the line would call every defect OK). Two black frames among the good
    parts made FPR <= 5 % unreachable, and the threshold above every score was written, exit 0."""
    reasons = [c.note or f"{level} rule {c.rule}: not reached on this data"
               for level, c in (("image", chosen.image), ("pixel", chosen.pixel)) if not c.met]
    bad = data.labels & data.scored
    if bad.any() and not (data.scores[bad] >= chosen.image.threshold).any():
        reasons.append(f"the image threshold {chosen.image.threshold:.6g} passes every defective part the model "
                       f"scored (0 of {int(bad.sum())} NG: recall 0 %)")
    return reasons


def basis(chosen: Chosen, data: Scores) -> dict[str, str]:
    """Which threshold rests on what: the image labels (a ROC of good against defective images), the
    defect masks, or the good images alone (a quantile of normal parts)."""
    good, bad = int((~data.labels).sum()), int(data.labels.sum())
    normals = f"normals: the {good} good images alone ({{}})"
    image = (f"labels: the ROC of {good} good against {bad} defective images ({chosen.image.rule})"
             if chosen.mode != "normal-only" else normals.format(f"conformal, {chosen.image.rule}"))
    pixel = (f"masks: the defect pixels of {bad} defective images against every other pixel ({chosen.pixel.rule})"
             if chosen.mode == "labelled" else normals.format(chosen.pixel.rule))
    return {"image": image, "pixel": pixel}


def choice_json(c: Choice) -> dict[str, Any]:
    return {"threshold": c.threshold, "rule": c.rule, "method": c.method, "note": c.note, "met": c.met, **c.info}


def _choose(pixel_rule: Rule, image_rule: Rule) -> Callable[[Scores], Chosen]:
    def on_fold(d: Scores) -> Chosen:
        try:
            return choose(d, pixel_rule, image_rule)
        except ValueError as e:  # the whole set had a scored part, the other folds of one fold none
            raise CalibrationError(f"k-fold: a fold's thresholds cannot be chosen on the other folds ({e}): too "
                                   "few parts registered for a held-out estimate; fix the framing or lighting "
                                   "(see the registration failures) or add parts") from e
    return on_fold


def _measure(d: Scores, c: Chosen) -> dict[str, Any]:
    got = measure(d, c.pixel.threshold, c.image.threshold)
    got["thresholds"] = {"pixel": c.pixel.threshold, "image": c.image.threshold}
    return got


def images_json(c: Collected, image: float) -> list[dict[str, Any]]:
    """One row per image: file, kind, score (null when registration failed), verdict, reason."""
    failed = {f["file"]: f["reason"] for f in c.failures}
    rows = []
    for s, score in zip(c.samples, c.scores.scores):
        ok = np.isfinite(score)
        rows.append({"file": s.rel, "kind": s.kind, "defective": s.defective,
                     "score": float(score) if ok else None,
                     "verdict": ("NG" if score >= image else "OK") if ok else None,
                     "reason": failed.get(s.rel)})
    return rows


def analyse(c: Collected, pixel_rule: Rule, image_rule: Rule, folds: int = 5, seed: int = 0,
            resamples: int = 1000) -> tuple[Chosen, dict[str, Any]]:
    """Thresholds by the rules on all images, the in-sample numbers, the k-fold and bootstrap
    estimates, ROC AUC and best IoU (core.metrics). Raises CalibrationError (check_scores)."""
    data = c.scores
    check_scores(data)
    chosen = choose(data, pixel_rule, image_rule)
    pixel, image = chosen.pixel.threshold, chosen.image.threshold
    inside = measure(data, pixel, image)
    defect, values = data.pixels()
    scored = data.scored
    labelled = chosen.mode != "normal-only"   # both classes of image: recall, precision, image AUROC
    masked = chosen.mode == "labelled"        # defect masks too: pixel IoU, AUPRO, pixel AUROC
    iou, iou_thr = best_iou(defect, values) if defect.any() else (float("nan"), float("nan"))
    notes = [n for n in (chosen.pixel.note, chosen.image.note) if n]
    if not labelled:
        notes.insert(0, "no defective images: normal-only mode; recall is unknown (no defective part was seen)")
    elif not masked:
        notes.insert(0, "image labels only (no defect masks): image-labels mode; pixel IoU, AUPRO and pixel AUROC "
                        "need masks and are not measured; the pixel statistics count the good images alone")
    body: dict[str, Any] = {
        "mode": chosen.mode,
        "basis": basis(chosen, data),
        "rule": {"pixel": chosen.pixel.rule, "image": chosen.image.rule},
        "requested_rule": {"pixel": str(pixel_rule), "image": str(image_rule)},
        "thresholds": {"pixel": pixel, "image": image},
        "choice": {"pixel": choice_json(chosen.pixel), "image": choice_json(chosen.image)},
        "in_sample": {"confusion": confusion(data, image), "image_fpr": inside["image_fpr"],
                      "recall": inside["recall"] if labelled else "unknown",
                      "precision": inside["precision"] if labelled else "unknown",
                      "pixel_iou": inside["pixel_iou"], "pixel_fpr": inside["pixel_fpr"],
                      "pixel_counts": inside["pixel_counts"]},
        "auroc": {"pixel": roc_auc(defect, values) if defect.any() else None,
                  "image": roc_auc(data.labels, line_ranking(data.scores)) if labelled else None,
                  "note": "image AUROC as the line decides: a failed registration is rejected, ranked above "
                          "every score"},
        "best_iou": {"iou": iou, "threshold": iou_thr},
        # per-region overlap up to 30 % pixel FPR (MVTec AD's AUPRO): the retraining gate compares it
        "aupro": aupro(data.masks[scored], data.maps[scored]) if masked and defect.any() else None,
        "pixel_statistics": {"frame": "the original image frame (registration undone), resampled to the model's "
                                      "resolution", "resolution": list(c.resolution), "mask_resize": MASK_RESIZE,
                             "pixels": int(values.size), "defect_pixels": int(defect.sum()),
                             "images": int(data.pixel_images.sum())},
        "folds": kfold(data, folds, seed, _choose(pixel_rule, image_rule), _measure),
        "bootstrap": bootstrap(data, pixel, image, resamples, seed),
        "registration": {"statuses": c.statuses, "failed": c.failures, "policy": REJECTED},
        "notes": notes,
        "refused": refusals(data, chosen),
    }
    if not labelled:
        body["conformal"] = {k: chosen.image.info[k] for k in ("n", "k", "flagged", "bound", "target")}
        body["conformal"]["meaning"] = (
            f"a part passes when its score is at most the k-th smallest of the n normal scores (k = "
            f"{chosen.image.info['k']}, n = {chosen.image.info['n']}); a new normal part like them is rejected "
            f"with probability <= (n + 1 - k) / (n + 1) = {chosen.image.info['bound']:.4g}")
    if not masked:
        body["pixel_rule_reason"] = chosen.pixel.note or "per-pixel upper quantile of the normal pixels"
    body["images"] = images_json(c, image)
    return chosen, body


def sidecar_section(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's `thresholds` section: the thresholds with what they mean and where they came
    from (keys rule, created, data.path are read by runtime.inspect's Thresholds.describe)."""
    folds = body["folds"]
    fold_summary = {"k": folds["k"], **({"note": folds["note"]} if folds.get("note") else {})}
    for m in ("image_fpr", "recall", "precision", "pixel_iou", "pixel_fpr"):
        if m in folds:
            fold_summary[m] = {"mean": folds[m]["mean"], "std": folds[m]["std"]}
    boot = body["bootstrap"]
    section = {"pixel": body["thresholds"]["pixel"], "image": body["thresholds"]["image"], "rule": body["rule"],
               **extra, "mode": body["mode"], "basis": body["basis"], "folds": fold_summary,
               "bootstrap": {"resamples": boot["resamples"], "level": boot["level"],
                             **{m: boot[m] for m in ("image_fpr", "recall", "precision", "pixel_iou")}},
               "auroc": {"pixel": body["auroc"]["pixel"], "image": body["auroc"]["image"]},
               "best_iou": body["best_iou"]["iou"], "aupro": body["aupro"]}
    if body["mode"] == "normal-only":
        section["recall"] = "unknown"
        section["conformal"] = {k: body["conformal"][k] for k in ("n", "k", "bound", "target")}
    return section

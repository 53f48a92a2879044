"""The calibration report folder: calibration.json beside PNG plots an engineer can read.

    roc.png              image ROC (labelled data) and pixel ROC (defect masks) with the chosen points
    scores.png           image scores of good vs defective parts and pixel values of normal vs defect
                         pixels, with the thresholds
    pixel_threshold.png  pooled IoU and F1 against the pixel threshold, the chosen one marked
    worst.png            the highest-scoring good parts and the lowest-scoring defective ones,
                         drawn by runtime.pipeline's render (runtime/overlay.py) at the calibrated
                         thresholds, ground truth outlined in green

Plots use matplotlib's Agg canvas directly (no display, no global backend switch); every file is
written atomically.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from calibration.collect import Collected
from calibration.roc import Curve
from core.files import atomic_write
from core.images import read_image
from runtime import overlay as ov
from runtime.pipeline import Pipeline
from runtime.postprocess import Thresholds

GT_COLOR = (80, 200, 60)   # BGR green: the ground-truth outline in worst.png
CELL = 256                 # long side of a worst.png tile


def _save_figure(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()), durable=False)


def _figure(cols: int) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * cols, 4.2))
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def _roc_panel(ax: Any, curve: Curve, threshold: float, title: str, auroc: float | None) -> None:
    j = curve.sample()
    ax.plot(curve.fpr[j], curve.tpr[j], lw=1.5, label=f"AUROC {auroc:.3f}" if auroc is not None else None)
    c = curve.cut_at(threshold)
    ax.plot([curve.fpr[c]], [curve.tpr[c]], "o", color="red",
            label=f"chosen {threshold:.4g}: FPR {curve.fpr[c]:.3f}, TPR {curve.tpr[c]:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="gray", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)


def plot_roc(c: Collected, body: dict[str, Any], path: Path) -> None:
    defect, values = c.scores.pixels()
    fig, panels = _figure(2 if defect.any() else 1)  # no defect pixel (image labels only): no pixel ROC
    if defect.any():
        _roc_panel(panels[0], Curve.of(defect, values), body["thresholds"]["pixel"], "pixel ROC (all pixels)",
                   body["auroc"]["pixel"])
    _roc_panel(panels[-1], Curve.of(c.scores.labels, c.scores.scores), body["thresholds"]["image"],
               "image ROC (Inspection.score; failed registrations rejected)", body["auroc"]["image"])
    _save_figure(fig, path)


def plot_scores(c: Collected, body: dict[str, Any], path: Path) -> None:
    data = c.scores
    fig, (a, b) = _figure(2)
    ok = data.scored
    finite = data.scores[ok]
    lo, hi = float(finite.min()), float(finite.max())
    bins = np.linspace(lo, hi, 31) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, 31)  # one scored image
    for name, sel, color in (("good", ~data.labels & ok, "tab:blue"), ("defective", data.labels & ok, "tab:red")):
        if sel.any():
            a.hist(data.scores[sel], bins=bins, alpha=0.6, color=color, label=f"{name} ({int(sel.sum())})")
    t = body["thresholds"]["image"]
    a.axvline(t, color="black", ls="--", label=f"image threshold {t:.4g}")
    failed = int((~ok).sum())
    a.set(xlabel="image score (max of anomaly_map)", ylabel="images",
          title="image scores" + (f" ({failed} failed registration, not shown)" if failed else ""))
    a.legend(fontsize=8)
    defect, values = data.pixels()
    pbins = np.linspace(values.min(), values.max(), 61)
    for name, sel, color in (("normal pixels", ~defect, "tab:blue"), ("defect pixels", defect, "tab:red")):
        if sel.any():
            b.hist(values[sel], bins=pbins, alpha=0.6, color=color, density=True, label=name)
    t = body["thresholds"]["pixel"]
    b.axvline(t, color="black", ls="--", label=f"pixel threshold {t:.4g}")
    b.set_yscale("log")
    res = "x".join(str(v) for v in c.resolution)
    b.set(xlabel="anomaly_map value", ylabel="density", title=f"pixels (original frame at {res})")
    b.legend(fontsize=8)
    _save_figure(fig, path)


def plot_pixel_threshold(c: Collected, body: dict[str, Any], path: Path) -> None:
    defect, values = c.scores.pixels()
    curve = Curve.of(defect, values)
    j = curve.sample()
    j = j[j >= 1]  # cut j's threshold lies just under values[j - 1]
    fig, (a,) = _figure(1)
    a.plot(curve.values[j - 1], curve.iou[j], label="IoU (pooled)")
    a.plot(curve.values[j - 1], curve.f1[j], label="F1 (pooled)")
    t = body["thresholds"]["pixel"]
    a.axvline(t, color="black", ls="--", label=f"chosen {t:.4g} ({body['rule']['pixel']})")
    best = body["best_iou"]
    if best["iou"] is not None and np.isfinite(best["iou"]):
        a.plot([best["threshold"]], [best["iou"]], "o", color="red", label=f"best IoU {best['iou']:.3f}")
    a.set(xlabel="pixel threshold (anomaly_map)", ylabel="score", title="pixel IoU and F1 against the threshold")
    a.legend(fontsize=8)
    _save_figure(fig, path)


def _cell(picture: np.ndarray, caption: str) -> np.ndarray:
    h, w = picture.shape[:2]
    f = CELL / max(h, w)
    img = cv2.resize(picture, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    tile = np.full((CELL + 22, CELL, 3), 30, np.uint8)
    tile[:img.shape[0], :img.shape[1]] = img
    cv2.putText(tile, caption[:40], (3, CELL + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
    return tile


def _row(tiles: list[np.ndarray], title: str, width: int) -> np.ndarray:
    band = np.full((24, width, 3), 50, np.uint8)
    cv2.putText(band, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    row = np.full((tiles[0].shape[0], width, 3), 30, np.uint8) if tiles else np.zeros((0, width, 3), np.uint8)
    for i, t in enumerate(tiles):
        row[:, i * (CELL + 4):i * (CELL + 4) + CELL] = t
    return np.vstack([band, row])


def worst_cases(c: Collected, image: float, n: int) -> list[tuple[str, list[int]]]:
    """(title, sample indices): the n highest-scoring good parts (false positives first) and the n
    lowest-scoring defective ones (false negatives first); failed registrations are not drawn."""
    data = c.scores
    ok = data.scored
    good = [int(i) for i in np.argsort(-data.scores, kind="stable") if ok[i] and not data.labels[i]][:n]
    bad = [int(i) for i in np.argsort(data.scores, kind="stable") if ok[i] and data.labels[i]][:n]
    fp = sum(data.scores[i] >= image for i in good)
    fn = sum(data.scores[i] < image for i in bad)
    rows = [(f"highest-scoring good parts: {fp} shown rejected (false positives)", good)]
    if bad:
        rows.append((f"lowest-scoring defective parts: {fn} shown passed (false negatives); green: ground truth", bad))
    return rows


def plot_worst(pipe: Pipeline, c: Collected, body: dict[str, Any], path: Path, n: int = 6) -> None:
    """worst.png through Pipeline.render at the calibrated thresholds (the overlay inspection draws)."""
    drawer = Pipeline(pipe.model, Thresholds(body["thresholds"]["pixel"], body["thresholds"]["image"], "calibration"))
    rows = worst_cases(c, body["thresholds"]["image"], n)
    width = max(1, n) * (CELL + 4)
    parts = []
    for title, idx in rows:
        samples = [c.samples[i] for i in idx]
        results = drawer([s.path for s in samples], keep_maps=True) if samples else []
        tiles = []
        for s, r in zip(samples, results):
            picture = drawer.render(r)
            if s.mask is not None:
                ov.draw_contours(picture, read_image(s.mask, 1)[:, :, 0], GT_COLOR)
            wrong = (r.verdict == "NG") != s.defective
            tiles.append(_cell(picture, f"{'WRONG ' if wrong else ''}{s.rel}"))
        parts.append(_row(tiles, title, width))
    grid = np.vstack(parts)
    ok, buf = cv2.imencode(".png", grid)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()), durable=False)


def write_plots(pipe: Pipeline, c: Collected, body: dict[str, Any], folder: Path, worst: int = 6) -> list[str]:
    """Every plot the data allows into `folder`; returns their file names."""
    made = []
    if body["mode"] != "normal-only":
        plot_roc(c, body, folder / "roc.png")
        made.append("roc.png")
    plot_scores(c, body, folder / "scores.png")
    made.append("scores.png")
    if c.scores.pixels()[0].any():
        plot_pixel_threshold(c, body, folder / "pixel_threshold.png")
        made.append("pixel_threshold.png")
    if worst > 0:
        plot_worst(pipe, c, body, folder / "worst.png", worst)
        made.append("worst.png")
    return made


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) or x != x else f"{100 * x:.1f}%"


def _fold(folds: dict[str, Any], m: str, pct: bool = True) -> str:
    s = folds.get(m) or {}
    if s.get("mean") is None:
        return "n/a"
    return f"{_pct(s['mean'])} +- {_pct(s['std'])}" if pct else f"{s['mean']:.3f} +- {s['std']:.3f}"


def _interval(boot: dict[str, Any], m: str) -> str:
    s = boot.get(m) or {}
    return "n/a" if s.get("low") is None else f"[{_pct(s['low'])}, {_pct(s['high'])}]"


def summary_lines(body: dict[str, Any]) -> list[str]:
    """What the console shows: mode, both thresholds with in-sample and held-out numbers."""
    ins, folds, boot = body["in_sample"], body["folds"], body["bootstrap"]
    cm = ins["confusion"]
    k = folds["k"]
    held = f"held-out ({k} folds)" if k else "held-out: none"
    lines = [f"mode: {body['mode']} ({body['data']['good']} good, {body['data']['defective']} defective; "
             f"{len(body['registration']['failed'])} failed registration, counted as rejected)"]
    lines += [f"{what} threshold rests on {on}" for what, on in body["basis"].items()]
    lines += [f"note: {n}" for n in body["notes"]]
    if folds.get("note"):
        lines.append(f"note: {folds['note']}")
    pixel = f"pixel threshold {body['thresholds']['pixel']:.6g} ({body['rule']['pixel']}): in-sample"
    lines.append(f"{pixel} IoU {ins['pixel_iou']:.3f}, pixel FPR {_pct(ins['pixel_fpr'])}; {held} IoU "
                 f"{_fold(folds, 'pixel_iou', pct=False)}" if body["mode"] == "labelled" else
                 f"{pixel} pixel FPR {_pct(ins['pixel_fpr'])}; {held} pixel FPR {_fold(folds, 'pixel_fpr')}")
    recall = (f"recall {_pct(ins['recall'])}, precision {_pct(ins['precision'])}"
              if body["mode"] != "normal-only" else "recall unknown (no defective images)")
    lines.append(f"image threshold {body['thresholds']['image']:.6g} ({body['rule']['image']}): in-sample FPR "
                 f"{_pct(ins['image_fpr'])}, {recall}")
    lines.append(f"  good: {cm['good']['ok']} OK, {cm['good']['ng']} NG, {cm['good']['failed']} failed; defective: "
                 f"{cm['defective']['ok']} OK, {cm['defective']['ng']} NG, {cm['defective']['failed']} failed")
    if k:
        pooled = folds.get("pooled") or {}
        lines.append(f"  {held}: FPR {_fold(folds, 'image_fpr')}, recall {_fold(folds, 'recall')}, "
                     f"precision {_fold(folds, 'precision')}; pooled over folds: FPR {_pct(pooled.get('image_fpr'))}, "
                     f"recall {_pct(pooled.get('recall'))}")
    lines.append(f"  bootstrap {int(100 * boot['level'])}% ({boot['resamples']} resamples of images): FPR "
                 f"{_interval(boot, 'image_fpr')}, recall {_interval(boot, 'recall')}")
    if body["mode"] == "normal-only":
        lines.append(f"  conformal: {body['conformal']['meaning']}")
    return lines

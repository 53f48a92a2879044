"""Overlay drawing, the one module shared by batch inspection, the camera and calibration's report.

Everything returns BGR uint8 images ready for cv2.imwrite / cv2.imshow:
  render()     the explanation picture: colormap heatmap blended on the image, the defect mask's
               contours, and the verdict and score as text
  heatmap()    a map alone in color
  to_bgr()     a decoded RGB / gray model-space image to BGR

Color scales are fixed wherever the model says what "normal" is, so that the same color means
the same value on every image and a good part does not light up as a bad one does: a map that
thresholds apply to (anomaly_map) over 0 .. 2 x pixel threshold, the attention over 0 .. 2 x its
99th percentile on the normal training images (the sidecar's model.attention_scale); the
threshold or the percentile sits in the middle of the colormap. Only without either is a map
stretched per image (min..max), and the picture's legend then says "per image".
"""
from __future__ import annotations

import cv2
import numpy as np

OK_COLOR = (80, 200, 60)      # BGR green
NG_COLOR = (40, 40, 230)      # BGR red
NONE_COLOR = (220, 220, 220)  # no verdict: light gray
CONTOUR_COLOR = (255, 255, 255)
LEGEND_MIN_WIDTH = 200  # pixels: the legend line needs ~170 at the smallest readable font


def to_bgr(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 1|3] (gray or RGB, the runtime's decode order) or [H, W] -> BGR uint8."""
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def scale_range(m: np.ndarray, pixel_threshold: float | None = None) -> tuple[float, float]:
    """Fixed 0..2*threshold when a pixel threshold exists, else the map's own min..max."""
    if pixel_threshold is not None and pixel_threshold > 0:
        return 0.0, 2.0 * float(pixel_threshold)
    lo, hi = float(np.min(m)), float(np.max(m))
    return lo, hi if hi > lo else lo + 1e-12


def colorize(m: np.ndarray, vmin: float, vmax: float, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """float [H, W] -> BGR uint8 via a colormap over [vmin, vmax] (clipped)."""
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 3:
        m = m[0]
    u8 = np.clip((m - vmin) * (255.0 / max(vmax - vmin, 1e-12)), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(u8, colormap)


def heatmap(m: np.ndarray, size: tuple[int, int] | None = None, pixel_threshold: float | None = None,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """A map in color at `size` (height, width); fixed scale with a pixel threshold."""
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 3:
        m = m[0]
    if size is not None and m.shape != tuple(size):
        m = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return colorize(m, *scale_range(m, pixel_threshold), colormap=colormap)


def draw_contours(img: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = CONTOUR_COLOR,
                  thickness: int | None = None) -> np.ndarray:
    """Outline the mask's regions in place (outer and hole contours)."""
    if mask.shape[:2] != img.shape[:2]:
        mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    t = thickness or max(1, round(min(img.shape[:2]) / 256))
    cv2.drawContours(img, contours, -1, color, t, lineType=cv2.LINE_AA)
    return img


def label_text(verdict: str | None, score: float, image_threshold: float | None = None) -> str:
    if verdict is None:
        return f"score {score:.4g}"
    thr = f" / {image_threshold:.4g}" if image_threshold is not None else ""
    return f"{verdict}  {score:.4g}{thr}"


def draw_label(img: np.ndarray, text: str, color: tuple[int, int, int], bottom: bool = False,
               size: float = 1.0) -> np.ndarray:
    """Text on a dark band at the top-left (or bottom-left), sized to the image, in place."""
    h, w = img.shape[:2]
    scale = max(0.35, min(w, h) / 500.0) * size
    thick = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(2, round(4 * scale))
    x1, bh = min(w, tw + 2 * pad), min(h, th + base + 2 * pad)
    y0 = h - bh if bottom else 0
    band = img[y0:y0 + bh, :x1]
    band[:] = (band * 0.35).astype(np.uint8)  # darken so the text reads on any heatmap
    cv2.putText(img, text, (pad, y0 + pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    return img


def legend_text(explain: str, fixed: bool, pixel_threshold: float | None) -> str:
    """What the overlay's colors and outlines are, for the bottom band."""
    text = f"color: {explain}" + ("" if fixed else " (per image)")
    return text + (f"  outline: anomaly_map >= {pixel_threshold:.4g}" if pixel_threshold is not None else "")


def render(image: np.ndarray, explanation: np.ndarray | None = None, mask: np.ndarray | None = None,
           verdict: str | None = None, score: float | None = None, image_threshold: float | None = None,
           alpha: float = 0.45, vmin: float | None = None, vmax: float | None = None,
           colormap: int = cv2.COLORMAP_JET, bgr: bool = False, legend: str | None = None) -> np.ndarray:
    """The overlay picture at the image's size.

    image: uint8 [H, W, C] RGB or gray as the runtime decodes it (bgr=True: a 3-channel BGR frame
    as a camera delivers it); explanation: a map at any size ([1, h, w] or [h, w]), drawn per
    image unless vmin/vmax are given; mask: uint8 mask at any size, outlined; verdict/score: the
    label (omitted when score is None); legend: a smaller line at the bottom (`legend_text`).
    """
    out = image.copy() if bgr and image.ndim == 3 and image.shape[2] == 3 else to_bgr(image)
    h, w = out.shape[:2]
    if explanation is not None:
        m = np.asarray(explanation, dtype=np.float32)
        if m.ndim == 3:
            m = m[0]
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        lo, hi = scale_range(m) if vmin is None or vmax is None else (vmin, vmax)
        out = cv2.addWeighted(colorize(m, lo, hi, colormap), alpha, out, 1.0 - alpha, 0.0)
    if mask is not None and np.any(mask):
        draw_contours(out, mask)
    if score is not None:
        color = NG_COLOR if verdict == "NG" else OK_COLOR if verdict == "OK" else NONE_COLOR
        draw_label(out, label_text(verdict, score, image_threshold), color)
    if legend and w >= LEGEND_MIN_WIDTH:  # narrower, the line would be clipped and unreadable
        draw_label(out, legend, NONE_COLOR, bottom=True, size=0.6)
    return out

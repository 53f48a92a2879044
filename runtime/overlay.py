"""Overlay drawing, the one module shared by batch inspection, the camera and calibration's report.

Everything returns BGR uint8 images ready for cv2.imwrite / cv2.imshow:
  render()        one panel: a map in colour blended on the image, a colour bar, the defect mask's
                  outline, the verdict badge (OK / NG / NO VERDICT, or a registration failure)
                  and a legend that says what the colours and the outline are
  side_by_side()  panels next to each other (the map that decides beside the paper's attention)
  heatmap()       a map alone in colour
  draw_info()     a line of live counters (the camera: FPS, latency, drops) under the badge
  to_bgr()        a decoded RGB / gray model-space image to BGR

Colour scales are fixed wherever the model says what "normal" is, so that the same colour means
the same value on every image and a good part does not light up as a bad one does: the map that
decides (anomaly_map) over 0 .. 2 x the pixel threshold once calibrated, else 0 .. 2 x its 99th
percentile on the normal training images (model.anomaly_scale); the attention over 0 .. 2 x its
normal 99th percentile (model.attention_scale). The threshold or the percentile sits in the middle
of the colormap, marked on the colour bar. Only without either is a map stretched per image
(min..max), and the legend then says "per image".
"""
from __future__ import annotations

import cv2
import numpy as np

OK_COLOR = (80, 200, 60)      # BGR green
NG_COLOR = (40, 40, 230)      # BGR red
NONE_COLOR = (220, 220, 220)  # no verdict: light gray
FAIL_COLOR = (0, 165, 255)    # BGR orange: the part could not be inspected (registration)
CONTOUR_COLOR = (255, 255, 255)
SUBTHRESHOLD_COLOR = (50, 50, 50)  # dark dashes: a region over the pixel threshold on a part judged OK
MIN_FONT = 0.3  # OpenCV font scale below which text is no longer readable
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


def outline_width(img: np.ndarray) -> int:
    """The defect outline's line width on a picture of this size."""
    return max(1, round(min(img.shape[:2]) / 256))


def draw_contours(img: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = CONTOUR_COLOR,
                  thickness: int | None = None, dash: int = 0) -> np.ndarray:
    """Outline the mask's regions in place (outer and hole contours); `dash` > 0: dashes of
    that many pixels with gaps as long (OpenCV draws no dashed lines)."""
    if mask.shape[:2] != img.shape[:2]:
        mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    approx = cv2.CHAIN_APPROX_NONE if dash else cv2.CHAIN_APPROX_SIMPLE  # dashes count the pixels along the line
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_LIST, approx)
    t = thickness or outline_width(img)
    if dash:
        contours = [c[i:i + dash + 1] for c in contours for i in range(0, len(c), 2 * dash)]
        cv2.polylines(img, contours, False, color, t, lineType=cv2.LINE_8)  # anti-aliased short dashes blur into the map
    else:
        cv2.drawContours(img, contours, -1, color, t, lineType=cv2.LINE_AA)
    return img


def label_text(verdict: str | None, score: float, image_threshold: float | None = None) -> str:
    """The badge: 'NG  0.9 / 0.5' (score / image threshold), 'NO VERDICT  score 0.12' without one."""
    if verdict is None:
        return f"score {score:.4g}"
    if image_threshold is None:
        return f"{verdict}  score {score:.4g}"
    return f"{verdict}  {score:.4g} / {image_threshold:.4g}"


def draw_colorbar(img: np.ndarray, vmin: float, vmax: float, colormap: int = cv2.COLORMAP_JET,
                  mark: tuple[float, str] | None = None) -> np.ndarray:
    """A vertical colour bar at the right edge, in place: vmax at the top, vmin at the bottom, and
    `mark` (value, label), e.g. the pixel threshold, as a white tick in between."""
    h, w = img.shape[:2]
    bw, top, bottom = max(6, w // 40), max(4, h // 8), h - max(4, h // 5)
    if bottom - top < 16 or w < LEGEND_MIN_WIDTH:
        return img
    x1 = w - max(4, w // 60)
    x0 = x1 - bw
    ramp = np.linspace(255, 0, bottom - top, dtype=np.float32).astype(np.uint8)[:, None].repeat(bw, 1)
    img[top:bottom, x0:x1] = cv2.applyColorMap(ramp, colormap)
    cv2.rectangle(img, (x0, top), (x1 - 1, bottom - 1), CONTOUR_COLOR, 1)
    scale = max(0.3, min(w, h) / 900.0)
    ticks = [(top, f"{vmax:.3g}"), (bottom - 1, f"{vmin:.3g}")]
    if mark is not None and vmin < mark[0] < vmax:
        y = int(round(bottom - 1 - (mark[0] - vmin) / (vmax - vmin) * (bottom - 1 - top)))
        cv2.line(img, (x0 - 4, y), (x1 - 1, y), CONTOUR_COLOR, 2)
        ticks.append((y, mark[1]))
    for y, text in ticks:
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        org = (max(0, x0 - tw - 6), min(h - 2, max(th + 1, y + th // 2)))
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, CONTOUR_COLOR, 1, cv2.LINE_AA)
    return img


def _label_font(img: np.ndarray, size: float) -> tuple[float, int, int]:
    """draw_label's font scale, stroke and padding for an image of this size."""
    scale = max(0.35, min(img.shape[:2]) / 500.0) * size
    return scale, max(1, round(scale * 2)), max(2, round(4 * scale))


def label_height(img: np.ndarray, size: float = 1.0) -> int:
    """The height of draw_label's band on this image (text with descenders, padded)."""
    scale, thick, pad = _label_font(img, size)
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    return min(img.shape[0], th + base + 2 * pad)


def draw_label(img: np.ndarray, text: str, color: tuple[int, int, int], bottom: bool = False,
               size: float = 1.0, top: int = 0) -> np.ndarray:
    """Text on a dark band at the top-left (`top` pixels down) or bottom-left, sized to the
    image, in place."""
    h, w = img.shape[:2]
    scale, thick, pad = _label_font(img, size)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    # a line wider than the picture shrinks to fit instead of losing its end, down to a readable
    # size (a tiny picture clips); text width is not proportional to the scale (stroke thickness,
    # rounding), so it is measured again until it fits
    while tw + 2 * pad > w and scale > MIN_FONT:
        scale = max(MIN_FONT, min(0.97 * scale, scale * (w - 2 * pad) / tw))
        thick = max(1, min(thick, round(scale * 2)))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x1, bh = min(w, tw + 2 * pad), min(h, th + base + 2 * pad)
    y0 = h - bh if bottom else min(top, h - bh)
    band = img[y0:y0 + bh, :x1]
    band[:] = (band * 0.35).astype(np.uint8)  # darken so the text reads on any heatmap
    cv2.putText(img, text, (pad, y0 + pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    return img


def draw_info(img: np.ndarray, text: str, color: tuple[int, int, int] = NONE_COLOR) -> np.ndarray:
    """A line of live counters (the camera's FPS, latency, drops) in place, in the legend's small
    font on its own band just under the verdict badge: clear of the badge, the colour bar and the
    legend on any frame size."""
    return draw_label(img, text, color, size=0.6, top=label_height(img))


# what each layer is, in the legend's words
LAYER_NAMES = {"anomaly_map": "anomaly map (decides)", "attention": "latent attention (explains)"}


def legend_text(explain: str, fixed: bool, pixel_threshold: float | None, verdict: str | None = None) -> str:
    """What the overlay's colours and outline are, for the bottom band: on an NG part the outline
    is the defect; on an OK part a region over the pixel threshold is only dashed (render)."""
    text = f"colour: {LAYER_NAMES.get(explain, explain)}" + ("" if fixed else " (per image)")
    if pixel_threshold is None:
        return text
    # short where the colour already names the anomaly map: the line must fit a 256-px picture
    rule = f"{'map' if explain == 'anomaly_map' else 'anomaly map'} >= {pixel_threshold:.4g}"
    if verdict == "NG":
        return f"{text}  outline: defect, {rule}"
    return f"{text}  dashed: {rule}, part OK" if verdict == "OK" else f"{text}  outline: {rule}"


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels of one height next to each other, a dark gap between them."""
    h = panels[0].shape[0]
    sep = np.full((h, gap, 3), 30, np.uint8)
    parts: list[np.ndarray] = []
    for p in panels:
        parts += [sep, p] if parts else [p]
    return np.hstack(parts)


def render(image: np.ndarray, explanation: np.ndarray | None = None, mask: np.ndarray | None = None,
           verdict: str | None = None, score: float | None = None, image_threshold: float | None = None,
           alpha: float = 0.45, vmin: float | None = None, vmax: float | None = None,
           colormap: int = cv2.COLORMAP_JET, bgr: bool = False, legend: str | None = None,
           colorbar: bool = False, mark: tuple[float, str] | None = None, status: str | None = None) -> np.ndarray:
    """The overlay picture at the image's size.

    image: uint8 [H, W, C] RGB or gray as the runtime decodes it (bgr=True: a 3-channel BGR frame
    as a camera delivers it); explanation: a map at any size ([1, h, w] or [h, w]), drawn per
    image unless vmin/vmax are given; mask: uint8 mask at any size, outlined (on an OK part thin,
    dashed and gray: see below); verdict/score: the badge (omitted when score is None); status: a
    failure to show instead (orange), e.g. a part registration could not find; legend: a smaller
    line at the bottom (`legend_text`); colorbar: the colour scale at the right edge, with `mark`
    (value, label) ticked on it.
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
        if colorbar:
            draw_colorbar(out, lo, hi, colormap, mark)
    if mask is not None and np.any(mask):
        if verdict == "OK":
            # a region over the pixel threshold on a part whose score stays under the image
            # threshold: an inspector reads a solid outline as "defect here" against the OK
            # badge. It stays visible (where the part came close, what the [ ] keys tune) in a
            # line the defect outline never uses: thinner, dashed, dark gray (light gray vanished
            # on the hot colours it lies on)
            t = max(1, outline_width(out) // 2)
            draw_contours(out, mask, SUBTHRESHOLD_COLOR, thickness=t, dash=max(6, 4 * t))
        else:
            draw_contours(out, mask)
    if status is not None:
        draw_label(out, status, FAIL_COLOR)
    elif score is not None:
        color = NG_COLOR if verdict == "NG" else OK_COLOR if verdict == "OK" else NONE_COLOR
        draw_label(out, label_text(verdict, score, image_threshold), color)
    if legend and w >= LEGEND_MIN_WIDTH:  # narrower, the line would be clipped and unreadable
        draw_label(out, legend, NONE_COLOR, bottom=True, size=0.6)
    return out

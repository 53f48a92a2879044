"""The part's silhouette, background and moments in one decoded image: what every registration
method measures first (lighting, failures, the centre of a turn, the principal axis).

Estimation runs on a copy whose long side is WORK pixels (INTER_AREA, ~0.2 ms for 1024^2):
Otsu on its gray, the background being the class that holds most border pixels (dark parts on
bright ground and the reverse both work), the part its largest 8-connected component.
  no_part        Otsu's class means closer than MIN_CONTRAST, or a part under MIN_AREA of the image
  several_parts  another component >= SECOND_PART x the part's area
The gray work copy is kept (`work`): the methods that match a reference (rotation, shift) search
on it, so an image is reduced once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

WORK = 128               # long side of the estimation copy: the screw is ~115 px long there
MIN_CONTRAST = 25.0      # gray levels between Otsu's class means below which nothing stands out
MIN_AREA = 0.002         # part area / image area below which it is noise, not a part
SECOND_PART = 0.25       # a second component this large relative to the part is another part
END_FRACTION = 0.25      # length fraction at each end compared for the head side


@dataclass
class Silhouette:
    """Measurements of one image's part, in decoded pixel units."""
    status: str                       # ok, no_part or several_parts
    reason: str | None
    background: np.ndarray            # per-channel background median (C,)
    work: np.ndarray                  # float32 gray work copy [wh, ww] (long side WORK)
    area: float | None = None
    elongation: float | None = None
    head_ratio: float | None = None
    contact: float = 0.0              # part pixels on the border / the part's mean width
    u: np.ndarray | None = None       # unit axis vector (x, y), at an angle in (-90, 90] as displayed
    head_first: bool = False          # head at the end the axis direction points away from
    centroid: np.ndarray | None = None
    span: tuple[float, float] = (0.0, 0.0)   # extent along u from the centroid
    reach: float = 0.0                # largest distance from the axis line
    radius: float = 0.0               # largest distance of a part pixel from the centroid
    profile: np.ndarray | None = None  # widths per bin from the head end (RegistrationSpec.profile)
    bin: float = 1.0                  # decoded pixels per profile bin (long side / WORK)
    scale: tuple[float, float] = (1.0, 1.0)  # work-copy pixels per decoded pixel (x, y)

    def to_work(self, point: np.ndarray) -> np.ndarray:
        """Decoded pixel (x, y) -> work-copy pixel, pixel centres as cv2.resize places them."""
        s = np.asarray(self.scale)
        return (np.asarray(point, dtype=np.float64) + 0.5) * s - 0.5


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"register: expected uint8 [H, W, 1|3], got {getattr(image, 'dtype', type(image))} "
                         f"{list(getattr(image, 'shape', []))}")


def _histogram_median(hist: np.ndarray) -> float:
    c = np.cumsum(hist)
    return float(np.searchsorted(c, c[-1] / 2.0))


def measure(image: np.ndarray) -> Silhouette:
    """Silhouette, background and pose of the part in a decoded uint8 [H, W, C] image."""
    check_image(image)
    H, W = image.shape[:2]
    # small images are enlarged so that the profile's bins (1/WORK of the long side) stay filled
    f = WORK / max(H, W)
    ww, wh = max(2, round(W * f)), max(2, round(H * f))
    work = cv2.resize(image, (ww, wh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    work = work.reshape(wh, ww, -1)
    gray = work[:, :, 0] if work.shape[2] == 1 else cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)
    step = max(H, W) / WORK
    _, high = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    border = np.concatenate([high[0], high[-1], high[1:-1, 0], high[1:-1, -1]])
    fg = (1 - high) if border.mean() >= 0.5 else high
    bg_mask = (1 - fg).astype(np.uint8)
    planes = gray if work.shape[2] == 1 else work
    background = np.array([_histogram_median(cv2.calcHist([planes], [c], bg_mask, [256], [0, 256]).ravel())
                           for c in range(work.shape[2])])
    gray_f = gray.astype(np.float32)
    scale = (ww / W, wh / H)

    def failed(status: str, reason: str, area: float | None = None) -> Silhouette:
        return Silhouette(status, reason, background, gray_f, area=area, bin=step, scale=scale)

    if high.all() or not high.any():
        return failed("no_part", "a uniform image: nothing stands out from the background")
    contrast = float(gray[high == 1].mean() - gray[high == 0].mean())
    if contrast < MIN_CONTRAST:
        return failed("no_part", f"no part stands out (contrast {contrast:.0f} < {MIN_CONTRAST:.0f} gray levels)")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas)
    frac = areas[order[0]] / float(ww * wh) if n > 1 else 0.0
    if frac < MIN_AREA:
        return failed("no_part", f"no part found (largest blob {frac:.2%} of the image)")
    if n > 2 and areas[order[1]] >= SECOND_PART * areas[order[0]]:
        count = int((areas >= SECOND_PART * areas[order[0]]).sum())
        return failed("several_parts", f"{count} parts in view (the second has "
                      f"{areas[order[1]] / areas[order[0]]:.0%} of the largest's area)", area=frac)
    part = labels == order[0] + 1
    ys, xs = np.nonzero(part)
    # decoded pixel coordinates of the work pixels' centres (cv2.resize's convention)
    px = (xs + 0.5) * (W / ww) - 0.5
    py = (ys + 0.5) * (H / wh) - 0.5
    mx, my = px.mean(), py.mean()
    dx, dy = px - mx, py - my
    cov = np.array([[dx @ dx, dx @ dy], [dx @ dy, dy @ dy]]) / len(px)
    evals, evecs = np.linalg.eigh(cov)
    elong = math.sqrt(evals[1] / max(evals[0], 1e-12))
    u = evecs[:, 1]
    if u[0] < 0 or (u[0] == 0 and u[1] > 0):     # angle in (-90, 90] as displayed (y points down)
        u = -u
    s = dx * u[0] + dy * u[1]
    p = -dx * u[1] + dy * u[0]
    s0, s1 = float(s.min()) - 0.5 * W / ww, float(s.max()) + 0.5 * W / ww   # pixel edges, not centres
    end = END_FRACTION * (s1 - s0)
    first, last = int((s <= s0 + end).sum()), int((s >= s1 - end).sum())
    on_border = int(part[0].sum() + part[-1].sum() + part[1:-1, 0].sum() + part[1:-1, -1].sum())
    # head first, from the head end's edge; each pixel's decoded area shared linearly by the two
    # nearest bins (a plain histogram would quantize the match to whole bins); bin k is centred
    # at k - 0.5 steps. / (bin length * long side) = width as a fraction of the long side.
    pos = ((s - s0) if first >= last else (s1 - s)) / step - 0.5
    k = np.floor(pos).astype(np.int64) + 1
    w = pos - (k - 1)
    nb = int(k.max()) + 2
    profile = (np.bincount(k, 1 - w, nb) + np.bincount(k + 1, w, nb)) * ((W / ww) * (H / wh) / (step * max(H, W)))
    return Silhouette("ok", None, background, gray_f, area=frac, elongation=elong,
                      head_ratio=max(first, last) / max(min(first, last), 1),
                      contact=on_border / (len(xs) / ((s1 - s0) * ww / W)), u=u, head_first=first >= last,
                      centroid=np.array([mx, my]), span=(s0, s1), reach=float(np.abs(p).max()) + 0.5 * H / wh,
                      radius=float(np.sqrt(dx * dx + dy * dy).max()) + 0.5 * max(H / wh, W / ww),
                      profile=profile, bin=step, scale=scale)

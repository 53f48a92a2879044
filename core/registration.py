"""Registration: each part turned to one pose, and lit to one background gray, before the model.

(Over 400 lines on purpose: fit() learns exactly the measurements register() checks, from the same
silhouette code; apart they could disagree on what a part is.)

MVTec screws lie at random rotations and positions, and the shared test half is ~15 gray levels
darker than training. `register` turns the part so that its principal axis is horizontal with the
wider end (the head) on the left, centres it, and can bring the background to one gray; `fit`
measures the training parts once; `warp_back` takes a model-size map back to the image:

    spec = fit(training_images, RegistrationSpec("principal_axis", "background"))
    model_input, reg = register(image, spec, height, width)     # uint8 [height, width, C]
    if not reg.ok: ...                                          # reg.status, reg.reason
    full = warp_back(model_size_map, reg, *image.shape[:2])     # the map in the image's frame

Estimation runs on a copy whose long side is WORK pixels (INTER_AREA, ~0.2 ms for 1024^2):
Otsu on its gray, the background being the class that holds most border pixels (dark parts on
bright ground and the reverse both work), the part its largest 8-connected component.
  failures  no_part: Otsu's class means closer than MIN_CONTRAST, or a part under MIN_AREA of the
            image. several_parts: another component >= SECOND_PART x its area. cut_by_border: the
            part lies along the border for more than spec.border_contact x its mean width (MVTec
            screws often lie with the head's face on the border: fit learns how far). unusual_pose:
            no dominant axis (elongation < MIN_ELONGATION), area / elongation / end ratio outside
            the fitted ranges, or a part that would leave the model frame.
  pose      axis from the second moments; the head is the end quarter holding more pixels
            (head_ratio = wider / narrower). flip: the head lies where the axis, taken at an angle
            in (-90, 90], points, so the turn has 180 degrees more (never a mirror image: a
            right-hand thread would turn left). Across the axis the centroid is centred; along it,
            the width profile (head first) is matched by least squares to the training mean from
            fit, so head, neck and thread land where training had them even with a damaged tip or
            a head cut by the border (without a profile, the extent's midpoint is centred; the
            heavy head pulls the centroid off-centre, and a long part's tip would leave the frame).
  lighting  "background": one gain brings the background class's median to spec.background.
  warp      resize_to_model (INTER_AREA), then one bilinear warpAffine at model size (rotation,
            shift, spec.zoom), borders filled with the lit background gray. A failure returns what
            method "none" gives (the plain resize, lit) with its status: callers decide.

Registration.matrix maps decoded pixel (x, y) to model-input pixel, resize included (pixel centres
as cv2.resize places them), so a model-size map goes back in one warp. Torch-free.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import cv2
import numpy as np

from core.images import resize_to_model

REGISTRATIONS = ("none", "principal_axis")
LIGHTINGS = ("none", "background")
STATUSES = ("off", "ok", "no_part", "cut_by_border", "several_parts", "unusual_pose")

WORK = 128               # long side of the estimation copy: the screw is ~115 px long there
MIN_CONTRAST = 25.0      # gray levels between Otsu's class means below which nothing stands out
MIN_AREA = 0.002         # part area / image area below which it is noise, not a part
SECOND_PART = 0.25       # a second component this large relative to the part is another part
MIN_ELONGATION = 1.2     # sqrt(eigenvalue ratio) below which the axis angle is noise
BORDER_CONTACT = 0.2     # default accepted border contact / mean width: a touch of a pixel or two
END_FRACTION = 0.25      # length fraction at each end compared for the head side
# fit(): parts rounder than FIT_ELONGATION have no axis worth aligning; a head side decided by
# ends closer than HEAD_DECISIVE on more than HEAD_AMBIGUOUS of the images is a coin toss.
FIT_ELONGATION = 1.5
HEAD_DECISIVE = 1.15
HEAD_AMBIGUOUS = 0.05
FIT_MARGIN = 0.25        # fitted ranges widened by this factor on each side (lo / 1.25, hi * 1.25)
FIT_FILL = 0.95          # fit() zooms out so that the largest training part fills at most this
FIT_ROUNDS = 3           # fit(): align the profiles to their mean, re-average, this many times


@dataclass(frozen=True)
class RegistrationSpec:
    """How to register, and the training poses that registration accepts (fit fills them in).

    area / elongation / head_ratio: (lo, hi) accepted ranges (fit: the training range widened by
    FIT_MARGIN) or None (unchecked) of silhouette area / image area, sqrt of the principal moments'
    ratio, and pixels in the wider end quarter / the narrower one. background: target gray of
    lighting "background" (fit: the training median). zoom: extra scale (< 1 keeps long parts in
    the frame). border_contact: how far the part may lie along the border, in its mean widths.
    head_side: False aligns the axis modulo 180 degrees (fit: when the ends are too alike).
    profile: the training parts' mean width profile, head first, in bins of 1/WORK of the long
    side, widths as fractions of it; profile_centre: its bin that goes to the frame's centre.
    samples: how many training images the statistics come from.
    """
    method: str = "none"
    lighting: str = "none"
    background: float | None = None
    zoom: float = 1.0
    border_contact: float = BORDER_CONTACT
    head_side: bool = True
    area: tuple[float, float] | None = None
    elongation: tuple[float, float] | None = None
    head_ratio: tuple[float, float] | None = None
    profile: tuple[float, ...] | None = None
    profile_centre: float | None = None
    samples: int = 0

    def __post_init__(self) -> None:
        _require(self.method in REGISTRATIONS, "method", self.method, f"one of {', '.join(REGISTRATIONS)}")
        _require(self.lighting in LIGHTINGS, "lighting", self.lighting, f"one of {', '.join(LIGHTINGS)}")
        _require(self.background is None or (_is_number(self.background) and 0 < self.background <= 255),
                 "background", self.background, "a gray level in (0, 255]")
        _require(_is_number(self.zoom) and 0.1 <= self.zoom <= 1.0, "zoom", self.zoom, "a number in [0.1, 1]")
        _require(_is_number(self.border_contact) and self.border_contact >= 0, "border_contact",
                 self.border_contact, "a number >= 0")
        _require(isinstance(self.head_side, bool), "head_side", self.head_side, "true or false")
        for key in ("area", "elongation", "head_ratio"):
            r = getattr(self, key)
            _require(r is None or (isinstance(r, (tuple, list)) and len(r) == 2 and all(map(_is_number, r))
                                   and 0 <= r[0] <= r[1]), key, r, "a range [lo, hi] with 0 <= lo <= hi")
            if r is not None:
                object.__setattr__(self, key, (float(r[0]), float(r[1])))
        p = self.profile
        _require(p is None or (isinstance(p, (tuple, list)) and len(p) >= 2
                               and all(_is_number(v) and v >= 0 for v in p)), "profile", p,
                 "a list of at least 2 widths >= 0")
        _require((p is None) == (self.profile_centre is None), "profile_centre", self.profile_centre,
                 "set exactly when profile is")
        if p is not None:
            _require(_is_number(self.profile_centre) and 0 <= self.profile_centre <= len(p), "profile_centre",
                     self.profile_centre, "a bin of the profile")
            object.__setattr__(self, "profile", tuple(float(v) for v in p))
        _require(type(self.samples) is int and self.samples >= 0, "samples", self.samples, "a count")

    @property
    def active(self) -> bool:
        """Whether register() does anything beyond the plain resize."""
        return self.method != "none" or self.lighting != "none"

    def to_mapping(self) -> dict[str, Any]:
        """Plain types only (YAML / JSON): tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_mapping(cls, d: dict[str, Any] | None) -> RegistrationSpec:
        """The inverse of to_mapping; missing keys take their defaults, unknown keys are errors."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"registration: expected a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"registration {unknown[0]}: unknown key (known: {', '.join(known)})")
        return cls(**d)


@dataclass
class Registration:
    """What register() did to one image. `matrix`: 2x3 float64, decoded pixel (x, y) -> model
    input pixel; `angle`: the head-to-tail direction in the decoded image, degrees counter-clockwise
    as displayed; `centre`: the point (x, y, decoded pixels) put at the frame's centre; `size`:
    the decoded (H, W);
    `area`, `elongation`, `head_ratio`: the silhouette's measurements (None when not measured)."""
    status: str
    matrix: np.ndarray
    size: tuple[int, int]
    reason: str | None = None
    angle: float = 0.0
    centre: tuple[float, float] = (0.0, 0.0)
    flip: bool = False
    gain: float = 1.0
    area: float | None = None
    elongation: float | None = None
    head_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"registration status: {self.status!r} is not one of {', '.join(STATUSES)}")

    @property
    def ok(self) -> bool:
        """Usable: registered, or registration off."""
        return self.status in ("off", "ok")

    def as_row(self) -> dict[str, Any]:
        """JSON-able fields for a report row."""
        def r(v: float | None) -> float | None:
            return None if v is None else round(float(v), 4)
        return {"status": self.status, "reason": self.reason, "angle": r(self.angle),
                "centre": [r(self.centre[0]), r(self.centre[1])], "flip": self.flip, "gain": r(self.gain),
                "area": r(self.area), "elongation": r(self.elongation), "head_ratio": r(self.head_ratio),
                "matrix": [[float(v) for v in row] for row in self.matrix]}


@dataclass
class _Silhouette:
    """Measurements of one image's part, in decoded pixel units."""
    status: str                       # ok, no_part or several_parts
    reason: str | None
    background: np.ndarray            # per-channel background median (C,)
    area: float | None = None
    elongation: float | None = None
    head_ratio: float | None = None
    contact: float = 0.0              # part pixels on the border / the part's mean width
    u: np.ndarray | None = None       # unit axis vector (x, y), at an angle in (-90, 90] as displayed
    head_first: bool = False          # head at the end the axis direction points away from
    centroid: np.ndarray | None = None
    span: tuple[float, float] = (0.0, 0.0)   # extent along u from the centroid
    reach: float = 0.0                # largest distance from the axis line
    profile: np.ndarray | None = None  # widths per bin from the head end (RegistrationSpec.profile)
    bin: float = 1.0                  # decoded pixels per profile bin (long side / WORK)


def _require(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise ValueError(f"registration {key}: {value!r} is not {what}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"register: expected uint8 [H, W, 1|3], got {getattr(image, 'dtype', type(image))} "
                         f"{list(getattr(image, 'shape', []))}")


def _histogram_median(hist: np.ndarray) -> float:
    c = np.cumsum(hist)
    return float(np.searchsorted(c, c[-1] / 2.0))


def _measure(image: np.ndarray) -> _Silhouette:
    """Silhouette, background and pose of the part in a decoded uint8 [H, W, C] image."""
    _check_image(image)
    H, W = image.shape[:2]
    # small images are enlarged so that the profile's bins (1/WORK of the long side) stay filled
    f = WORK / max(H, W)
    ww, wh = max(2, round(W * f)), max(2, round(H * f))
    work = cv2.resize(image, (ww, wh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    work = work.reshape(wh, ww, -1)
    gray = work[:, :, 0] if work.shape[2] == 1 else cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)
    _, high = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    border = np.concatenate([high[0], high[-1], high[1:-1, 0], high[1:-1, -1]])
    fg = (1 - high) if border.mean() >= 0.5 else high
    bg_mask = (1 - fg).astype(np.uint8)
    planes = gray if work.shape[2] == 1 else work
    background = np.array([_histogram_median(cv2.calcHist([planes], [c], bg_mask, [256], [0, 256]).ravel())
                           for c in range(work.shape[2])])
    if high.all() or not high.any():
        return _Silhouette("no_part", "a uniform image: nothing stands out from the background", background)
    contrast = float(gray[high == 1].mean() - gray[high == 0].mean())
    if contrast < MIN_CONTRAST:
        return _Silhouette("no_part", f"no part stands out (contrast {contrast:.0f} < {MIN_CONTRAST:.0f} gray levels)",
                           background)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas)
    frac = areas[order[0]] / float(ww * wh) if n > 1 else 0.0
    if frac < MIN_AREA:
        return _Silhouette("no_part", f"no part found (largest blob {frac:.2%} of the image)", background)
    if n > 2 and areas[order[1]] >= SECOND_PART * areas[order[0]]:
        count = int((areas >= SECOND_PART * areas[order[0]]).sum())
        return _Silhouette("several_parts", f"{count} parts in view (the second has "
                           f"{areas[order[1]] / areas[order[0]]:.0%} of the largest's area)", background, area=frac)
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
    step = max(H, W) / WORK
    # head first, from the head end's edge; each pixel's decoded area shared linearly by the two
    # nearest bins (a plain histogram would quantize the match to whole bins); bin k is centred
    # at k - 0.5 steps. / (bin length * long side) = width as a fraction of the long side.
    pos = ((s - s0) if first >= last else (s1 - s)) / step - 0.5
    k = np.floor(pos).astype(np.int64) + 1
    w = pos - (k - 1)
    n = int(k.max()) + 2
    profile = (np.bincount(k, 1 - w, n) + np.bincount(k + 1, w, n)) * ((W / ww) * (H / wh) / (step * max(H, W)))
    return _Silhouette("ok", None, background, area=frac, elongation=elong,
                       head_ratio=max(first, last) / max(min(first, last), 1),
                       contact=on_border / (len(xs) / ((s1 - s0) * ww / W)), u=u, head_first=first >= last,
                       centroid=np.array([mx, my]), span=(s0, s1), reach=float(np.abs(p).max()) + 0.5 * H / wh,
                       profile=profile, bin=step)


def _lag(t: np.ndarray, ref: np.ndarray) -> float:
    """The reference bin (sub-bin) where profile t's first bin lands when t matches ref best:
    with both zero-padded, least squares is the largest cross-correlation."""
    c = np.correlate(ref, t, "full")       # c[k]: t[n] against ref[n + k - (len(t) - 1)]
    k = int(np.argmax(c))
    frac = 0.0
    if 0 < k < len(c) - 1:
        den = c[k - 1] - 2 * c[k] + c[k + 1]
        frac = 0.5 * (c[k - 1] - c[k + 1]) / den if den < 0 else 0.0
    return k - (len(t) - 1) + frac


def _pose(sil: _Silhouette, spec: RegistrationSpec) -> tuple[bool, np.ndarray, np.ndarray, float, float]:
    """(flip, start point, unit head-to-tail direction, distance from start to the point that goes
    to the frame's centre, largest distance along the axis from that point), decoded pixels."""
    flip = spec.head_side and not sil.head_first
    d = -sil.u if flip else sil.u
    start = sil.centroid + (sil.span[1] if flip else sil.span[0]) * sil.u
    length = sil.span[1] - sil.span[0]
    if spec.profile is None or not spec.head_side:   # the profile is head first: needs the head side
        r = 0.5 * length
    else:
        r = (spec.profile_centre - _lag(sil.profile, np.asarray(spec.profile))) * sil.bin
    return flip, start, d, r, max(abs(r), abs(length - r))


def _scale(H: int, W: int, height: int, width: int) -> np.ndarray:
    """3x3: decoded pixel -> model pixel as cv2.resize maps pixel centres."""
    sx, sy = width / W, height / H
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def _problem(sil: _Silhouette, spec: RegistrationSpec, H: int, W: int,
             along: float) -> tuple[str, str] | tuple[None, None]:
    """(status, reason) when a measured part is cut or far from the training poses."""
    if sil.contact > spec.border_contact:
        return "cut_by_border", (f"the part runs along the image border for {sil.contact:.2f} of its width "
                                 f"(accepted {spec.border_contact:.2f})")
    if sil.elongation < MIN_ELONGATION:
        return "unusual_pose", f"no dominant axis (elongation {sil.elongation:.2f} < {MIN_ELONGATION})"
    checks = [("area", sil.area, spec.area), ("elongation", sil.elongation, spec.elongation)]
    if spec.head_side:
        checks.append(("head ratio", sil.head_ratio, spec.head_ratio))
    for name, v, r in checks:
        if r is not None and not r[0] <= v <= r[1]:
            return "unusual_pose", f"{name} {v:.3g} outside the training range [{r[0]:.3g}, {r[1]:.3g}]"
    if 2 * along * spec.zoom > W or 2 * sil.reach * spec.zoom > H:
        return "unusual_pose", "the part does not fit the model frame once turned (longer than the training parts)"
    return None, None


def register(image: np.ndarray, spec: RegistrationSpec, height: int, width: int) -> tuple[np.ndarray, Registration]:
    """A decoded uint8 [H, W, C] image -> (model input uint8 [height, width, C], Registration).

    Method and lighting "none" give exactly core.images.resize_to_model. A failure returns the
    array method "none" would give (lit as the spec says) and the failure status: callers decide.
    """
    _check_image(image)
    H, W = image.shape[:2]
    S = _scale(H, W, height, width)
    plain = resize_to_model(image, height, width)
    if not spec.active:
        return plain, Registration("off", S[:2].copy(), (H, W))
    if spec.lighting == "background" and spec.background is None:
        raise ValueError("registration background: unset; fit the spec on training images or set a gray level")
    sil = _measure(image)
    gain = 1.0
    if spec.lighting == "background":
        gain = float(spec.background / max(float(sil.background.mean()), 1.0))
        plain = cv2.convertScaleAbs(plain, alpha=gain).reshape(plain.shape)
    status, reason = sil.status, sil.reason
    if spec.method == "none":
        status, reason = "off", None
    elif status == "ok":
        flip, start, d, r, along = _pose(sil, spec)
        status, reason = _problem(sil, spec, H, W, along)
        status = status or "ok"
    measured = {"area": sil.area, "elongation": sil.elongation, "head_ratio": sil.head_ratio}
    if status != "ok":
        return plain, Registration(status, S[:2].copy(), (H, W), reason, gain=gain, **measured)
    angle = math.degrees(math.atan2(-d[1], d[0])) + 0.0      # + 0.0: no "-0.0" in reports
    cx, cy = start + r * d
    z = spec.zoom
    # turn the head-to-tail direction d = (cos a, -sin a) onto +x, the part's centre onto the frame's
    A = np.array([[z * d[0], z * d[1], 0.0], [-z * d[1], z * d[0], 0.0], [0, 0, 1.0]])
    A[:2, 2] = np.array([(W - 1) / 2, (H - 1) / 2]) - A[:2, :2] @ np.array([cx, cy])
    M = S @ A
    fill = tuple(float(v) for v in np.clip(sil.background * gain, 0, 255)) + (0.0,) * (4 - len(sil.background))
    out = cv2.warpAffine(plain, (M @ np.linalg.inv(S))[:2], (width, height), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=fill).reshape(plain.shape)
    return out, Registration("ok", M[:2], (H, W), None, angle, (float(cx), float(cy)), flip, gain, **measured)


def warp_back(m: np.ndarray, reg: Registration, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """A model-size map float32 [h, w] or [1, h, w] -> float32 [height, width] in the decoded
    image's frame (resampled to height x width when that differs from the decoded size).

    Bilinear (nearest for masks); outside the registered field 0. A registration that did not
    turn the image (off or failed) is a plain cv2.resize, as the runtime does without one."""
    m = np.asarray(m, dtype=np.float32)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"warp_back: expected a map [h, w] or [1, h, w], got {list(m.shape)}")
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if reg.status != "ok":
        return cv2.resize(m, (width, height), interpolation=interp)
    H, W = reg.size
    # output pixel -> decoded pixel -> model pixel: one inverse-map warp
    to_decoded = np.linalg.inv(_scale(H, W, height, width))
    M = np.vstack([reg.matrix, [0, 0, 1.0]]) @ to_decoded
    return cv2.warpAffine(m, M[:2], (width, height), flags=interp | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def fit(images: Iterable[np.ndarray], spec: RegistrationSpec) -> RegistrationSpec:
    """Measure the training parts and return `spec` with its pose statistics, background target
    and zoom filled in. Falls back to method "none" with a warning when the parts have no dominant
    axis, and to an axis-only alignment (head_side False) when their ends are too alike to tell.
    Raises ValueError when no image shows a usable part."""
    sils: list[tuple[_Silhouette, int, int]] = []
    failed: dict[str, int] = {}
    for img in images:
        sil = _measure(img)
        if sil.status == "ok":
            sils.append((sil, img.shape[0], img.shape[1]))
        else:
            failed[sil.status] = failed.get(sil.status, 0) + 1
    if not sils:
        raise ValueError(f"registration fit: no training image shows a usable part ({failed or 'no images'})")
    if failed:
        warnings.warn(f"registration fit: {sum(failed.values())} of {sum(failed.values()) + len(sils)} training "
                      f"images left out ({', '.join(f'{v} {k}' for k, v in sorted(failed.items()))})", stacklevel=2)
    area = np.array([s.area for s, _, _ in sils])
    elong = np.array([s.elongation for s, _, _ in sils])
    ratio = np.array([s.head_ratio for s, _, _ in sils])
    bg = float(np.median([s.background.mean() for s, _, _ in sils]))
    contact = max(BORDER_CONTACT, float(max(s.contact for s, _, _ in sils)) * (1 + FIT_MARGIN))
    out = replace(spec, background=round(bg, 2), samples=len(sils), border_contact=round(contact, 4),
                  area=_widen(area), elongation=_widen(elong), head_ratio=_widen(ratio))
    if spec.method == "none":
        return out
    if float(np.median(elong)) < FIT_ELONGATION:
        warnings.warn(f"registration fit: the parts have no dominant axis (median elongation "
                      f"{np.median(elong):.2f} < {FIT_ELONGATION}); registration falls back to method 'none'",
                      stacklevel=2)
        return replace(out, method="none", head_ratio=None, profile=None, profile_centre=None)
    ambiguous = float((ratio < HEAD_DECISIVE).mean())
    if ambiguous > HEAD_AMBIGUOUS and spec.head_side:
        warnings.warn(f"registration fit: the two ends are nearly equal (ratio < {HEAD_DECISIVE}) on {ambiguous:.0%} "
                      f"of the training parts; the head side is not decided (axis aligned modulo 180 degrees)",
                      stacklevel=2)
    if ambiguous > HEAD_AMBIGUOUS or not spec.head_side:
        out = replace(out, head_side=False, head_ratio=None, profile=None, profile_centre=None)
    else:
        out = _fit_profile(out, [s for s, _, _ in sils])
    fill = 0.0
    for sil, h, w in sils:
        along = _pose(sil, out)[4]
        fill = max(fill, 2 * along / w, 2 * sil.reach / h)
    return replace(out, zoom=round(float(min(1.0, FIT_FILL / fill)), 4))


def _widen(v: np.ndarray) -> tuple[float, float]:
    """The observed range with FIT_MARGIN on each side."""
    return float(v.min() / (1 + FIT_MARGIN)), float(v.max() * (1 + FIT_MARGIN))


def _fit_profile(spec: RegistrationSpec, sils: list[_Silhouette]) -> RegistrationSpec:
    """The mean head-first width profile of the training parts, each aligned to the mean (started
    at their heads), and the bin of it that goes to the frame's centre: the mean part's middle."""
    profs = [s.profile for s in sils]
    lags = np.zeros(len(profs))
    for _ in range(FIT_ROUNDS):
        at = np.rint(lags - lags.min()).astype(np.int64)
        stack = np.zeros((len(profs), int(max(a + len(p) for a, p in zip(at, profs)))))
        for row, a, p in zip(stack, at, profs):
            row[a:a + len(p)] = p
        ref = stack.mean(0)
        lags = np.array([_lag(p, ref) for p in profs])
    centre = float(np.mean([lag + (s.span[1] - s.span[0]) / (2 * s.bin) for lag, s in zip(lags, sils)]))
    return replace(spec, profile=tuple(np.round(ref, 4).tolist()), profile_centre=round(centre, 3))

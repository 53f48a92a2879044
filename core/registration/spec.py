"""What a registration is asked and fitted to do (RegistrationSpec), what it did to one image
(Registration), and what a method returns (Pose or Failure). Plain types only, so a spec travels
in a checkpoint's config and a sidecar as YAML."""
from __future__ import annotations

import base64
import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

LIGHTINGS = ("none", "background")
STATUSES = ("off", "ok", "no_part", "cut_by_border", "several_parts", "unusual_pose")
BORDER_CONTACT = 0.2     # default accepted border contact / mean width: a touch of a pixel or two
MAX_ZOOM = 4.0           # rotation frames the part's disc: a small part on a large ground is enlarged
FIT_MARGIN = 0.25        # fitted ranges widened by this factor on each side (lo / 1.25, hi * 1.25)
FIT_FILL = 0.95          # fit() zooms so that the largest training part fills at most this of the frame


@dataclass(frozen=True)
class RegistrationSpec:
    """How to register, and the training poses that registration accepts (fit fills them in).

    method: a name of core.registration.METHODS. area / elongation / head_ratio: (lo, hi)
    accepted ranges (fit: the training range widened by FIT_MARGIN) or None (unchecked) of
    silhouette area / image area, sqrt of the principal moments' ratio, and pixels in the wider
    end quarter / the narrower one. background: target gray of lighting "background" (fit: the
    training median). zoom: extra scale (< 1 keeps long parts in the frame, > 1 enlarges a small
    part's disc). border_contact: how far the part may lie along the border, in its mean widths.
    head_side: False aligns the axis modulo 180 degrees (fit: when the ends are too alike).
    profile: the training parts' mean width profile, head first, in bins of 1/WORK of the long
    side, widths as fractions of it; profile_centre: its bin that goes to the frame's centre.
    reference: the fitted reference picture (gray PNG, base64) that rotation and shift match
    against; radius: the disc around the part's centre that rotation matches and frames, as a
    fraction of the long side; residual: the largest 1 - correlation with the reference accepted
    (rotation; shift reports it only); shift_limit: the largest translation shift corrects, as a
    fraction of the long side (a part moved further stays moved, hence an anomaly); turn_limit:
    the largest turn from the reference pose rotation corrects, in degrees (fit: set for parts that
    came in one pose, None for parts that came at any angle); symmetry: the
    n-fold symmetry fit found in the reference (1: none); least_turn: of a symmetric part's n
    equally good turns, rotation takes the least (fit sets it; sidecars written before it take the
    best-correlated one, as they were fitted). samples: how many training images the statistics
    come from.
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
    reference: str | None = None
    radius: float | None = None
    residual: float | None = None
    shift_limit: float | None = None
    turn_limit: float | None = None
    symmetry: int = 1
    least_turn: bool = False
    samples: int = 0

    def __post_init__(self) -> None:
        from core.registration import METHODS  # noqa: PLC0415 - the table imports the methods, which import this

        require(self.method in METHODS, "method", self.method, f"one of {', '.join(METHODS)}")
        require(self.lighting in LIGHTINGS, "lighting", self.lighting, f"one of {', '.join(LIGHTINGS)}")
        require(self.background is None or (is_number(self.background) and 0 < self.background <= 255),
                "background", self.background, "a gray level in (0, 255]")
        require(is_number(self.zoom) and 0.1 <= self.zoom <= MAX_ZOOM, "zoom", self.zoom,
                f"a number in [0.1, {MAX_ZOOM:g}]")
        require(is_number(self.border_contact) and self.border_contact >= 0, "border_contact",
                self.border_contact, "a number >= 0")
        require(isinstance(self.head_side, bool), "head_side", self.head_side, "true or false")
        for key in ("area", "elongation", "head_ratio"):
            r = getattr(self, key)
            require(r is None or (isinstance(r, (tuple, list)) and len(r) == 2 and all(map(is_number, r))
                                  and 0 <= r[0] <= r[1]), key, r, "a range [lo, hi] with 0 <= lo <= hi")
            if r is not None:
                object.__setattr__(self, key, (float(r[0]), float(r[1])))
        p = self.profile
        require(p is None or (isinstance(p, (tuple, list)) and len(p) >= 2
                              and all(is_number(v) and v >= 0 for v in p)), "profile", p,
                "a list of at least 2 widths >= 0")
        require((p is None) == (self.profile_centre is None), "profile_centre", self.profile_centre,
                "set exactly when profile is")
        if p is not None:
            require(is_number(self.profile_centre) and 0 <= self.profile_centre <= len(p), "profile_centre",
                    self.profile_centre, "a bin of the profile")
            object.__setattr__(self, "profile", tuple(float(v) for v in p))
        require(self.reference is None or (isinstance(self.reference, str) and _decodes(self.reference)),
                "reference", "<picture>" if isinstance(self.reference, str) else self.reference,
                "a base64 PNG picture")
        for key in ("radius", "residual", "shift_limit"):
            v = getattr(self, key)
            require(v is None or (is_number(v) and v >= 0), key, v, "a number >= 0")
        require(self.turn_limit is None or (is_number(self.turn_limit) and 0 <= self.turn_limit <= 180),
                "turn_limit", self.turn_limit, "a number of degrees in [0, 180]")
        require(type(self.symmetry) is int and self.symmetry >= 1, "symmetry", self.symmetry, "a count >= 1")
        require(isinstance(self.least_turn, bool), "least_turn", self.least_turn, "true or false")
        require(type(self.samples) is int and self.samples >= 0, "samples", self.samples, "a count")

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
    input pixel; `angle`: degrees counter-clockwise as displayed (principal_axis: the head-to-tail
    direction; rotation: how far the part is turned from the reference); `centre`: the point (x, y,
    decoded pixels) put at the frame's centre; `size`: the decoded (H, W); `residual`: how far the
    registered part is from the method's reference (1 - correlation; principal_axis: the width
    profile's relative misfit), None when not measured;
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
    residual: float | None = None

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
                "residual": r(self.residual), "matrix": [[float(v) for v in row] for row in self.matrix]}


@dataclass
class Pose:
    """A method's answer for one image: `A` (3x3) maps decoded pixels into the registered frame at
    the decoded size (register() then resizes to the model); `border`: what fills the frame where
    the image does not reach ("background": the lit background gray; "replicate": the edge pixels,
    for parts that fill the picture)."""
    A: np.ndarray
    angle: float = 0.0
    centre: tuple[float, float] = (0.0, 0.0)
    flip: bool = False
    residual: float | None = None
    border: str = "background"


@dataclass
class Failure:
    """A method could not register this image: one of STATUSES and why."""
    status: str
    reason: str
    residual: float | None = None


def require(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise ValueError(f"registration {key}: {value!r} is not {what}")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def widen(v: np.ndarray) -> tuple[float, float]:
    """The observed range with FIT_MARGIN on each side."""
    return float(v.min() / (1 + FIT_MARGIN)), float(v.max() * (1 + FIT_MARGIN))


def range_problem(checks: list[tuple[str, float | None, tuple[float, float] | None]]) -> str | None:
    """The first measurement outside its fitted range, said as a reason; None when all fit."""
    for name, v, r in checks:
        if r is not None and v is not None and not r[0] <= v <= r[1]:
            return f"{name} {v:.3g} outside the training range [{r[0]:.3g}, {r[1]:.3g}]"
    return None


def encode_picture(picture: np.ndarray) -> str:
    """A gray float picture -> base64 PNG (uint8, rounded): the spec stays one YAML mapping."""
    ok, png = cv2.imencode(".png", np.clip(np.rint(picture), 0, 255).astype(np.uint8))
    if not ok:
        raise ValueError("registration reference: the picture cannot be encoded")
    return base64.b64encode(png.tobytes()).decode("ascii")


@functools.lru_cache(maxsize=16)
def decode_picture(text: str) -> np.ndarray:
    """The inverse of encode_picture (float32 [h, w]); cached: every registered image reads it.
    Callers must not modify the array."""
    try:
        raw = np.frombuffer(base64.b64decode(text, validate=True), np.uint8)
    except (ValueError, TypeError) as e:
        raise ValueError(f"registration reference: not base64 ({e})") from e
    img = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE) if raw.size else None
    if img is None:
        raise ValueError("registration reference: not a PNG picture")
    out = img.astype(np.float32)
    out.flags.writeable = False
    return out


def phase_shift(reference: np.ndarray, moving: np.ndarray) -> tuple[float, float]:
    """(dx, dy): how far `moving`'s content sits from `reference`'s (sub-pixel phase correlation
    under a Hanning window), both float32 [h, w]. OpenCV 4.x's phaseCorrelate multiplies its inputs
    by the window in place, read-only arrays included: the cached reference would fade a little
    more with every image registered, so it gets copies."""
    window = cv2.createHanningWindow(moving.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(np.array(reference, np.float32), np.array(moving, np.float32), window)
    return float(dx), float(dy)


def _decodes(text: str) -> bool:
    try:
        decode_picture(text)
    except ValueError:
        return False
    return True

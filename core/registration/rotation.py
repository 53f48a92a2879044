"""Registration method `rotation`: parts at any in-plane angle that have no dominant axis (nuts,
washers, gears, flanges), turned to the pose of a reference fitted on the training parts.

  centre    the silhouette's centroid, refined by phase correlation once the part is turned.
  angle     the disc of radius spec.radius around the centre is matched against the reference:
            a polar copy's circular cross-correlation with the reference's (one FFT) proposes the
            CANDIDATES best angles of the full turn; each is searched within one polar bin by
            normalized correlation inside the disc on a COARSE-pixel copy, the best one every
            FINE_STEP degrees on a FINE-pixel copy, the peak interpolated (~50 small warps
            instead of a brute-force turn's ~200). Only rotations: a mirrored part ("flip": a nut upside
            down) is never mirrored back, so it stays an anomaly.
  phase     a part with n-fold near-symmetry matches at n angles 360/n apart, nearly equally well;
            which one correlates best is decided by noise (on metal_nut a quarter of the parts
            flipped phase between two OpenCV builds). Of the n, the least turn is taken (searched
            again within half a polar bin of it): every part then keeps the light, which comes from
            one side of the camera, within 180/n degrees of the same side of the registered frame,
            and its nearest good parts are lit alike (metal_nut's template: image AUROC 0.848 ->
            0.902 at 128 px). Fit keeps the best-correlated turn instead where the parts' own
            features tell the n turns apart (a mark on one lobe): the training parts then agree
            with their reference clearly better that way (LEAST_TURN_COST).
  frame     the disc fills FIT_FILL of the frame's shorter side (zoom may exceed 1 for a small
            part on a large ground).
  residual  1 - the correlation of the part's angular structure (polar copy, ring means removed)
            with the reference's at the found angle.
  failures  no_part / several_parts (silhouette), cut_by_border (more border contact than any
            training part, widened), unusual_pose: area outside the fitted range, a part larger
            than the frame, or a residual above spec.residual (RESIDUAL_FACTOR x the training
            maximum within [RESIDUAL_FLOOR, RESIDUAL_CAP]: a mirrored, stained or bent part still
            registers and is scored; something that is not the part does not).
  turns     parts that came in one pose in training (a fixture: every training part within
            FIXED_TURN degrees of the reference) are turned only as far as the training parts were
            (spec.turn_limit: the largest training turn widened by FIT_MARGIN plus TURN_SLACK):
            there a turned part is the defect and stays turned, as `shift` leaves a moved part
            moved. Parts that came at any angle are searched over the full turn.
  fit       the radius, the reference (the mean of the training parts turned onto a first one,
            FIT_ROUNDS times: each round sharper, each round's parts in the phase of the least turn
            for the symmetry its reference shows), the accepted residual, the turn limit (on the
            turns before the phase is chosen: a 4-fold part at any angle never turns more than 45
            degrees after it) and the symmetry order.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from core.registration.silhouette import Silhouette
from core.registration.spec import (FIT_FILL, FIT_MARGIN, MAX_ZOOM, Failure, Pose, RegistrationSpec, decode_picture,
                                    encode_picture, phase_shift, range_problem)

NEEDS_PART = True
COARSE, FINE = 64, 128            # side of the disc copies searched (pixels)
ANGLES, RADII = 180, 32           # the polar copy that proposes candidate angles: 2-degree bins
CANDIDATES = 4                    # polar peaks searched on the disc copies (an n-fold part has n)
FINE_STEP = 0.125
FIT_ROUNDS = 3
RADIUS_MARGIN = 1.05              # the matched disc reaches a little beyond the largest training part
RESIDUAL_FACTOR, RESIDUAL_FLOOR, RESIDUAL_CAP = 2.0, 0.6, 0.9
MAX_SHIFT = 0.03                  # a centre refinement beyond this fraction of the disc is noise: ignored
SYMMETRY_MATCH = 0.8              # correlation of the reference with itself turned 360/n: n-fold symmetric
FIXED_TURN = 30.0                 # training parts all within this many degrees of the reference: one pose
TURN_SLACK = 2.0                  # degrees added to a fixed pose's limit: the search's own noise
LEAST_TURN_COST = 1.25            # the least turn is kept while the training parts' median residual stays
                                  # within this factor of the best-correlated turn's (metal_nut 0.98, lobes
                                  # that differ only by noise ~1.01, one marked lobe 8)


def _disc(side: int) -> np.ndarray:
    r = (side - 1) / 2
    yy, xx = np.mgrid[:side, :side]
    return (((xx - r) ** 2 + (yy - r) ** 2) <= r * r).astype(np.float32)


_MASKS = {side: _disc(side) for side in (COARSE, FINE)}
_THETA = np.deg2rad(np.arange(ANGLES) * 360.0 / ANGLES)[:, None]
_RINGS = ((np.arange(RADII) + 0.5) / RADII)[None, :]


@dataclass
class _Part:
    """One image's part in its gray work copy: where the disc is, and the background gray that
    fills what lies beyond the picture (a part near the border must not drag edge streaks in)."""
    work: np.ndarray
    centre: np.ndarray
    radius: float
    fill: float

    @classmethod
    def of(cls, sil: Silhouette, radius: float, long_side: int) -> _Part:
        return cls(sil.work, sil.to_work(sil.centroid), radius * long_side * sil.scale[0], float(sil.background.mean()))

    def turned(self, angle: float, side: int, centre: np.ndarray | None = None) -> np.ndarray:
        """side x side copy of the disc turned by `angle` degrees counter-clockwise as displayed."""
        c = self.centre if centre is None else centre
        M = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), float(angle), side / (2 * self.radius))
        M[:, 2] += np.array([(side - 1) / 2, (side - 1) / 2]) - c
        return cv2.warpAffine(self.work, M, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=self.fill)

    def correlations(self, angles: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Normalized correlation inside the disc of the part turned by each angle with `reference`
        (zero-mean inside the disc, unit norm, 0 outside: sum(crop * reference) needs no mask)."""
        side = reference.shape[0]
        flat = np.stack([self.turned(a, side).ravel() for a in angles])
        mask = _MASKS[side].ravel()
        n = float(mask.sum())
        mean = flat @ mask / n
        var = (flat * flat) @ mask - n * mean * mean
        return (flat @ reference.ravel()) / np.sqrt(np.maximum(var, 1e-6))

    def polar(self) -> np.ndarray:
        return _polar(self.work, self.centre, self.radius, self.fill)


def _zero_mean(picture: np.ndarray) -> np.ndarray:
    """The disc's pixels zero-mean and unit-norm, 0 outside the disc."""
    mask = _MASKS[picture.shape[0]]
    v = (picture - (picture * mask).sum() / mask.sum()) * mask
    return (v / max(float(np.linalg.norm(v)), 1e-6)).astype(np.float32)


def _polar(picture: np.ndarray, centre: np.ndarray, radius: float, fill: float, turn: float = 0.0) -> np.ndarray:
    """[ANGLES, RADII] polar resampling of the disc, each ring zero-mean (its average says nothing
    about the angle) and weighted by sqrt(radius) (a ring's share of the disc's area). Angles run
    clockwise as displayed, from `turn` degrees. (cv2.warpPolar leaves samples outside a float
    picture undefined.)"""
    theta = _THETA + math.radians(turn)
    x = (centre[0] + radius * _RINGS * np.cos(theta)).astype(np.float32)
    y = (centre[1] + radius * _RINGS * np.sin(theta)).astype(np.float32)
    p = cv2.remap(picture, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    p = p - p.mean(axis=0)
    return p * np.sqrt(_RINGS)


@functools.lru_cache(maxsize=16)
def _references(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fine, coarse, polar, conjugate polar spectrum) of a fitted reference; cached: every
    registered image uses them."""
    fine = decode_picture(text)
    coarse = cv2.resize(fine, (COARSE, COARSE), interpolation=cv2.INTER_AREA)
    c = (FINE - 1) / 2
    polar = _polar(fine, np.array([c, c]), FINE / 2, float(np.median(fine)))
    return _zero_mean(fine), _zero_mean(coarse), polar, np.conj(np.fft.rfft(polar, axis=0))


def _peak(scores: np.ndarray, i: int) -> float:
    """Sub-step offset of a parabola through scores[i - 1 .. i + 1] (0 at an end)."""
    if 0 < i < len(scores) - 1:
        a, b, c = scores[i - 1], scores[i], scores[i + 1]
        den = a - 2 * b + c
        if den < 0:
            return float(0.5 * (a - c) / den)
    return 0.0


def _turn(angle: np.ndarray | float) -> np.ndarray:
    """Angles in degrees wrapped to [-180, 180)."""
    return (np.asarray(angle, dtype=np.float64) + 180.0) % 360.0 - 180.0


def _within(angles: np.ndarray, limit: float | None) -> np.ndarray:
    return angles if limit is None else angles[np.abs(_turn(angles)) <= limit + 1e-9]


def _candidates(part: _Part, spectrum: np.ndarray, limit: float | None = None) -> list[float]:
    """The CANDIDATES best angles of the polar cross-correlation over the full turn (within
    `limit` degrees of the reference pose when given), at least 3 bins apart: a turn of the
    picture by a shifts its polar rows by a (the polar angles run clockwise as displayed, cv2's
    turns counter-clockwise)."""
    c = np.fft.irfft(np.fft.rfft(part.polar(), axis=0) * spectrum, n=ANGLES, axis=0).sum(axis=1)
    bins = np.arange(ANGLES) * 360.0 / ANGLES
    if limit is not None:     # bin 0 (the reference pose) is always allowed
        c = np.where(np.abs(_turn(bins)) <= limit + 1e-9, c, -np.inf)
    found: list[int] = []
    for i in np.argsort(-c):
        if len(found) == CANDIDATES or not np.isfinite(c[i]):
            break
        if all(min(abs(i - j), ANGLES - abs(i - j)) >= 3 for j in found):
            found.append(int(i))
    return [float(bins[i]) for i in found]


def search(part: _Part, reference: str, limit: float | None = None, symmetry: int = 1) -> tuple[float, float]:
    """(angle that turns the part onto the reference, correlation there): the polar candidates,
    each searched within one polar bin on a COARSE copy, the best refined on a FINE one; with a
    `limit`, only angles within that many degrees of the reference pose; with a `symmetry` n > 1
    (and no limit), the least of the n equivalent turns (module docstring, "phase")."""
    fine_ref, coarse_ref, _, spectrum = _references(reference)
    step = 360.0 / ANGLES
    best = (-2.0, 0.0)
    for a0 in _candidates(part, spectrum, limit):
        around = _within(a0 + np.arange(-step, step + 1e-9, step / 4), limit)
        scores = part.correlations(around, coarse_ref)
        i = int(np.argmax(scores))
        if scores[i] > best[0]:
            best = (float(scores[i]), float(around[i]))
    fine = _within(best[1] + np.arange(-step / 4, step / 4 + 1e-9, FINE_STEP), limit)
    scores = part.correlations(fine, fine_ref)
    j = int(np.argmax(scores))
    angle = float(fine[j] + _peak(scores, j) * FINE_STEP)
    if limit is not None:
        angle = float(np.clip(_turn(angle), -limit, limit))
    at = float(part.correlations(np.array([angle]), fine_ref)[0])
    found = (angle, at) if at >= scores[j] else (float(fine[j]), float(scores[j]))
    return found if symmetry < 2 or limit is not None else _least_turn(part, fine_ref, found[0], symmetry)


def _least_turn(part: _Part, fine_ref: np.ndarray, angle: float, symmetry: int) -> tuple[float, float]:
    """The turn among angle + k 360/symmetry nearest 0, searched again within half a polar bin."""
    period = 360.0 / symmetry
    a = float(_turn(angle))
    least = a - period * round(a / period)
    half = 180.0 / ANGLES
    around = least + np.arange(-half, half + 1e-9, FINE_STEP)
    scores = part.correlations(around, fine_ref)
    j = int(np.argmax(scores))
    return float(around[j] + _peak(scores, j) * FINE_STEP), float(scores[j])


def residual(part: _Part, angle: float, reference: str) -> float:
    """1 - the correlation of the part's angular structure (its polar copy, each ring's mean
    removed) with the reference's once turned by `angle`: a round blob of the part's size
    correlates well with any round part on the whole disc, but not ring by ring."""
    p = _polar(part.work, part.centre, part.radius, part.fill, angle)
    q = _references(reference)[2]
    return float(1.0 - (p * q).sum() / max(math.sqrt(float((p * p).sum() * (q * q).sum())), 1e-6))


def _refine(part: _Part, angle: float, reference: str) -> np.ndarray:
    """The centre moved so that the turned disc lines up with the reference (phase correlation,
    sub-pixel), work-copy pixels; unchanged when the peak lies implausibly far (a centroid is
    off by a few pixels at most)."""
    dx, dy = phase_shift(decode_picture(reference), part.turned(angle, FINE))
    if math.hypot(dx, dy) > MAX_SHIFT * FINE:
        return part.centre
    # the crop's content sits (dx, dy) from the reference's: the centre lies that far the other
    # way, a crop pixel being 2 * radius / FINE work pixels turned by -angle
    t = math.radians(angle)
    back = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) @ np.array([dx, dy])
    return part.centre + back * (2 * part.radius / FINE)


def pose(image: np.ndarray, sil: Silhouette, spec: RegistrationSpec) -> Pose | Failure:
    if spec.reference is None or spec.radius is None:
        raise ValueError("registration reference: unset; fit the spec on training images (method rotation)")
    H, W = image.shape[:2]
    if sil.contact > spec.border_contact:
        return Failure("cut_by_border", f"the part runs along the image border for {sil.contact:.2f} of its width "
                                        f"(accepted {spec.border_contact:.2f})")
    problem = range_problem([("area", sil.area, spec.area)])
    if problem:
        return Failure("unusual_pose", problem)
    part = _Part.of(sil, spec.radius, max(H, W))
    angle, _ = search(part, spec.reference, spec.turn_limit, spec.symmetry if spec.least_turn else 1)
    part.centre = _refine(part, angle, spec.reference)
    misfit = residual(part, angle, spec.reference)
    if spec.residual is not None and misfit > spec.residual:
        if spec.turn_limit is not None:     # say whether it is the part or its turn that is unlike training
            free, _ = search(part, spec.reference)
            if residual(part, free, spec.reference) <= spec.residual:
                return Failure("unusual_pose", f"the part is turned {abs(float(_turn(free))):.0f} degrees from the "
                                               f"training pose (training parts: within {spec.turn_limit:g})", misfit)
        return Failure("unusual_pose", f"the part matches the reference at no angle (residual {misfit:.3f} > "
                                       f"{spec.residual:.3f})", misfit)
    centre = (part.centre + 0.5) / np.asarray(sil.scale) - 0.5
    z = spec.zoom
    if sil.radius * z > 0.5 * min(H, W):
        return Failure("unusual_pose", "the part does not fit the model frame (larger than the training parts)",
                       misfit)
    t = math.radians(angle)
    R = z * np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    A = np.eye(3)
    A[:2, :2] = R
    A[:2, 2] = np.array([(W - 1) / 2, (H - 1) / 2]) - R @ centre
    # the part is turned by -angle from the reference (the warp turns it back by +angle); in (-180, 180]
    turn = 180.0 - (180.0 + angle) % 360.0
    return Pose(A, turn + 0.0, (float(centre[0]), float(centre[1])), False, misfit)


def _reference(parts: list[_Part], least_turn: bool) -> tuple[np.ndarray, list[_Part]]:
    """FIT_ROUNDS of turning the parts onto the reference and averaging them, from the first
    part's pose; with `least_turn` each round takes the least of the turns its reference's symmetry
    allows. Returns the reference and the parts with their refined centres (copies)."""
    parts = [replace(p) for p in parts]
    reference = parts[0].turned(0.0, FINE)
    for _ in range(FIT_ROUNDS):
        text = encode_picture(reference)
        n = symmetry(reference) if least_turn else 1
        found = [search(p, text, symmetry=n) for p in parts]
        for p, (a, _) in zip(parts, found):
            p.centre = _refine(p, a, text)
        reference = np.mean([p.turned(a, FINE) for p, (a, _) in zip(parts, found)], axis=0)
    return reference, parts


def fit(spec: RegistrationSpec, images: list[np.ndarray], sils: list[Silhouette]) -> RegistrationSpec:
    radius = RADIUS_MARGIN * max(s.radius / max(img.shape[:2]) for s, img in zip(sils, images))
    parts = [_Part.of(s, radius, max(img.shape[:2])) for s, img in zip(sils, images)]
    fits = []
    for least in (False, True):     # the phase rule (module docstring, "phase")
        reference, fitted = _reference(parts, least)
        text, n = encode_picture(reference), symmetry(reference)
        # the turns against the reference that ships (sharper than the last round's): before the
        # phase is chosen for the turn limit, as registration will turn them for the accepted residual
        turns = [search(p, text)[0] for p in fitted]
        largest = float(np.abs(_turn(turns)).max())
        limit = round(largest * (1 + FIT_MARGIN) + TURN_SLACK, 2) if largest <= FIXED_TURN else None
        if limit is not None:
            turns = [search(p, text, limit)[0] for p in fitted]
        elif least and n >= 2:
            turns = [_least_turn(p, _references(text)[0], a, n)[0] for p, a in zip(fitted, turns)]
        misfits = [residual(p, a, text) for p, a in zip(fitted, turns)]
        fits.append((float(np.median(misfits)), max(misfits), text, n, least, limit))
        if n < 2 or limit is not None:      # nothing for the phase rule to choose
            break
    # the least turn unless the part's own features tell its turns apart (a mark on one lobe):
    # then the best-correlated turn fits the training parts clearly better
    chosen = fits[-1] if fits[-1][0] <= LEAST_TURN_COST * fits[0][0] else fits[0]
    _, worst, text, n, least, limit = chosen
    zoom = min(MAX_ZOOM, FIT_FILL * min(min(img.shape[:2]) for img in images)
               / (2 * radius * max(max(img.shape[:2]) for img in images)))
    return replace(spec, reference=text, residual=round(min(max(RESIDUAL_FACTOR * worst, RESIDUAL_FLOOR), RESIDUAL_CAP), 4),
                   radius=round(radius, 5), zoom=round(float(max(0.1, zoom)), 4), symmetry=n, least_turn=least,
                   turn_limit=limit)


def symmetry(picture: np.ndarray) -> int:
    """The largest n in 2..8 whose turn by 360/n leaves the disc's picture correlated above
    SYMMETRY_MATCH with itself (1: none)."""
    side = picture.shape[0]
    c = (side - 1) / 2
    base = _zero_mean(picture)
    found = 1
    for n in range(2, 9):
        turned = cv2.warpAffine(picture, cv2.getRotationMatrix2D((c, c), 360.0 / n, 1.0), (side, side),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if float((_zero_mean(turned) * base).sum()) >= SYMMETRY_MATCH:
            found = n
    return found

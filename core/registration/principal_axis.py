"""Registration method `principal_axis`: elongated parts (screws, pins, bolts) turned so that their
principal axis is horizontal with the wider end (the head) on the left.

  pose      axis from the second moments; the head is the end quarter holding more pixels
            (head_ratio = wider / narrower). flip: the head lies where the axis, taken at an angle
            in (-90, 90], points, so the turn has 180 degrees more (never a mirror image: a
            right-hand thread would turn left). Across the axis the centroid is centred; along it,
            the width profile (head first) is matched by least squares to the training mean from
            fit, so head, neck and thread land where training had them even with a damaged tip or
            a head cut by the border (without a profile, the extent's midpoint is centred; the
            heavy head pulls the centroid off-centre, and a long part's tip would leave the frame).
  failures  cut_by_border: the part lies along the border for more than spec.border_contact x its
            mean width (MVTec screws often lie with the head's face on the border: fit learns how
            far). unusual_pose: no dominant axis (elongation < MIN_ELONGATION), area / elongation /
            end ratio outside the fitted ranges, or a part that would leave the model frame.
  residual  the width profile's relative misfit to the training mean at the matched position.
  fit       the ranges, the mean profile and the zoom that keeps the longest part in the frame;
            parts without a dominant axis fall back to method none (use `rotation` for them), ends
            too alike to tell give an axis-only alignment (modulo 180 degrees).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np

from core.registration.silhouette import Silhouette
from core.registration.spec import FIT_FILL, Failure, Pose, RegistrationSpec, range_problem, widen

NEEDS_PART = True
MIN_ELONGATION = 1.2     # sqrt(eigenvalue ratio) below which the axis angle is noise
# fit(): parts rounder than FIT_ELONGATION have no axis worth aligning; a head side decided by
# ends closer than HEAD_DECISIVE on more than HEAD_AMBIGUOUS of the images is a coin toss.
FIT_ELONGATION = 1.5
HEAD_DECISIVE = 1.15
HEAD_AMBIGUOUS = 0.05
FIT_ROUNDS = 3           # fit(): align the profiles to their mean, re-average, this many times


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


def _misfit(t: np.ndarray, ref: np.ndarray, lag: float) -> float:
    """|t - ref| / |ref| with t placed at `lag` (whole bins): how unlike the training parts the
    silhouette is once aligned."""
    at = int(round(lag))
    o = max(0, -at)                     # both zero-padded onto one axis starting at index 0
    n = o + max(len(ref), at + len(t))
    a, b = np.zeros(n), np.zeros(n)
    a[o + at:o + at + len(t)] = t
    b[o:o + len(ref)] = ref
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _axis(sil: Silhouette, spec: RegistrationSpec) -> tuple[bool, np.ndarray, np.ndarray, float, float, float | None]:
    """(flip, start point, unit head-to-tail direction, distance from start to the point that goes
    to the frame's centre, largest distance along the axis from that point, profile misfit),
    decoded pixels."""
    flip = spec.head_side and not sil.head_first
    d = -sil.u if flip else sil.u
    start = sil.centroid + (sil.span[1] if flip else sil.span[0]) * sil.u
    length = sil.span[1] - sil.span[0]
    misfit = None
    if spec.profile is None or not spec.head_side:   # the profile is head first: needs the head side
        r = 0.5 * length
    else:
        ref = np.asarray(spec.profile)
        lag = _lag(sil.profile, ref)
        r = (spec.profile_centre - lag) * sil.bin
        misfit = _misfit(sil.profile, ref, lag)
    return flip, start, d, r, max(abs(r), abs(length - r)), misfit


def pose(image: np.ndarray, sil: Silhouette, spec: RegistrationSpec) -> Pose | Failure:
    H, W = image.shape[:2]
    flip, start, d, r, along, misfit = _axis(sil, spec)
    if sil.contact > spec.border_contact:
        return Failure("cut_by_border", f"the part runs along the image border for {sil.contact:.2f} of its width "
                                        f"(accepted {spec.border_contact:.2f})")
    if sil.elongation < MIN_ELONGATION:
        return Failure("unusual_pose", f"no dominant axis (elongation {sil.elongation:.2f} < {MIN_ELONGATION})")
    checks = [("area", sil.area, spec.area), ("elongation", sil.elongation, spec.elongation)]
    if spec.head_side:
        checks.append(("head ratio", sil.head_ratio, spec.head_ratio))
    problem = range_problem(checks)
    if problem:
        return Failure("unusual_pose", problem, misfit)
    if 2 * along * spec.zoom > W or 2 * sil.reach * spec.zoom > H:
        return Failure("unusual_pose", "the part does not fit the model frame once turned (longer than the training "
                                       "parts)", misfit)
    angle = math.degrees(math.atan2(-d[1], d[0])) + 0.0      # + 0.0: no "-0.0" in reports
    cx, cy = start + r * d
    z = spec.zoom
    # turn the head-to-tail direction d = (cos a, -sin a) onto +x, the part's centre onto the frame's
    A = np.array([[z * d[0], z * d[1], 0.0], [-z * d[1], z * d[0], 0.0], [0, 0, 1.0]])
    A[:2, 2] = np.array([(W - 1) / 2, (H - 1) / 2]) - A[:2, :2] @ np.array([cx, cy])
    return Pose(A, angle, (float(cx), float(cy)), flip, misfit)


def fit(spec: RegistrationSpec, images: list[np.ndarray], sils: list[Silhouette]) -> RegistrationSpec:
    elong = np.array([s.elongation for s in sils])
    ratio = np.array([s.head_ratio for s in sils])
    out = replace(spec, head_ratio=widen(ratio))
    if float(np.median(elong)) < FIT_ELONGATION:
        warnings.warn(f"registration fit: the parts have no dominant axis (median elongation "
                      f"{np.median(elong):.2f} < {FIT_ELONGATION}); registration falls back to method 'none' "
                      "(method 'rotation' turns round parts)", stacklevel=3)
        return replace(out, method="none", head_ratio=None, profile=None, profile_centre=None)
    ambiguous = float((ratio < HEAD_DECISIVE).mean())
    if ambiguous > HEAD_AMBIGUOUS and spec.head_side:
        warnings.warn(f"registration fit: the two ends are nearly equal (ratio < {HEAD_DECISIVE}) on {ambiguous:.0%} "
                      f"of the training parts; the head side is not decided (axis aligned modulo 180 degrees)",
                      stacklevel=3)
    if ambiguous > HEAD_AMBIGUOUS or not spec.head_side:
        out = replace(out, head_side=False, head_ratio=None, profile=None, profile_centre=None)
    else:
        out = _fit_profile(out, sils)
    fill = 0.0
    for sil, img in zip(sils, images):
        along = _axis(sil, out)[4]
        fill = max(fill, 2 * along / img.shape[1], 2 * sil.reach / img.shape[0])
    return replace(out, zoom=round(float(min(1.0, FIT_FILL / fill)), 4))


def _fit_profile(spec: RegistrationSpec, sils: list[Silhouette]) -> RegistrationSpec:
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

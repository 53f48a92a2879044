"""Registration: each part brought to one pose, and lit to one background gray, before the model,
by a method chosen per part. The methods are plug-ins (METHODS, name -> module); the spec that a
config asks for and fit() fills in travels in the checkpoint and the sidecar:

    spec = fit(training_images, RegistrationSpec("rotation", "background"))
    model_input, reg = register(image, spec, height, width)     # uint8 [height, width, C]
    if not reg.ok: ...                                          # reg.status, reg.reason
    full = warp_back(model_size_map, reg, *image.shape[:2])     # the map in the image's frame

| method         | for                                              | finds                                   |
|----------------|--------------------------------------------------|-----------------------------------------|
| none           | parts the camera always sees alike                | nothing (the plain resize)              |
| principal_axis | elongated parts at any angle (screws, pins)       | axis angle, head side, position         |
| rotation       | round or n-fold symmetric parts at any angle      | in-plane angle (never a mirror), centre |
| shift          | parts in a fixture: turned or moved IS the defect | a translation up to the training jitter |

Every method first measures the silhouette (core.registration.silhouette: lighting and failures
need it), then returns a Pose (a matrix into the registered frame, its residual) or a Failure
(status and reason). register() applies one warp: resize_to_model (INTER_AREA), then one bilinear
warpAffine at model size, borders filled as the method says. Lighting "background": one gain
brings the background's median to spec.background. A failure returns what method "none" gives
(the plain resize, lit) with its status: callers decide (the runtime reports the image as failed,
calibration counts it as rejected).

Registration.matrix maps decoded pixel (x, y) to model-input pixel, resize included (pixel centres
as cv2.resize places them), so a model-size map goes back in one warp. A method module has NEEDS_PART
(whether a silhouette failure fails it), pose(image, silhouette, spec) and fit(spec, images,
silhouettes). Torch-free.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import replace
from types import ModuleType

import cv2
import numpy as np

from core.images import resize_to_model
from core.registration import principal_axis, rotation, shift
from core.registration.silhouette import Silhouette, check_image, measure
from core.registration.spec import (BORDER_CONTACT, FIT_MARGIN, LIGHTINGS, STATUSES, Failure, Pose, Registration,
                                    RegistrationSpec, widen)

METHODS: dict[str, ModuleType | None] = {"none": None, "principal_axis": principal_axis, "rotation": rotation,
                                         "shift": shift}
REGISTRATIONS = tuple(METHODS)

__all__ = ["LIGHTINGS", "METHODS", "REGISTRATIONS", "STATUSES", "Registration", "RegistrationSpec", "fit", "register",
           "warp_back"]


def _scale(H: int, W: int, height: int, width: int) -> np.ndarray:
    """3x3: decoded pixel -> model pixel as cv2.resize maps pixel centres."""
    sx, sy = width / W, height / H
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def register(image: np.ndarray, spec: RegistrationSpec, height: int, width: int) -> tuple[np.ndarray, Registration]:
    """A decoded uint8 [H, W, C] image -> (model input uint8 [height, width, C], Registration).

    Method and lighting "none" give exactly core.images.resize_to_model. A failure returns the
    array method "none" would give (lit as the spec says) and the failure status: callers decide.
    """
    check_image(image)
    H, W = image.shape[:2]
    S = _scale(H, W, height, width)
    plain = resize_to_model(image, height, width)
    if not spec.active:
        return plain, Registration("off", S[:2].copy(), (H, W))
    if spec.lighting == "background" and spec.background is None:
        raise ValueError("registration background: unset; fit the spec on training images or set a gray level")
    sil = measure(image)
    gain = 1.0
    if spec.lighting == "background":
        gain = float(spec.background / max(float(sil.background.mean()), 1.0))
        plain = cv2.convertScaleAbs(plain, alpha=gain).reshape(plain.shape)
    measured = {"area": sil.area, "elongation": sil.elongation, "head_ratio": sil.head_ratio}
    method = METHODS[spec.method]
    if method is None:
        return plain, Registration("off", S[:2].copy(), (H, W), gain=gain, **measured)
    if method.NEEDS_PART and sil.status != "ok":
        found: Pose | Failure = Failure(sil.status, sil.reason or sil.status)
    else:
        found = method.pose(image, sil, spec)
    if isinstance(found, Failure):
        return plain, Registration(found.status, S[:2].copy(), (H, W), found.reason, gain=gain,
                                   residual=found.residual, **measured)
    M = S @ found.A
    if found.border == "replicate":
        border = {"borderMode": cv2.BORDER_REPLICATE}
    else:
        fill = tuple(float(v) for v in np.clip(sil.background * gain, 0, 255)) + (0.0,) * (4 - len(sil.background))
        border = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": fill}
    out = cv2.warpAffine(plain, (M @ np.linalg.inv(S))[:2], (width, height), flags=cv2.INTER_LINEAR,
                         **border).reshape(plain.shape)
    return out, Registration("ok", M[:2], (H, W), None, found.angle, found.centre, found.flip, gain,
                             residual=found.residual, **measured)


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
    """Measure the training parts and return `spec` with what its method needs (pose statistics,
    reference, zoom) and the lighting's background target filled in. Methods that need a part
    use the images where one was found (the others are left out with a warning) and raise
    ValueError when none shows one; principal_axis falls back to method "none" with a warning for
    parts without a dominant axis."""
    method = METHODS[spec.method]
    needs_part = method is not None and method.NEEDS_PART
    kept: list[tuple[np.ndarray, Silhouette]] = []
    failed: dict[str, int] = {}
    for img in images:
        sil = measure(img)
        if sil.status == "ok" or not needs_part:
            kept.append((img, sil))
        if sil.status != "ok":
            failed[sil.status] = failed.get(sil.status, 0) + 1
    parts = [s for _, s in kept if s.status == "ok"]
    if not kept or (needs_part and not parts):
        raise ValueError(f"registration fit: no training image shows a usable part ({failed or 'no images'})")
    if failed and needs_part:
        warnings.warn(f"registration fit: {sum(failed.values())} of {sum(failed.values()) + len(kept)} training "
                      f"images left out ({', '.join(f'{v} {k}' for k, v in sorted(failed.items()))})", stacklevel=2)
    out = replace(spec, samples=len(kept),
                  background=round(float(np.median([s.background.mean() for _, s in kept])), 2))
    if parts:
        contact = max(BORDER_CONTACT, float(max(s.contact for s in parts)) * (1 + FIT_MARGIN))
        out = replace(out, border_contact=round(contact, 4), area=widen(np.array([s.area for s in parts])),
                      elongation=widen(np.array([s.elongation for s in parts])))
    if method is None:
        return out
    return method.fit(out, [img for img, _ in kept], [s for _, s in kept])

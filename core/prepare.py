"""The host half of preprocessing, once: a decoded image -> the model's input, and the model's maps
-> back onto the image. Training, evaluation, export.check, calibration, batch inspection and the
camera all prepare pixels here, so a file gives the same model input everywhere.

    spec = InputSpec(128, 128, 1, registration=RegistrationSpec.from_mapping(sidecar["registration"]))
    p = prepare(read_image(path, spec.channels), spec)     # or load(path, spec), from_frame for cameras
    if not p.ok: ...                                       # registration failed: p.registration.reason
    outputs = model(p.input[None])                         # uint8 [1, H, W, C]
    full = p.to_image(outputs["anomaly_map"][0])           # the map on the decoded image's pixels

Steps: colour conversion (core.images) -> registration and lighting (core.registration: one
turn + shift of the part into a fixed pose, off unless the model was trained with it) -> the
model's size. Everything numeric after that happens inside the model (training.preprocess).
Torch-free: the edge runtime imports it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.images import DEFAULT_MAX_PIXELS, decode, from_frame
from core.registration import Registration, RegistrationSpec, register, warp_back


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: uint8 [height, width, channels] (gray or RGB), after `registration`."""
    height: int
    width: int
    channels: int
    color: str = ""
    registration: RegistrationSpec = field(default_factory=RegistrationSpec)

    @classmethod
    def from_mapping(cls, m: dict[str, Any], registration: dict[str, Any] | None = None,
                     source: str = "input") -> "InputSpec":
        """From a sidecar's `input` (and `registration`) section; ValueError naming `source`."""
        try:
            size = m.get("size")
            h, w = int(m.get("height", size)), int(m.get("width", size))
            c = int(m["channels"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: input spec needs height, width and channels, got {m}") from e
        if c not in (1, 3) or h < 1 or w < 1:
            raise ValueError(f"{source}: unsupported input spec {m}")
        try:
            reg = RegistrationSpec.from_mapping(registration)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from e
        return cls(h, w, c, str(m.get("color") or ("gray" if c == 1 else "rgb")), reg)


@dataclass
class Prepared:
    """One image ready for the model, and how to map the model's maps back onto it."""
    input: np.ndarray                  # uint8 [height, width, C]: the model's input
    registration: Registration         # status "off" when the model uses none
    size: tuple[int, int]              # the decoded image's (height, width): where maps go back to
    original: tuple[int, int]          # the source's (height, width) (a huge file is decoded reduced)
    scale: float = 1.0                 # source pixels per decoded pixel
    image: np.ndarray | None = None    # the decoded pixels (gray/RGB), kept for pictures

    @property
    def ok(self) -> bool:
        """False when registration failed: the model's maps would not mean anything."""
        return self.registration.ok

    def to_image(self, m: np.ndarray, nearest: bool = False) -> np.ndarray:
        """A model-size map ([h, w] or [1, h, w]) -> float32 [H, W] on the decoded image: the inverse
        of the registration and the resize (bilinear, as the graph upsamples; nearest for masks)."""
        return warp_back(m, self.registration, *self.size, nearest=nearest)


def prepare(image: np.ndarray, spec: InputSpec, original: tuple[int, int] | None = None, scale: float = 1.0,
            keep_image: bool = True) -> Prepared:
    """A decoded uint8 [H, W, spec.channels] image -> Prepared. `original`/`scale`: the source's
    size when the image was decoded reduced. ValueError for an image of the wrong layout."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != spec.channels:
        raise ValueError(f"prepare: expected uint8 [H, W, {spec.channels}], got {image.dtype} {list(image.shape)}")
    x, reg = register(image, spec.registration, spec.height, spec.width)
    size = (int(image.shape[0]), int(image.shape[1]))
    return Prepared(x, reg, size, original or size, scale, image if keep_image else None)


def load(path: str | Path, spec: InputSpec, max_pixels: int = DEFAULT_MAX_PIXELS,
         keep_image: bool = True) -> Prepared:
    """A file -> Prepared (core.images.decode: huge files decoded reduced). Raises ImageError
    naming the file."""
    d = decode(Path(path), spec.channels, max_pixels)
    return prepare(d.image, spec, d.original, d.scale, keep_image)


def prepare_frame(frame: np.ndarray, spec: InputSpec, bgr: bool = True, keep_image: bool = True) -> Prepared:
    """A camera frame (OpenCV's BGR when `bgr`) or an RGB/gray array -> Prepared."""
    return prepare(from_frame(frame, spec.channels, bgr), spec, keep_image=keep_image)

"""Plain folders of images (a factory engineer's folder of good parts), and the shared reader."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from core.images import IMAGE_EXTENSIONS, ImageError, decode_file, is_image_name, read_image, resize_to_model, to_uint8_channels
from core.prepare import InputSpec, prepare
from core.registration import Registration, RegistrationSpec, fit
from training.data.split import Split


class Read(NamedTuple):
    """read_many's result: model inputs, masks (None unless asked for), the indices of `paths`
    kept, the skipped (file, reason) pairs, each kept image's Registration (None when the spec is
    off) and the spec used (fitted when read_many fitted it)."""
    images: np.ndarray
    masks: np.ndarray | None
    kept: list[int]
    skipped: list[tuple[str, str]]
    registrations: list[Registration] | None
    registration: RegistrationSpec


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if is_image_name(p) and p.is_file())


def _readable(paths: list[Path], channels: int) -> Iterator[np.ndarray]:
    """Each decodable file, decoded (the unreadable ones are the main pass's to report)."""
    for p in paths:
        try:
            yield read_image(p, channels)
        except (ImageError, OSError):
            continue


def read_many(paths: list[Path], size: int, channels: int, strict: bool, masks: list[Path | None] | None = None,
              registration: RegistrationSpec | None = None, fit_registration: bool = False) -> Read:
    """Read, check and prepare images (core.prepare: registration, then the model's size) and
    resize their masks (to model size in the image's own frame, where warped-back maps are scored).

    Mixed source sizes or channel counts in one split are an error in strict mode: they usually
    mean a wrong file slipped into the folder, and resizing would hide it. Evaluation skips the
    files that differ from the most common size, so one odd file first in the folder cannot
    cost every other file. An image whose registration fails is skipped with its status, in
    strict mode too (a part lying across the border is a fact of the line, not a broken dataset).
    fit_registration: fit `registration` (a request) on these images first (core.registration.fit,
    which warns and falls back to method none for parts without an axis); the files are decoded
    twice then, so that memory never holds more than one full-size image.
    """
    spec = registration or RegistrationSpec()
    if fit_registration and spec.active:
        spec = fit(_readable(paths, channels), spec)
    ispec = InputSpec(size, size, channels, registration=spec)
    imgs, regs, outs_m, kept, skipped, shapes = [], [], [], [], [], []
    for i, p in enumerate(paths):
        try:
            raw = decode_file(p)
            shape = (raw.shape[0], raw.shape[1], 1 if raw.ndim == 2 else raw.shape[2])
            img = to_uint8_channels(raw, channels, source=str(p))
            if strict and shapes and shape != shapes[0]:
                raise ImageError(f"{p}: size/channels {shape} differ from {paths[kept[0]].name} {shapes[0]}")
            m = None
            if masks is not None:
                mp = masks[i]
                if mp is None:
                    m = np.zeros((size, size), bool)
                elif not mp.exists():
                    raise ImageError(f"{p}: defect image has no mask (expected {mp})")
                else:
                    try:
                        mask = read_image(mp, 1)
                    except ImageError as e:
                        raise ImageError(f"{p}: its mask {e}") from e
                    if mask.shape[:2] != shape[:2]:
                        # a mask of another size is another image's mask: stretching it would score garbage
                        raise ImageError(f"{p}: its mask {mp} is {mask.shape[1]}x{mask.shape[0]}, "
                                         f"the image {shape[1]}x{shape[0]}")
                    m = resize_to_model(mask, size, size)[:, :, 0] > 127
        except (ImageError, OSError) as e:
            if strict:
                raise ImageError(str(e)) from e
            skipped.append((str(p), str(e).removeprefix(f"{p}: ")))
            continue
        prepared = prepare(img, ispec, keep_image=False)
        if not prepared.ok:
            r = prepared.registration
            skipped.append((str(p), f"registration {r.status}" + (f": {r.reason}" if r.reason else "")))
            continue
        imgs.append(prepared.input)
        regs.append(prepared.registration)
        outs_m.append(m)
        kept.append(i)
        shapes.append(shape)
    if shapes:
        common = Counter(shapes).most_common(1)[0][0]
        odd = {j for j, s in enumerate(shapes) if s != common}
        skipped += [(str(paths[kept[j]]), f"size/channels {shapes[j]} differ from the split's {common}") for j in odd]
        imgs, regs, outs_m, kept = ([v for j, v in enumerate(x) if j not in odd] for x in (imgs, regs, outs_m, kept))
    if not imgs:
        raise ImageError(f"no usable images among {len(paths)} files" + (f" (first: {paths[0]})" if paths else "")
                         + (f"; {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    return Read(np.stack(imgs), np.stack(outs_m) if masks is not None else None, kept, skipped,
                regs if spec.active else None, spec)


def load(root: Path, size: int, channels: int, strict: bool, registration: RegistrationSpec | None = None,
         fit_registration: bool = False) -> Split:
    paths = list_images(root)
    if not paths:
        raise ImageError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder")
    r = read_many(paths, size, channels, strict, registration=registration, fit_registration=fit_registration)
    return Split(r.images, np.zeros(len(r.images), int), None, [paths[i].name for i in r.kept], ["good"] * len(r.kept),
                 r.skipped, r.registration, r.registrations)

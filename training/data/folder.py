"""Plain folders of images (a factory engineer's folder of good parts), and the shared reader."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from training.data.split import Split
from core.images import IMAGE_EXTENSIONS, ImageError, decode_file, is_image_name, read_image, resize_to_model, to_uint8_channels


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if is_image_name(p) and p.is_file())


def read_many(paths: list[Path], size: int, channels: int, strict: bool,
              masks: list[Path | None] | None = None) -> tuple[np.ndarray, np.ndarray | None, list[int], list[tuple[str, str]]]:
    """Read, check and resize images (and masks). Returns (images, masks, kept indices, skipped).

    Mixed source sizes or channel counts in one split are an error in strict mode: they usually
    mean a wrong file slipped into the folder, and resizing would hide it. Evaluation skips the
    files that differ from the most common size, so one odd file first in the folder cannot
    cost every other file.
    """
    imgs, outs_m, kept, skipped, shapes = [], [], [], [], []
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
            imgs.append(resize_to_model(img, size, size))
            outs_m.append(m)
            kept.append(i)
            shapes.append(shape)
        except (ImageError, OSError) as e:
            if strict:
                raise ImageError(str(e)) from e
            skipped.append((str(p), str(e).removeprefix(f"{p}: ")))
    if shapes:
        common = Counter(shapes).most_common(1)[0][0]
        odd = {j for j, s in enumerate(shapes) if s != common}
        skipped += [(str(paths[kept[j]]), f"size/channels {shapes[j]} differ from the split's {common}") for j in odd]
        imgs, outs_m, kept = ([v for j, v in enumerate(x) if j not in odd] for x in (imgs, outs_m, kept))
    if not imgs:
        raise ImageError(f"no readable images among {len(paths)} files" + (f" (first: {paths[0]})" if paths else ""))
    arr = np.stack(imgs)
    return arr, (np.stack(outs_m) if masks is not None else None), kept, skipped


def load(root: Path, size: int, channels: int, strict: bool) -> Split:
    paths = list_images(root)
    if not paths:
        raise ImageError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder")
    imgs, _, kept, skipped = read_many(paths, size, channels, strict)
    return Split(imgs, np.zeros(len(imgs), int), None, [paths[i].name for i in kept], ["good"] * len(kept), skipped)

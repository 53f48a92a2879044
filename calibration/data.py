"""Held-out calibration images: which files, which are defective, where their masks are.

Accepted layouts (MVTec AD's, and a plain folder of good parts):

    CATEGORY/                      an MVTec category root: only test/ is used (train/ trained the model)
      test/good/*.png              good parts: negatives only
      test/<defect>/*.png          defective parts
      ground_truth/<defect>/<name>_mask.png
    CATEGORY/test                  the same, given as its test/ folder (masks in ../ground_truth)
    DIR/good, DIR/<defect>, DIR/ground_truth/<defect> (or ../ground_truth)
    DIR/*.png                      nothing but images: all good (the normal-only mode)
    DIR/good, DIR/<defect>         and no ground_truth/ anywhere: image labels only (OK / NG folders,
                                   no pixel masks: the image-labels mode)

    ds = find_dataset("../shared/data/mvtec/screw")
    ds.samples[0].rel, ds.samples[0].defective, ds.samples[0].mask
    ds.fingerprint()               # {path, images, good, defective, sha256}: what the thresholds were chosen on

Where a ground_truth/ folder exists, every defective image needs its mask, and the mask must have
the image's size: both are checked here from the file headers, before any model runs (DataError
naming the file). Without one the defective images are labelled, not masked.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.images import ImageError, is_image_name, probe_size

GOOD = "good"
MASK_SUFFIX = "_mask"


class DataError(ValueError):
    """Calibration data that cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class Sample:
    path: Path
    rel: str                 # relative to the images root, '/'-separated: the report's key
    kind: str                # 'good' or the defect type (its folder name)
    mask: Path | None        # None for good parts

    @property
    def defective(self) -> bool:
        return self.kind != GOOD


@dataclass(frozen=True)
class Dataset:
    given: Path              # the folder as given
    root: Path               # where the image folders are (test/ of a category root)
    masks: Path | None       # the ground_truth folder, if any
    samples: tuple[Sample, ...]

    @property
    def good(self) -> int:
        return sum(not s.defective for s in self.samples)

    @property
    def defective(self) -> int:
        return sum(s.defective for s in self.samples)

    @property
    def masked(self) -> bool:
        """Every defective image has its defect mask (vacuously with none): pixel ground truth."""
        return all(s.mask is not None for s in self.samples if s.defective)

    def fingerprint(self) -> dict[str, Any]:
        """What the thresholds were chosen on: the folder, the counts, and the sha256 of the sorted
        list of (relative path, size in bytes) of every image and mask, so that a data set that
        changed since calibration is noticed without hashing gigabytes. Paths are relative to the
        image and mask folders, so a category root and its test/ folder give the same hash."""
        lines = []
        for s in self.samples:
            lines.append(f"{s.rel}\t{s.path.stat().st_size}\n")
            if s.mask is not None and self.masks is not None:
                rel = Path(os.path.relpath(s.mask, self.masks)).as_posix()
                lines.append(f"ground_truth/{rel}\t{s.mask.stat().st_size}\n")
        digest = hashlib.sha256("".join(sorted(lines)).encode("utf-8", "surrogateescape")).hexdigest()
        return {"path": str(self.given.resolve()), "images": len(self.samples), "good": self.good,
                "defective": self.defective, "sha256": digest}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p.name))


def _mask_of(image: Path, kind: str, masks: Path | None) -> Path | None:
    """The defect mask of a defective image; None when there are no masks at all (labels only)."""
    if masks is None:
        return None
    want = masks / kind / f"{image.stem}{MASK_SUFFIX}.png"
    if want.is_file():
        return want
    others = sorted(p for p in (masks / kind).glob(f"{image.stem}{MASK_SUFFIX}.*") if is_image_name(p.name)) \
        if (masks / kind).is_dir() else []
    if others:
        return others[0]
    raise DataError(f"{want}: missing mask of {image} (each defective image needs "
                    f"ground_truth/<defect>/<name>{MASK_SUFFIX}.png)")


def _check_sizes(sample: Sample) -> None:
    """The mask's header must give the image's size (the masks of another resolution would be
    compared with the wrong pixels)."""
    assert sample.mask is not None
    try:
        a, b = probe_size(sample.path), probe_size(sample.mask)
    except ImageError as e:
        raise DataError(str(e)) from e
    if a is not None and b is not None and a != b:
        raise DataError(f"{sample.mask}: mask is {b[0]}x{b[1]}, its image {sample.path.name} is {a[0]}x{a[1]}")


def find_dataset(path: str | Path) -> Dataset:
    """The calibration samples under `path` (layouts in the module docstring), sorted by relative
    path. Raises DataError for a folder with no images, a defective image without its mask (where
    a ground_truth/ folder exists), a mask of another size, or images both at the top and in
    sub-folders (ambiguous)."""
    given = Path(path)
    if not given.is_dir():
        raise DataError(f"{given}: not a folder")
    root = given / "test" if (given / "test").is_dir() else given
    masks = next((m for m in (given / "ground_truth", root / "ground_truth", root.parent / "ground_truth")
                  if m.is_dir()), None)
    folders = sorted(d for d in root.iterdir() if d.is_dir() and d.name not in ("ground_truth", "train")
                     and _images(d))
    top = _images(root)
    if top and folders:
        raise DataError(f"{root}: images both at the top and in sub-folders ({', '.join(d.name for d in folders)}); "
                        f"put good parts in {root / GOOD} and defective ones in {root}/<defect>")
    samples: list[Sample] = [Sample(p, p.name, GOOD, None) for p in top]
    for d in folders:
        for p in _images(d):
            kind = d.name
            sample = Sample(p, f"{d.name}/{p.name}", kind, None if kind == GOOD else _mask_of(p, kind, masks))
            if sample.mask is not None:
                _check_sizes(sample)
            samples.append(sample)
    if not samples:
        raise DataError(f"{given}: no images (expected good/ and <defect>/ folders, an MVTec category, or images)")
    samples.sort(key=lambda s: s.rel)
    return Dataset(given, root, masks, tuple(samples))

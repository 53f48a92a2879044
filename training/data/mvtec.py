"""MVTec AD layout: train/good, test/<type>/*.png, ground_truth/<type>/<name>_mask.png."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.images import ImageError
from core.registration import RegistrationSpec
from training.data.folder import list_images, read_many
from training.data.split import Split


def load(root: Path, split: str, size: int, channels: int, strict: bool, registration: RegistrationSpec | None = None,
         fit_registration: bool = False) -> Split:
    base = root / split
    if not base.is_dir():
        raise ImageError(f"{base}: missing (MVTec layout needs {split}/good, test/<type>, ground_truth/<type>)")
    paths, labels, kinds, masks = [], [], [], []
    folders = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    ignored = []
    if split == "train":
        # one-class training: only train/good; a stray train/<defect> folder must not be learnt as normal
        ignored = [(str(d), "folder ignored: training reads train/good only") for d in folders if d.name != "good"]
        folders = [d for d in folders if d.name == "good"]
    for kind_dir in folders:
        for p in list_images(kind_dir):
            paths.append(p)
            good = kind_dir.name == "good"
            labels.append(0 if good else 1)
            kinds.append(kind_dir.name)
            masks.append(None if good else root / "ground_truth" / kind_dir.name / f"{p.stem}_mask.png")
    if not paths:
        raise ImageError(f"{base}: no images found")
    want_masks = split == "test" and (root / "ground_truth").is_dir()  # none at all: image labels only
    r = read_many(paths, size, channels, strict, masks if want_masks else None, registration, fit_registration)
    return Split(r.images, np.asarray(labels)[r.kept], r.masks, [f"{kinds[i]}/{paths[i].name}" for i in r.kept],
                 [kinds[i] for i in r.kept], ignored + r.skipped, r.registration, r.registrations)

"""UCSD Ped1/Ped2 frame folders: Train/TrainNNN/*.tif, Test/TestNNN/*.tif, Test/TestNNN_gt/*.bmp."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.images import ImageError
from core.registration import RegistrationSpec
from training.data.folder import list_images, read_many
from training.data.split import Split


def load(root: Path, split: str, size: int, channels: int, strict: bool, sequences: list[str] | None,
         registration: RegistrationSpec | None = None, fit_registration: bool = False) -> Split:
    base = root / split.capitalize()
    if not base.is_dir():
        raise ImageError(f"{base}: missing (UCSD layout needs Train/ and Test/ frame folders)")
    seqs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.endswith("_gt"))
    if sequences:
        missing = sorted(set(sequences) - {d.name for d in seqs})
        if missing:
            raise ImageError(f"{base}: no sequence folder {', '.join(missing)} (data.sequences)")
        seqs = [d for d in seqs if d.name in sequences]
    paths, masks, unlabelled = [], [], []
    labelled = split == "test"  # every test frame needs its mask: none at all is no label, not "normal"
    for d in seqs:
        gt = d.parent / f"{d.name}_gt"
        if labelled and not gt.is_dir():
            # a sequence without masks is unlabelled, not normal: scoring it as normal would
            # count every anomaly in it as a false positive
            unlabelled.append((str(d), f"no ground truth folder {gt.name}"))
            continue
        for p in list_images(d):
            paths.append(p)
            masks.append(gt / f"{p.stem}.bmp" if labelled else None)
    if unlabelled and strict:
        raise ImageError(f"{unlabelled[0][0]}: {unlabelled[0][1]}")
    if not paths:
        raise ImageError(f"{base}: no frames found" + (" in a sequence with a ground-truth folder (<seq>_gt)"
                                                       if unlabelled else ""))
    r = read_many(paths, size, channels, strict, masks if labelled else None, registration, fit_registration)
    m = r.masks
    labels = m.reshape(len(m), -1).any(1).astype(int) if m is not None else np.zeros(len(r.images), int)
    names = [f"{paths[i].parent.name}/{paths[i].name}" for i in r.kept]
    return Split(r.images, labels, m, names, ["anomaly" if y else "good" for y in labels], unlabelled + r.skipped,
                 r.registration, r.registrations)

"""How well a model separates held-out good parts from the same parts with synthetic defects: the
measure the automatic set-up compares settings on when no defective part is labelled.

    python -m calibration.synthetic --engine X.onnx --data GOOD_DIR --out result.json [--seed 0]
        [--copies 1] [--limit N]

Each good image goes through runtime.pipeline as inspection sees it (decode, registration, the
model's size); `copies` synthetic defects (families.discriminative.synth: stains, scratches,
foreign texture, bent pieces, on the part) are pasted on its registered input, and the model runs
on the originals and the copies. Scores: image AUROC (the runtime's image score, the map's max;
good parts against their defective copies), pixel AUROC, best IoU and AUPRO against the synthetic
masks (in the model's frame), and the recall at the threshold where at most 5 % of the good parts
are rejected. An image whose registration fails is left out and counted. A proxy, not a promise:
real defects are what calibration on labelled parts measures.
Exit codes: 0 written, 1 failure while working (model, data), 2 usage.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.data import DataError, find_dataset
from core.cli import int_at_least, require
from core.files import write_json
from core.images import ImageError
from core.metrics import aupro, best_iou, roc_auc
from families.discriminative.synth import defect, part_region
from runtime.backends import BackendError
from runtime.model import ModelError
from runtime.pipeline import Pipeline

FPR = 0.05


def recall_at(labels: np.ndarray, scores: np.ndarray, fpr: float = FPR) -> float:
    """Recall at the lowest threshold that rejects at most `fpr` of the good parts (score > t is NG)."""
    good = np.sort(scores[~labels])
    allowed = int(np.floor(fpr * len(good)))
    t = good[len(good) - allowed - 1]
    return float((scores[labels] > t).mean())


def score(engine: str | Path, data: str | Path, seed: int = 0, copies: int = 1, limit: int | None = None,
          batch: int = 8) -> dict[str, Any]:
    """The measures of the module docstring on the good images of `data`."""
    started = time.perf_counter()
    pipe = Pipeline.open(engine, warmup=0)
    good = [s for s in find_dataset(data).samples if not s.defective][:limit]
    if len(good) < 2:
        raise DataError(f"{data}: synthetic scoring needs at least 2 good images, found {len(good)}")
    inputs, failed = [], []
    for s in good:
        try:
            p = pipe.load(s.path, keep_image=False)
        except ImageError as e:
            raise DataError(str(e)) from e
        (inputs if p.ok else failed).append(p.input if p.ok else s.rel)
    if len(inputs) < 2:
        raise DataError(f"{data}: fewer than 2 good images register ({len(failed)} failed)")
    parts = np.stack(inputs)
    where = part_region(parts)
    rng = np.random.default_rng(seed)
    pasted = [defect(rng, x, parts, where) for _ in range(copies) for x in parts]
    images = np.concatenate([parts, np.stack([x for x, _ in pasted])])
    masks = np.concatenate([np.zeros(parts.shape[:3], bool), np.stack([m > 0 for _, m in pasted])])
    labels = np.r_[np.zeros(len(parts), bool), np.ones(len(pasted), bool)]
    t = time.perf_counter()
    maps = np.concatenate([pipe.model(images[i:i + batch], ("anomaly_map",))["anomaly_map"][:, 0]
                           for i in range(0, len(images), batch)])
    infer_ms = (time.perf_counter() - t) * 1e3 / len(images)
    if not np.isfinite(maps).all():
        raise ValueError(f"{engine}: the model's map is not finite on some image")
    scores = maps.reshape(len(maps), -1).max(axis=1)
    iou, _ = best_iou(masks, maps)
    return {"mode": "synthetic", "engine": str(engine), "data": str(data), "seed": seed, "copies": copies,
            "images": {"good": int(len(parts)), "defective": int(len(pasted)), "failed_registration": len(failed)},
            "auroc": {"image": roc_auc(labels, scores), "pixel": roc_auc(masks, maps)},
            "aupro": aupro(masks, maps), "best_iou": {"iou": iou},
            "recall_at_fpr": {"fpr": FPR, "recall": recall_at(labels, scores)},
            "ms_per_image": infer_ms, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, help="model file or deployment folder")
    p.add_argument("--data", required=True, help="held-out good images (a folder, or an MVTec test/ whose good/ is used)")
    p.add_argument("--out", required=True, help="the result as JSON")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="the synthetic defects' seed (default 0)")
    p.add_argument("--copies", type=int_at_least(1), default=1, help="defective copies per good image (default 1)")
    p.add_argument("--limit", type=int_at_least(2), help="use at most this many good images")
    args = p.parse_args(argv)
    require(p, engine=args.engine, data=args.data)
    try:
        r = score(args.engine, args.data, args.seed, args.copies, args.limit)
        write_json(args.out, r)
    except (DataError, ModelError, BackendError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"synthetic defects on {r['images']['good']} good parts: image AUROC {r['auroc']['image']:.3f}, pixel AUROC "
          f"{r['auroc']['pixel']:.3f}, AUPRO {r['aupro']:.3f}, recall {r['recall_at_fpr']['recall']:.0%} at "
          f"{FPR:.0%} FPR ({r['images']['failed_registration']} failed registration)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

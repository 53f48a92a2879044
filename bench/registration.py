"""Registration + template map benchmark on MVTec AD screw: training-free, torch-free.

    python -m bench.registration [--data ../shared/data/mvtec/screw] [--size 256 128] [--k 5]
        [--out runs/bench/registration]

Fits the registration on train/good (core.registration.fit), registers every image, builds the
template bank from the registered training images (families.template.bank), maps the test half, warps each
map back to the original frame at model resolution and scores it (core.metrics) against the
masks brought to that size (INTER_AREA, > 127). Per size: pixel AUROC, best IoU, AUPRO, image
AUROC (max of the map); registration and plain-resize time per image (one OpenCV thread, the
1024^2 decode given, decode excluded), template map time per image, bank size, the registration
statuses over train and test, and how many head-side decisions look wrong (the registered image
turned 180 degrees matches the training median better than as registered). Prints a table and
writes OUT/registration.json. Exit codes: 0 done, 1 the run failed, 2 bad arguments or data.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.files import write_json
from core.images import ImageError, read_image, resize_to_model
from core.metrics import localization_metrics
from core.registration import Registration, RegistrationSpec, fit, register, warp_back
from families.template.bank import TemplateBank

# The classical baseline of the issue (256 x 256, the shared test half), for comparison.
ISSUE_BASELINE = {"pixel_auroc": 0.949, "best_iou": 0.370, "aupro": 0.888, "image_auroc": 0.959}
METRICS = ("pixel_auroc", "best_iou", "aupro", "image_auroc")


def load(root: Path) -> dict[str, Any]:
    """Decoded gray images: train/good, test/* with masks (zeros for good parts) and labels."""
    train = sorted((root / "train" / "good").glob("*.png"))
    tests = sorted((root / "test").glob("*/*.png"))
    if not train or not tests:
        raise FileNotFoundError(f"{root}: no train/good/*.png or test/*/*.png (an MVTec AD category folder?)")
    masks = []
    for p in tests:
        m = root / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
        if p.parent.name == "good":
            masks.append(None)
        elif not m.is_file():
            raise FileNotFoundError(f"{m}: missing mask of {p}")
        else:
            masks.append(read_image(m, 1)[:, :, 0] > 127)
    return {"train": [read_image(p, 1) for p in train], "train_names": [f"train/good/{p.name}" for p in train],
            "test": [read_image(p, 1) for p in tests], "test_names": [f"test/{p.parent.name}/{p.name}" for p in tests],
            "masks": masks, "labels": np.array([p.parent.name != "good" for p in tests])}


def timed(fn: Any, items: list[Any]) -> tuple[list[Any], np.ndarray]:
    """fn over items, and each call's time in ms."""
    out, ms = [], []
    for x in items:
        t = time.perf_counter()
        out.append(fn(x))
        ms.append((time.perf_counter() - t) * 1e3)
    return out, np.array(ms)


def head_side_suspects(images: np.ndarray, reference: np.ndarray, names: list[str]) -> list[str]:
    """Registered images that match the reference better turned by 180 degrees about the frame's
    centre (where the part's middle is): their head side looks wrong."""
    ref = reference.astype(np.float32)
    as_is = np.abs(images.astype(np.float32) - ref).mean(axis=(1, 2, 3))
    turned = np.abs(images[:, ::-1, ::-1].astype(np.float32) - ref).mean(axis=(1, 2, 3))
    return [n for n, a, b in zip(names, as_is, turned) if b < a]


def statuses(regs: list[Registration], names: list[str]) -> dict[str, Any]:
    return {"counts": dict(Counter(r.status for r in regs)),
            "failures": [{"image": n, "status": r.status, "reason": r.reason} for n, r in zip(names, regs) if not r.ok]}


def run_size(data: dict[str, Any], spec: RegistrationSpec, size: int, k: int) -> dict[str, Any]:
    def reg_one(img: np.ndarray) -> tuple[np.ndarray, Registration]:
        return register(img, spec, size, size)
    train_out, train_ms = timed(reg_one, data["train"])
    test_out, test_ms = timed(reg_one, data["test"])
    _, plain_ms = timed(lambda img: resize_to_model(img, size, size), data["train"] + data["test"])
    bank_in = np.stack([o for o, _ in train_out])
    test_in = np.stack([o for o, _ in test_out])
    t = time.perf_counter()
    bank = TemplateBank(bank_in, k=k)
    build_s = time.perf_counter() - t
    maps, map_ms = timed(lambda x: bank.anomaly_map(x[None])[0], list(test_in))
    back = np.stack([warp_back(m, r, size, size) for m, (_, r) in zip(maps, test_out)])
    masks = np.stack([np.zeros((size, size), bool) if m is None else
                      cv2.resize(m.astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_AREA) > 127
                      for m in data["masks"]])
    metrics = localization_metrics(masks, back, data["labels"])
    median = np.median(bank_in, axis=0)
    suspects = head_side_suspects(np.concatenate([bank_in, test_in]), median,
                                  data["train_names"] + data["test_names"])
    all_ms = np.concatenate([train_ms, test_ms])
    return {
        "size": size, "k": bank.k, "sigma": bank.sigma, "metrics": metrics,
        "register_ms": {"median": float(np.median(all_ms)), "p95": float(np.percentile(all_ms, 95)),
                        "mean": float(all_ms.mean())},
        "plain_resize_ms": {"median": float(np.median(plain_ms)), "mean": float(plain_ms.mean())},
        "map_ms": {"median": float(np.median(map_ms)), "mean": float(map_ms.mean())},
        "bank_build_s": build_s, "bank_mb": bank.nbytes / 2**20,
        "train_status": statuses([r for _, r in train_out], data["train_names"]),
        "test_status": statuses([r for _, r in test_out], data["test_names"]),
        "head_side_suspects": {"fraction": len(suspects) / len(all_ms), "images": suspects},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    cv2.setNumThreads(1)     # per-image times on one core, as the edge runtime's workers use them
    started = time.time()
    data = load(Path(args.data))
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = fit(data["train"], RegistrationSpec("principal_axis", "background"))
    fit_s = time.perf_counter() - t
    rows = [run_size(data, spec, s, args.k) for s in args.size]
    result = {"data": str(args.data), "train_images": len(data["train"]), "test_images": len(data["test"]),
              "anomalous": int(data["labels"].sum()), "fit_seconds": fit_s,
              "fit_warnings": [str(w.message) for w in caught], "spec": spec.to_mapping(),
              "issue_baseline_256": ISSUE_BASELINE, "rows": rows, "wall_s": time.time() - started}
    write_json(Path(args.out) / "registration.json", result)
    return result


def format_table(r: dict[str, Any]) -> str:
    head = f"{'rows':<26}" + "".join(f"{m:>12}" for m in METRICS) + f"{'reg ms':>9}{'resize ms':>10}{'map ms':>8}{'bank MB':>9}"
    lines = [head, "-" * len(head)]
    for row in r["rows"]:
        m = row["metrics"]
        label = f"template k={row['k']}, {row['size']} px"
        lines.append(f"{label:<26}" + "".join(f"{m[k]:>12.3f}" for k in METRICS)
                     + f"{row['register_ms']['median']:>9.2f}{row['plain_resize_ms']['median']:>10.2f}"
                     f"{row['map_ms']['median']:>8.2f}{row['bank_mb']:>9.1f}")
    lines.append(f"{'issue baseline, 256 px':<26}" + "".join(f"{r['issue_baseline_256'][k]:>12.3f}" for k in METRICS))
    lines.append("")
    for row in r["rows"]:
        tr, te, hs = row["train_status"], row["test_status"], row["head_side_suspects"]
        lines.append(f"{row['size']} px: statuses train {tr['counts']} test {te['counts']}; head side looks wrong "
                     f"on {hs['fraction']:.1%} ({', '.join(hs['images']) or 'none'})")
        for f in tr["failures"] + te["failures"]:
            lines.append(f"    {f['image']}: {f['status']} ({f['reason']})")
    s = r["spec"]
    lines.append(f"fit {r['fit_seconds']:.1f} s on {s['samples']} images: background {s['background']}, zoom {s['zoom']}, "
                 f"border_contact {s['border_contact']}, head_ratio {s['head_ratio']}; wall {r['wall_s']:.0f} s")
    lines += [f"fit warning: {w}" for w in r["fit_warnings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.registration", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/mvtec/screw", help="an MVTec AD category folder")
    p.add_argument("--size", type=int, nargs="+", default=[256, 128], help="model input sizes (square)")
    p.add_argument("--k", type=int, default=5, help="nearest bank images per test image")
    p.add_argument("--out", default="runs/bench/registration")
    args = p.parse_args(argv)
    if args.k < 1 or min(args.size) < 8:
        p.error("--k must be at least 1 and every --size at least 8")
    if not Path(args.data).is_dir():
        print(f"error: --data {args.data}: not a folder", file=sys.stderr)
        return 2
    try:
        r = run(args)
    except (FileNotFoundError, ImageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(r))
    print(f"\nwrote {Path(args.out) / 'registration.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seed means of bench.localization results: the numbers a training setting is chosen on.

    python -m bench.seeds --group C OUT/ssim OUT/ssim_s1 OUT/ssim_s2 --group E OUT/ssiml1 ...
        [--maps ssim_error recon_error_blur] [--out seeds.json]

Each folder holds one run's localization.json (python -m bench.localization ... --out OUT). A
single run's best IoU moves by ~0.05 between seeds and even between machines at the same seed
(docs/benchmarks.md), so settings are compared on the mean over seeds, with the spread beside it.
Prints, per group and map, mean and [min, max] of pixel AUROC, best IoU, AUPRO and image AUROC
(the map's max; with --image-scores also its top-1 % mean and normal-area scores), and which of
bench.localization's targets the means meet; writes the same as JSON with --out. An image score
such as `kl` or `trivial_brightness` is summarized over its image AUROC alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.localization import IMAGE_SCORES, TARGETS
from core.files import write_json

METRICS = ("pixel_auroc", "best_iou", "aupro", "image_auroc")


def load_runs(folders: list[str]) -> list[dict[str, Any]]:
    runs = []
    for f in folders:
        path = Path(f) / "localization.json"
        try:
            runs.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ValueError(f"{path}: not found (run python -m bench.localization --out ... first)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    return runs


def summarize(runs: list[dict[str, Any]], maps: list[str]) -> dict[str, dict[str, Any]]:
    """{map: {metric: {mean, min, max, values}, targets_met: {...}}} over the runs."""
    out: dict[str, dict[str, Any]] = {}
    for name in maps:
        missing = [r.get("config", "?") for r in runs if name not in r["metrics"]]
        if missing:
            raise ValueError(f"map '{name}' is missing from the run(s) of {', '.join(missing)}")
        # every run must have a metric for it to be averaged; a map row has the four METRICS, an
        # image score (kl) the image AUROC alone; older runs lack the extra image scores
        keys = [k for k in (*METRICS, *IMAGE_SCORES) if all(k in r["metrics"][name] for r in runs)]
        pixel = set(METRICS) - {"image_auroc"}
        if "image_auroc" not in keys or 0 < len(pixel & set(keys)) < len(pixel):
            raise ValueError(f"'{name}' lacks metrics in some run (a map needs {', '.join(METRICS)})")
        row: dict[str, Any] = {}
        for k in keys:
            v = np.array([r["metrics"][name][k] for r in runs], dtype=np.float64)
            row[k] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "values": v.tolist()}
        row["targets_met"] = {k: row[k]["mean"] >= t for k, t in TARGETS.items() if k in row}
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("--group", nargs="+", action="append", required=True, metavar="NAME DIR",
                   help="a setting's name, then the result folders of its seeds (repeat per setting)")
    p.add_argument("--maps", nargs="+", default=["ssim_error", "recon_error_blur"])
    p.add_argument("--image-scores", action="store_true", help="also the top-1 %% mean and normal-area image AUROCs")
    p.add_argument("--out", help="also write the summary here as JSON")
    args = p.parse_args(argv)
    if any(len(g) < 2 for g in args.group):
        p.error("--group takes a name and at least one result folder")
    names = [g[0] for g in args.group]
    if len(set(names)) != len(names):
        p.error(f"--group names must differ (given: {' '.join(names)})")
    try:
        result = {g[0]: summarize(load_runs(g[1:]), args.maps) for g in args.group}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    cols = [*METRICS, *(IMAGE_SCORES if args.image_scores else ())]
    width = max(18, *(len(m) for m in args.maps))
    print(f"{'setting':10s} {'map':{width}s} {'n':>2s}  " + "  ".join(f"{k + ' mean [min, max]':>26s}" for k in cols))
    for g in args.group:
        for name, row in result[g[0]].items():
            cells = "  ".join((f"{row[k]['mean']:8.3f} [{row[k]['min']:.3f}, {row[k]['max']:.3f}]" if k in row
                               else "").rjust(26) for k in cols)
            print(f"{g[0]:10s} {name:{width}s} {len(g) - 1:2d}  {cells}")
    print("targets (" + ", ".join(f"{k} >= {v}" for k, v in TARGETS.items()) + ") met by the means: " +
          "; ".join(f"{g}/{m}: {[k for k, ok in row['targets_met'].items() if ok] or 'none'}"
                    for g, rows in result.items() for m, row in rows.items()))
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

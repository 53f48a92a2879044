"""The automatic set-up end to end, as three users would run it, measured on the labelled test half.

    python -m bench.setup [--parts screw metal_nut] [--modes labelled good-only photos] [--budget 15]
        [--root ../shared/data/mvtec] [--out runs/bench/setup]

Modes, i.e. what the user gives `python -m training.retrain --config auto`:
  labelled   the MVTec category: train/good to learn from, the labelled test half held out
  good-only  train/good, and --heldout the test half's good parts alone: synthetic defects score
             the candidates, calibration is normal-only
  photos     train/good alone as a plain folder: the set-up holds out every fifth image itself
             (training.auto.hold_out) and calibrates on them, normal-only
Each deployed version is then measured on the labelled test half: a calibration.calibrate dry run
(image AUROC, AUPRO, recall at FPR <= 5 % on held-out folds), and the threshold it was deployed
with applied to the same scores (good parts rejected, defects caught: what the line would have
done). Results go to OUT/<part>/<mode>/result.json as they come (a rerun skips what exists); the
table is printed and written to OUT/setup.json. Exit codes: 0 done, 1 a set-up or measurement
failed, 2 usage.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.parts import add_part_arguments
from calibration.calibrate import calibrate
from core.cli import int_at_least
from core.files import write_json

MODES = ("labelled", "good-only", "photos")


def arguments(part: Path, mode: str, deploy: Path, budget: int) -> list[str]:
    """training.retrain's command line for one mode (module docstring)."""
    data = {"labelled": part, "good-only": part / "train" / "good", "photos": part / "train" / "good"}[mode]
    extra = ["--heldout", str(part / "test" / "good")] if mode == "good-only" else []
    return ["--config", "auto", "--budget", str(budget), "--data", str(data), "--deploy", str(deploy), *extra]


def measure(part: Path, mode: str, folder: Path, budget: int) -> dict[str, Any]:
    """Run the set-up for `mode` into folder/deploy and measure its version on part/test."""
    deploy = folder / "deploy"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(folder / "setup.log", "w", encoding="utf-8") as log:
        rc = subprocess.run([sys.executable, "-m", "training.retrain", *arguments(part, mode, deploy, budget)],
                            stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    minutes = (time.perf_counter() - started) / 60
    if rc != 0:
        raise RuntimeError(f"{part.name} {mode}: the set-up exited {rc}; see {folder / 'setup.log'}")
    version = (deploy / "current").resolve()
    setup = json.loads((version / "setup.json").read_text(encoding="utf-8"))
    model = next(version.glob("*.onnx"))
    threshold = float(yaml.safe_load(model.with_suffix(".yaml").read_text(encoding="utf-8"))["thresholds"]["image"])
    body = calibrate(model, part / "test", report=folder / "measured", dry_run=True, force=True, worst=0,
                     log=lambda _: None)
    scores = np.array([i["score"] for i in body["images"]], dtype=np.float64)
    defective = np.array([bool(i["defective"]) for i in body["images"]])
    return {"part": part.name, "mode": mode, "chosen": setup["winner"], "rule": setup["rule"],
            "image_auroc": body["auroc"]["image"], "aupro": body["aupro"],
            "recall": ((body["folds"] or {}).get("recall") or {}).get("mean"),
            "deployed_threshold": threshold, "good": int((~defective).sum()), "defective": int(defective.sum()),
            "good_rejected": int((scores[~defective] > threshold).sum()),
            "defects_caught": int((scores[defective] > threshold).sum()), "minutes": minutes}


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'part':<10} {'mode':<10} {'chosen':<40} {'img AUROC':>9} {'AUPRO':>6} {'recall':>6} "
          f"{'deployed threshold: good NG':>27} {'defects NG':>10} {'min':>5}")
    for r in rows:
        recall = "-" if r["recall"] is None else f"{r['recall']:.1%}"
        print(f"{r['part']:<10} {r['mode']:<10} {r['chosen']:<40} {r['image_auroc']:>9.3f} {r['aupro']:>6.3f} "
              f"{recall:>6} {r['good_rejected']:>21} / {r['good']:<3} {r['defects_caught']:>4} / {r['defective']:<3} "
              f"{r['minutes']:>5.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.setup", description=__doc__.split("\n\n")[0])
    add_part_arguments(p)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="what the user gives the set-up")
    p.add_argument("--budget", type=int_at_least(1), default=15, help="the set-up's --budget in minutes (default 15)")
    p.add_argument("--out", default="runs/bench/setup", help="results and deployments (default runs/bench/setup)")
    args = p.parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    missing = [name for name in args.parts if not (root / name / "train" / "good").is_dir()
               or not (root / name / "test").is_dir()]
    if missing:
        print(f"error: {', '.join(missing)}: not an MVTec category with train/good and test/ under {root}",
              file=sys.stderr)
        return 2
    rows = []
    for name in args.parts:
        for mode in args.modes:
            folder = out / name / mode
            done = folder / "result.json"
            if not done.is_file():
                try:
                    write_json(done, measure(root / name, mode, folder, args.budget))
                except (RuntimeError, OSError, ValueError) as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 1
            rows.append(json.loads(done.read_text(encoding="utf-8")))
    print_table(rows)
    write_json(out / "setup.json", {"rows": rows, "command": " ".join(["python -m bench.setup", *(argv or sys.argv[1:])])})
    return 0


if __name__ == "__main__":
    sys.exit(main())

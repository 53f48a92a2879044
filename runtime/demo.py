"""The main job end to end on the embedded default (ONNX Runtime on the CPU):

    python -m runtime.demo [--config configs/demo.yaml] [--out runs/demo] [--input DIR]

train on the good parts -> export screw.onnx with its sidecar -> check ONNX Runtime against
PyTorch autograd -> inspect a folder of test images (report.csv, overlays). Each step is the
project's own CLI, called in-process, so the demo cannot drift from what a user runs by hand.
Exit 0 when every step succeeded, 1 when one failed (its own message says why), 2 on usage errors.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from export import check as export_check
from export import onnx as export_onnx
from runtime import inspect as runtime_inspect
from training import train as training_train
from training.config import load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml", help="training config (default configs/demo.yaml)")
    p.add_argument("--out", default="runs/demo", help="work folder (default runs/demo)")
    p.add_argument("--input", help="folder to inspect (default: the config's data root /test)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training in OUT/train")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        data = load_config(args.config)["data"]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # dSprites is generated arrays (root null: rendered on the fly): nothing for inspect to read
    if data.get("format") == "dsprites" or not isinstance(data.get("root"), str):
        print(f"error: {args.config}: the demo needs an image dataset config (data.root naming a folder of "
              f"images, as in configs/demo.yaml), not data.format {data.get('format')!r} with root "
              f"{data.get('root')!r}", file=sys.stderr)
        return 2
    root = Path(data["root"])
    if args.input and not Path(args.input).exists():  # a typo must not cost the training run first
        print(f"error: --input {args.input}: no such file or folder", file=sys.stderr)
        return 2
    out = Path(args.out)
    ckpt, onnx_path = out / "train" / "model.pt", out / "deploy" / "screw.onnx"
    train_args = ["--config", args.config, "--out", str(out / "train")]
    train_args += ["--epochs", str(args.epochs)] if args.epochs else []
    # a run interrupted in its first epoch left nothing to resume: it starts again
    train_args += ["--resume"] if args.resume and ckpt.is_file() else []
    steps: list[tuple[str, Callable[[list[str]], int], list[str]]] = [
        ("train", training_train.main, train_args),
        ("export", export_onnx.main, ["--checkpoint", str(ckpt), "--out", str(onnx_path)]),
        ("parity", export_check.main, ["--onnx", str(onnx_path), "--checkpoint", str(ckpt)]),
        ("inspect", runtime_inspect.main, ["--engine", str(onnx_path), "--input", args.input or str(root / "test"),
                                           "--recursive", "--output", str(out / "inspect"), "--overwrite",
                                           "--save", "overlay"]),  # masks need thresholds: calibration, later
    ]
    for name, step, step_args in steps:
        print(f"== {name}: python -m {step.__module__} {' '.join(step_args)}", flush=True)
        started = time.time()
        rc = step(step_args)
        if rc:
            print(f"error: step '{name}' failed (exit {rc}); see its message above", file=sys.stderr)
            return 1
        print(f"== {name} done in {time.time() - started:.0f} s", flush=True)
    print(f"report: {out / 'inspect' / 'report.csv'}  overlays: {out / 'inspect'}  model: {onnx_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job end to end on the embedded default (ONNX Runtime on the CPU, a video file as the camera):

    python -m runtime.demo [--config configs/demo.yaml] [--data ../shared/data/mvtec/screw]
        [--out runs/demo] [--epochs N]

  1 retrain  python -m training.retrain --config CFG --data DATA --heldout DATA/test --deploy OUT/models/screw
             the model (the shipped screw VAE on registered parts with a short schedule, exported as
             ONNX; --config configs/screw_template.yaml builds the training-free template model in
             seconds instead), its parity check, calibration on the held-out half (thresholds,
             plots), the quality gate, and the deployment OUT/models/screw/vNNNN, `current` pointing at it
  2 inspect  python -m runtime.inspect --engine OUT/models/screw --input DATA/test --recursive ...
  3 video    OUT/camera/parts.avi: the test parts as a short video, standing in for a camera
  4 camera   python -m runtime.camera --engine OUT/models/screw --source OUT/camera/parts.avi --headless ...
Then where every kind of output is, and the disk the run used. Each step is the project's own
command in a child process (core.steps), exactly what a user types by hand. Without the shared
screw data it builds synthetic parts (core.synthetic) and says so. Nothing is downloaded.
Exit 0 when every step succeeded, 1 when one failed (its own message says why), 2 usage errors.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2

from core.cli import sigterm_interrupts
from core.images import IMAGE_EXTENSIONS, read_image
from core.steps import StepFailed, run_step
from core.synthetic import make_parts
from runtime.recorder import VideoRecorder

SHARED_SCREW = Path("../shared/data/mvtec/screw")
VIDEO_FPS = 5.0
VIDEO_SIZE = 512  # the camera stand-in's frame side: the 1024-px parts, halved


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml",
                   help="model config (default configs/demo.yaml: the shipped screw VAE, 15 epochs; "
                        "configs/screw_template.yaml: the training-free template model, seconds)")
    p.add_argument("--data", help=f"an MVTec-layout part folder (default {SHARED_SCREW}, else synthetic parts)")
    p.add_argument("--out", default="runs/demo", help="work folder (default runs/demo)")
    p.add_argument("--epochs", type=int, help="override train.epochs of a VAE config")
    return p


def test_images(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "test").rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def make_video(images: list[Path], out: Path) -> int:
    """The test parts, each shown once, as a short video (the camera's source here)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rec = VideoRecorder(out, VIDEO_FPS)
    try:
        for p in images:
            frame = cv2.cvtColor(read_image(p, 1), cv2.COLOR_GRAY2BGR)
            h, w = frame.shape[:2]
            scale = VIDEO_SIZE / max(h, w)
            rec.write(cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA))
    finally:
        rec.close()
    return len(images)


def disk_used(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def summary(out: Path, deploy: Path, seconds: dict[str, float]) -> str:
    cur = deploy / "current"
    version = os.readlink(cur) if cur.is_symlink() else "?"
    rows = [
        ("deployed model", f"{deploy} (current -> {version}; python -m training.retrain --list {deploy})"),
        ("thresholds", f"{cur}/*.yaml, section thresholds (calibrated on the held-out parts)"),
        ("calibration report", f"{cur}/calibration/ (calibration.json, roc.png, scores.png, pixel_threshold.png, "
                               "worst.png)"),
        ("inspection report", f"{out / 'inspect' / 'report.csv'} and summary.json"),
        ("pictures", f"{out / 'inspect' / 'overlay'}/ (colour: the anomaly map that decides; outline: the defect "
                     f"mask; badge: OK / NG) and {out / 'inspect' / 'mask'}/"),
        ("camera recording", f"{out / 'camera' / 'overlay.mp4'} (the live overlay of every frame)"),
        ("camera log", f"{out / 'camera' / 'frames.jsonl'} (one line per frame) and NG frames in "
                       f"{out / 'camera' / 'ng'}/"),
        ("step logs", f"{cur}/logs/"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    lines.append(f"{'time':<{width}}  {steps}; disk used by {out}: {disk_used(out) / 2**20:.0f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.config).is_file():
        print(f"error: --config {args.config}: not found", file=sys.stderr)
        return 2
    if args.data and not Path(args.data).is_dir():
        print(f"error: --data {args.data}: not a folder", file=sys.stderr)
        return 2
    out = Path(args.out)
    data = Path(args.data) if args.data else SHARED_SCREW
    if not args.data and not (data / "train" / "good").is_dir():
        data = make_parts(out / "data")
        print(f"note: {SHARED_SCREW} not found: using synthetic screw-like parts in {data}", flush=True)
    if not (data / "test").is_dir():
        print(f"error: --data {data}: needs test/ (held-out parts) beside train/good", file=sys.stderr)
        return 2
    deploy = out / "models" / "screw"
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    try:
        with sigterm_interrupts():  # kill PID: the Ctrl-C path, and core.steps stops the step's child
            retrain = ["--config", args.config, "--data", str(data), "--heldout", str(data / "test"),
                       "--deploy", str(deploy)] + (["--epochs", str(args.epochs)] if args.epochs else [])
            run_step("retrain", "training.retrain", retrain, out / "logs", seconds)
            run_step("inspect", "runtime.inspect", ["--engine", str(deploy), "--input", str(data / "test"), "--recursive",
                                                    "--output", str(out / "inspect"), "--overwrite", "--save",
                                                    "overlay,mask", "--quiet"], out / "logs", seconds)
            t0 = time.perf_counter()
            video = out / "camera" / "parts.avi"
            n = make_video(test_images(data), video)
            seconds["video"] = round(time.perf_counter() - t0, 1)
            print(f"== video: {video} ({n} frames, {VIDEO_FPS:g} fps)", flush=True)
            log = out / "camera" / "frames.jsonl"
            log.unlink(missing_ok=True)  # the camera appends; the demo shows this run's frames only
            run_step("camera", "runtime.camera", ["--engine", str(deploy), "--source", str(video), "--headless",
                                                  "--no-realtime", "--record", str(out / "camera" / "overlay.mp4"),
                                                  "--log", str(log), "--save-ng", str(out / "camera" / "ng")],
                     out / "logs", seconds)
    except StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: the running step was stopped (logs in {out / 'logs'})", file=sys.stderr)
        return 1
    seconds["total"] = round(time.perf_counter() - started, 1)
    print("\n" + summary(out, deploy, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

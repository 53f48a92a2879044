"""The main job end to end on the embedded default (ONNX Runtime on the CPU, a video file as the camera):

    python -m runtime.demo [--config auto|CFG] [--budget MIN] [--data ../shared/data/mvtec/screw]
        [--out runs/demo] [--epochs N] [--vae-config configs/demo.yaml | --no-vae]

  1 retrain  python -m training.retrain --config auto --budget 4 --data DATA --heldout DATA/test
             --deploy OUT/models/screw: the automatic set-up tries the registrations and families that
             fit the budget and says what it chose and why (a few minutes on 2 cores: the training-free
             template wins there), then calibration on the held-out half (thresholds, plots), the
             quality gate, and the deployment OUT/models/screw/vNNNN, `current` pointing at it
             (--config CFG builds that config instead)
  2 inspect  python -m runtime.inspect --engine OUT/models/screw --input DATA/test --recursive ...
             (the set-up and the calibration chose on these same parts: in-sample verdicts, and said so)
  3 vae      the paper's VAE (--vae-config, configs/demo.yaml: the shipped screw VAE with 15 epochs):
             training.train, export.onnx, and runtime.inspect --explain both on a few test parts, its
             latent attention beside the map that decides (OUT/vae/overlay/)
  4 video    OUT/camera/parts.avi: the test parts as a short video, standing in for a camera
  5 camera   python -m runtime.camera --engine OUT/models/screw --source OUT/camera/parts.avi --headless ...
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
DEFAULT_BUDGET = 4.0   # minutes for the automatic set-up: a few minutes on 2 cores
VAE_PARTS = 6          # test parts the VAE's attention is drawn on
VIDEO_FPS = 5.0
VIDEO_SIZE = 512  # the camera stand-in's frame side: the 1024-px parts, halved


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="auto",
                   help="auto (default: the automatic set-up within --budget) or a model config (configs/demo.yaml: "
                        "the shipped screw VAE, 15 epochs; configs/screw_template.yaml: the template model)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help=f"minutes the automatic set-up may spend (default {DEFAULT_BUDGET:g})")
    p.add_argument("--vae-config", default="configs/demo.yaml",
                   help="the VAE whose attention step 3 shows (default configs/demo.yaml)")
    p.add_argument("--no-vae", action="store_true", help="skip step 3")
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


def summary(out: Path, deploy: Path, seconds: dict[str, float], vae: bool) -> str:
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
        ("the VAE's attention", f"{out / 'vae' / 'inspect' / 'overlay'}/ (the paper's latent attention beside the map "
                                "that decides; training: python -m training.retrain --config configs/screw.yaml)"),
        ("camera recording", f"{out / 'camera' / 'overlay.mp4'} (the live overlay of every frame)"),
        ("camera log", f"{out / 'camera' / 'frames.jsonl'} (one line per frame) and NG frames in "
                       f"{out / 'camera' / 'ng'}/"),
        ("step logs", f"{cur}/logs/"),
    ]
    if (deploy / "current" / "setup.json").is_file():
        rows.insert(1, ("what the set-up chose", f"{cur}/setup.json (every setting tried, its scores, the rule)"))
    rows = [r for r in rows if vae or r[0] != "the VAE's attention"]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    lines.append(f"{'time':<{width}}  {steps}; disk used by {out}: {disk_used(out) / 2**20:.0f} MB")
    return "\n".join(lines)


def vae_samples(data: Path, folder: Path) -> Path:
    """A folder of links to VAE_PARTS test parts, good and of each defect kind in turn."""
    kinds = sorted((p for p in (data / "test").iterdir() if p.is_dir()), key=lambda p: (p.name != "good", p.name))
    lists = [sorted(q for q in k.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS) for k in kinds]
    picked = [lst[i] for i in range(VAE_PARTS) for lst in lists if i < len(lst)][:VAE_PARTS]
    if folder.exists():
        for old in folder.iterdir():
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for p in picked:
        (folder / f"{p.parent.name}_{p.name}").symlink_to(p.resolve())
    return folder


def show_vae(args: argparse.Namespace, data: Path, out: Path, seconds: dict[str, float]) -> None:
    """Step 3: the paper's VAE trained briefly, exported, and its attention drawn beside its map."""
    vae = out / "vae"
    train = ["--config", args.vae_config, "--data", str(data), "--out", str(vae), "--quiet"]
    run_step("vae", "training.train", train + (["--epochs", str(args.epochs)] if args.epochs else []),
             out / "logs", seconds)
    run_step("vae-export", "export.onnx", ["--checkpoint", str(vae / "model.pt"), "--out", str(vae / "vae.onnx")],
             out / "logs", seconds)
    run_step("vae-inspect", "runtime.inspect", ["--engine", str(vae / "vae.onnx"), "--input",
                                                str(vae_samples(data, vae / "samples")), "--output", str(vae / "inspect"),
                                                "--overwrite", "--save", "overlay", "--explain", "both", "--quiet"],
             out / "logs", seconds)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("config", "vae_config"):
        value = getattr(args, flag)
        if value != "auto" and not Path(value).is_file() and not (flag == "vae_config" and args.no_vae):
            print(f"error: --{flag.replace('_', '-')} {value}: not found", file=sys.stderr)
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
                       "--deploy", str(deploy)] + (["--epochs", str(args.epochs)] if args.epochs else []) \
                + (["--budget", f"{args.budget:g}"] if args.config == "auto" else [])
            run_step("retrain", "training.retrain", retrain, out / "logs", seconds)
            run_step("inspect", "runtime.inspect", ["--engine", str(deploy), "--input", str(data / "test"), "--recursive",
                                                    "--output", str(out / "inspect"), "--overwrite", "--save",
                                                    "overlay,mask", "--quiet"], out / "logs", seconds)
            print(f"note: the calibration{' and the set-up' if args.config == 'auto' else ''} used these same test "
                  "parts: these verdicts are in-sample (held-out estimates: the calibration report's folds)", flush=True)
            if not args.no_vae:
                show_vae(args, data, out, seconds)
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
    print("\n" + summary(out, deploy, seconds, not args.no_vae))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the camera's host work costs the backend itself: the model on one core, a load on another.

    python -m bench.contention --engine MODEL [--video FILE [--roi x,y,w,h]] [--frames 200]
        [--runs 150] [--rounds 3] [--out runs/bench/contention]

bench.camera finds the camera's inference stage slower than the bare backend although the stage
does nothing else; this bench says why. The backend (ONNX Runtime, CPU, one intra-op thread) is
pinned to one core and timed over --runs inferences of a real prepared frame, alone and beside one
load pinned to another (a separate process, so no GIL is shared):
  none       nothing: the bare backend
  alu        a pure-Python arithmetic loop (no memory traffic): what sharing the package costs
  memory     numpy copies of 64 MB arrays: what sharing the memory bandwidth and the last-level
             cache costs
  decode     the camera's video decoding alone (OpenCV, one thread, looping over the video)
  capture    the camera's whole capture stage: decode + --roi crop + Pipeline.prepare
The video and region are bench.camera's (the screw test parts at 1080p for a model that registers
parts). Interleaved rounds, the best kept per load (other tenants only slow a run down). Prints a
table and writes OUT/contention.json. Exit codes: 0 done, 1 the model failed, 2 bad arguments or a
machine without two cores to pin to.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.camera import bench_video
from core.cli import require
from core.files import write_json
from runtime.model import ModelError
from runtime.pipeline import Pipeline
from runtime.sources import Roi

LOADS = ("none", "alu", "memory", "decode", "capture")


def load(kind: str, core: int, engine: str, video: str, roi: Roi | None, ready: Any, stop: Any) -> None:
    """One load on `core` until `stop` (a child process)."""
    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)
    pipe = Pipeline.open(engine, providers="cpu", threads=1, warmup=0) if kind == "capture" else None
    cap = cv2.VideoCapture(video) if kind in ("decode", "capture") else None
    a = np.ones(16 * 2**20, np.float32) if kind == "memory" else None
    b = np.empty_like(a) if a is not None else None
    ready.set()
    x = 0
    while not stop.is_set():
        if kind == "alu":
            for i in range(10_000):
                x += i * i
        elif kind == "memory":
            np.copyto(b, a)
        else:
            assert cap is not None
            ok, img = cap.read()
            if not ok:  # loop the video
                cap.release()
                cap = cv2.VideoCapture(video)
                continue
            if pipe is not None:
                pipe.prepare(roi.crop(img) if roi else img, bgr=True)


def timed(pipe: Pipeline, prepared: Any, runs: int) -> float:
    """Median milliseconds of one batch-1 inference."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        pipe.infer([prepared])
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.contention", description=__doc__.split("\n\n")[1].strip())
    p.add_argument("--engine", required=True, help="model file (.onnx: ONNX Runtime, CPU provider, one thread)")
    p.add_argument("--video", help="a video file (default: bench.camera's 1080p video, made under --out)")
    p.add_argument("--roi", help="x,y,w,h of --video the camera inspects (default: the made video's part region)")
    p.add_argument("--frames", type=int, default=200, help="frames of the made video (default 200)")
    p.add_argument("--runs", type=int, default=150, help="timed inferences per load and round (default 150)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions, best kept (default 3)")
    p.add_argument("--out", default="runs/bench/contention")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    require(p, engine=args.engine, video=args.video)
    if min(args.frames, args.runs, args.rounds) < 1:
        p.error("--frames, --runs and --rounds must be positive")
    try:
        roi = Roi.parse(args.roi) if args.roi else None
    except ValueError as e:
        p.error(str(e))
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        print("error: this bench pins the model and a load to two different cores; this machine (or this "
              "process's affinity) has fewer than two", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cv2.setNumThreads(1)
    cores = os.sched_getaffinity(0)
    model_core, load_core = sorted(cores)[:2]
    os.sched_setaffinity(0, {model_core})  # before the session: ONNX Runtime's thread inherits it
    try:  # the calling thread gets its cores back (a test suite that runs this goes on after it)
        return measure(args, roi, out, load_core)
    finally:
        os.sched_setaffinity(0, cores)


def measure(args: argparse.Namespace, roi: Roi | None, out: Path, load_core: int) -> int:
    """The rounds, the table and the JSON, the model on this thread's core, each load on `load_core`."""
    try:
        pipe = Pipeline.open(args.engine, providers="cpu", threads=1, warmup=1)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with pipe:
        video, roi = bench_video(pipe, args.video, roi, args.frames, out)
        cap = cv2.VideoCapture(str(video))
        ok, img = cap.read()
        cap.release()
        if not ok:
            print(f"error: {video}: no frame can be read", file=sys.stderr)
            return 2
        prepared = pipe.prepare(roi.crop(img) if roi else img, bgr=True)
        if not prepared.ok:
            print(f"error: {video}: the first frame does not register ({prepared.registration.status}); "
                  "give --roi", file=sys.stderr)
            return 2
        ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited ONNX Runtime threads
        runs: dict[str, list[float]] = {k: [] for k in LOADS}
        for r in range(args.rounds):
            for kind in LOADS:
                child, stop = None, ctx.Event()
                if kind != "none":
                    ready = ctx.Event()
                    child = ctx.Process(target=load, args=(kind, load_core, args.engine, str(video), roi, ready, stop), daemon=True)
                    child.start()
                    while not ready.wait(0.1):
                        if not child.is_alive():  # its traceback is on stderr
                            print(f"error: the {kind} load stopped before it began (exit code {child.exitcode})",
                                  file=sys.stderr)
                            return 1
                    time.sleep(0.2)  # its steady state
                try:
                    runs[kind].append(timed(pipe, prepared, args.runs))
                finally:
                    if child is not None:
                        stop.set()
                        child.join(10)
                print(f"  round {r + 1}/{args.rounds} {kind:<8} {runs[kind][-1]:6.2f} ms", file=sys.stderr)
    best = {k: min(v) for k, v in runs.items()}
    rows = [{"load": k, "backend_ms": best[k], "slowdown": best[k] / best["none"] - 1} for k in LOADS]
    result = {"command": " ".join(["python -m bench.contention", *args.argv]),
              "model": args.engine, "video": str(video), "runs": args.runs, "rounds": args.rounds,
              "cores": os.cpu_count(), "load_average": os.getloadavg(),
              "rows": rows, "all_rounds_ms": runs}
    print(f"\n{Path(args.engine).name}, ONNX Runtime CPU, one thread on one core, batch 1; a load on another; "
          f"best of {args.rounds}")
    print(f"{'load':<9} {'backend ms':>11} {'slowdown':>9}")
    for row in rows:
        print(f"{row['load']:<9} {row['backend_ms']:>11.2f} {100 * row['slowdown']:>+8.1f}%")
    write_json(out / "contention.json", result)
    print(f"wrote {out / 'contention.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

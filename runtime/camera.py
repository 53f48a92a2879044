"""Live inspection: frames from a camera, a stream, a video file or a folder -> verdicts and overlays.

    python -m runtime.camera --engine screw.trt [--source 0|FILE|DIR|rtsp://..|"GST ! pipeline"]
        [--width W --height H --fps F] [--roi x,y,w,h] [--loop] [--no-realtime [--batch N]]
        [--headless] [--record out.mp4] [--serve [HOST:]PORT] [--log frames.jsonl] [--save-ng DIR]
        [--max-frames N] [--retries N] [--fallback onnx] [--threshold-pixel X] [--threshold-image Y]

Each frame goes through runtime.pipeline, the object batch inspection uses (prepare, infer, judge,
render), so a frame gets the score, verdict, mask and picture `runtime.inspect` gives the same
pixels. Three threads, each stage never waiting on a slower one behind it:
  capture   reads the source (runtime.sources, runtime.capture), crops --roi and prepares the model
            input; a latest-frame slot, where a frame the pipeline did not take in time is dropped and
            counted (--no-realtime, files and folders only: a short queue, every frame in order,
            batched up to --batch when several wait: worth it on a GPU, ~5 % on ONNX Runtime CPU)
  inference the backend alone (Pipeline.infer): the stage the rate is bound to does nothing else
  main      judges (score, verdict, mask), renders the overlay with the live counters (only when
            something shows, records or serves it), feeds the sinks (window, --record, --serve,
            --log, --save-ng), handles the keys and the signals; latency is capture -> picture
            ready, per frame. /status and the last line give each thread's time per frame and
            the one that bounds the rate.
A window opens only where runtime.display.probe() says one can (Qt aborts a process without a
display) and --headless is not given. Keys: q quit, space pause the window (inspection goes on),
o overlay, m mask, s snapshot (raw frame, overlay, JSON into --snapshots), [ ] pixel threshold
-/+5 %, w write it to the sidecar (not into a published deployment version).
A lost live source is reopened with a doubling backoff (--retries); SIGINT / SIGTERM stop cleanly
(recording finalized, files closed, socket released). SIGHUP, or a deployment folder's `current`
moving to another version (training.retrain, --rollback), reloads the model beside the running
one and swaps it in between two frames: the stream never stops, and a model that fails to open is
reported while the running one keeps serving. Exit: 0 normal end (source exhausted, q,
--max-frames, a signal), 1 failure while working (model, source after its retries, recording, a
full disk: the message names the file), 2 usage error. A frame that cannot be read or inspected
(a folder's broken file, a 1x1 image) is a failed row with its reason; the run goes on.
"""
from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import cv2

from core.device import device_arg
from core.deployment import is_deployment
from runtime import display
from runtime.backends import BACKENDS, BackendError, BackendUnavailable
from core.cli import UsageError, finite_float
from runtime.live import Session, Settings, make_capture
from runtime.model import ModelError
from runtime.pipeline import EXPLAIN, Pipeline
from runtime.recorder import RecorderError, check_record_path
from runtime.sources import Request, Roi, SourceError, parse_source
from runtime.stream import parse_bind


def positive(kind: type) -> Any:
    """argparse type: a finite number > 0 (a size, a rate, a count)."""
    def convert(text: str) -> Any:
        value = kind(text)
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value
    convert.__name__ = kind.__name__  # argparse names the type in its message
    return convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.camera", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", "--model", dest="engine", required=True,
                   help="model file: .trt/.engine/.plan, .onnx, .pt or .npz (sidecar X.yaml beside it), or a "
                        "deployment folder: its current version, reloaded when `current` changes")
    p.add_argument("--source", default="0", metavar="SRC", help="camera index (default 0), video file, folder of frames, "
                                                 "rtsp:// or http:// URL, or a GStreamer pipeline ('... ! appsink')")
    p.add_argument("--width", type=positive(int), help="capture width to request from a camera")
    p.add_argument("--height", type=positive(int), help="capture height to request from a camera")
    p.add_argument("--fps", type=positive(float), help="frame rate to request from a camera; the pace of a file or "
                                                       "folder (default: the file's own rate, 25 for a folder)")
    p.add_argument("--roi", metavar="X,Y,W,H", help="inspect only this region of each frame: x,y,w,h in pixels")
    p.add_argument("--loop", action="store_true", help="start a file or folder again at its end")
    p.add_argument("--no-realtime", dest="realtime", action="store_false",
                   help="files and folders: inspect every frame, in order, as fast as the model goes (no drops)")
    p.add_argument("--batch", type=positive(int), default=1, metavar="N",
                   help="with --no-realtime: up to N waiting frames per model call (default 1)")
    p.add_argument("--headless", action="store_true", help="never open a window (without a display this is automatic)")
    p.add_argument("--record", metavar="FILE", help="write the overlay video: .mp4 (mp4v), .avi (MJPG) or .mkv (FFV1, lossless); "
                                                    "written as FILE.partial.EXT until finalized")
    p.add_argument("--serve", metavar="[HOST:]PORT", help="HTTP: MJPEG stream, page (last NG frames, model and thresholds, "
                                   "source health) and /status on [HOST:]PORT (127.0.0.1 unless a host "
                                   "is given; port 0: any free port)")
    p.add_argument("--log", metavar="FILE", help="JSONL file, appended to: a header line per run, then one line per inspected frame "
                                                 "(naming the model and thresholds that judged it), a line per reload")
    p.add_argument("--save-ng", metavar="DIR", help="folder: every NG frame, raw and with its overlay, and its row")
    p.add_argument("--snapshots", metavar="DIR", default="runs/camera/snapshots", help="folder for the s key (default %(default)s)")
    p.add_argument("--max-frames", type=positive(int), metavar="N", help="stop after N inspected frames")
    p.add_argument("--retries", type=int, default=10, metavar="N",
                   help="live sources: failed (re)connections in a row before giving up (default 10; -1 forever); "
                        "the wait doubles from 0.5 s to 10 s")
    p.add_argument("--fallback", choices=["onnx"],
                   help="when TensorRT cannot run here, use the .onnx beside the engine on ONNX Runtime")
    p.add_argument("--threshold-pixel", type=finite_float, help="pixel threshold on anomaly_map (default: sidecar)")
    p.add_argument("--threshold-image", type=finite_float, help="image-score threshold for NG (default: sidecar)")
    p.add_argument("--explain", choices=EXPLAIN, default="anomaly_map", help="what the overlay colours (default anomaly_map)")
    p.add_argument("--backend", choices=BACKENDS, help="override the extension's backend")
    p.add_argument("--providers", help="ONNX Runtime providers in order, e.g. cuda,cpu")
    p.add_argument("--device", type=device_arg, help="auto, cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=positive(int), help="ONNX Runtime intra-op threads (default: one per core)")
    return p


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    """The command line, checked: UsageError (exit 2) for anything typed wrong."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: 2 on usage errors (it printed why), 0 on --help
        raise UsageError("") if e.code else e
    engine = Path(args.engine)
    if not engine.is_file() and not is_deployment(engine):
        raise UsageError(f"--engine {engine}: {'is a folder but not a deployment folder' if engine.is_dir() else 'not found'}")
    try:
        spec = parse_source(args.source)
        roi = Roi.parse(args.roi) if args.roi else None
        bind = parse_bind(args.serve) if args.serve else None
        if args.record:
            check_record_path(Path(args.record))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if spec.live and not args.realtime:
        raise UsageError(f"--no-realtime: a {spec.kind} cannot wait for the model; it applies to files and folders")
    if spec.live and args.loop:
        raise UsageError(f"--loop: applies to files and folders, not a {spec.kind}")
    if args.batch > 1 and args.realtime:
        raise UsageError("--batch N needs --no-realtime: in realtime the newest frame is inspected, one at a time")
    if args.retries < -1:
        raise UsageError("--retries: a count >= 0, or -1 for forever")
    if args.log and not Path(args.log).parent.is_dir():
        raise UsageError(f"--log {args.log}: folder {Path(args.log).parent} does not exist")
    for flag, folder in (("--save-ng", args.save_ng), ("--snapshots", args.snapshots)):
        if folder and Path(folder).exists() and not Path(folder).is_dir():
            raise UsageError(f"{flag} {folder}: exists and is not a folder")
    if bind is not None and not bind.loopback:
        print(f"note: --serve {bind.host}: reachable from the network, without authentication", file=sys.stderr)
    s = Settings(spec, Request(args.width, args.height, args.fps), roi, args.loop, args.realtime, args.batch,
                 args.retries, record=Path(args.record) if args.record else None, serve=bind,
                 log=Path(args.log) if args.log else None, save_ng=Path(args.save_ng) if args.save_ng else None,
                 snapshots=Path(args.snapshots), max_frames=args.max_frames, explain=args.explain)
    return args, s


def open_pipeline(args: argparse.Namespace) -> Pipeline:
    """Pipeline.open for the command line; with --fallback onnx, the .onnx beside an engine that
    TensorRT cannot run here (no TensorRT, no GPU). A bad engine file is never 'fallen back' from."""
    kw: dict[str, Any] = {"backend": args.backend, "providers": args.providers, "device": args.device,
                          "threads": args.threads, "pixel": args.threshold_pixel, "image": args.threshold_image,
                          "explain": args.explain}
    try:
        return Pipeline.open(args.engine, **kw)
    except ModelError as e:
        if not isinstance(e.__cause__, BackendUnavailable) or (args.backend or "tensorrt") != "tensorrt":
            raise
        onnx = Path(args.engine).with_suffix(".onnx")
        if args.fallback != "onnx":
            raise ModelError(f"{e}; or add --fallback onnx to run {onnx.name} on ONNX Runtime") from e
        if not onnx.is_file():
            raise ModelError(f"{e}; --fallback onnx: no {onnx.name} beside the engine") from e
        print(f"note: TensorRT cannot run here ({e}); --fallback onnx: running {onnx} on ONNX Runtime",
              file=sys.stderr)
        return Pipeline.open(onnx, **{**kw, "backend": None})


def run(args: argparse.Namespace, s: Settings, stop: threading.Event,
        reload_event: threading.Event | None = None) -> int:
    """Open the model, decide the window, run the session, print the summary."""
    # OpenCV's own warnings for each reconnect attempt would bury the one line this module prints
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    # the threads are the parallelism (decode + prepare beside inference beside drawing); OpenCV's
    # own pool inside each call would compete with ONNX Runtime's threads for the same cores
    cv2.setNumThreads(1)
    with open_pipeline(args) as pipe:
        print(pipe.thresholds.describe(pipe.model.thresholds, pipe.model.path.with_suffix(".yaml").name),
              file=sys.stderr)
        for note in pipe.notes:
            print(f"note: {note}", file=sys.stderr)
        if not args.headless:
            d = display.probe()
            s.window = d.available
            if not d.available:
                print(f"headless: no window ({d.reason})", file=sys.stderr)
        if s.save_ng is not None:
            s.save_ng.mkdir(parents=True, exist_ok=True)
        # the capture prepares frames for the session's model, which a reload may swap
        sessions: list[Session] = []
        capture = make_capture(lambda: sessions[0].pipe if sessions else pipe, s)
        watch = Path(args.engine) if is_deployment(args.engine) else None
        session = Session(pipe, capture, s, stop, reload=lambda: open_pipeline(args), reload_event=reload_event,
                          watch=watch)
        sessions.append(session)
        try:
            session.run()
        finally:
            if session.pipe is not pipe:  # a reloaded model: the `with` closes only the first
                session.pipe.close()
        failed = session.capture.state == "failed"
        if session.inspected or not failed:
            print(session.summary_line(), file=sys.stderr)
        if failed:
            raise SourceError(str(session.capture.status()["error"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args, s = parse(argv)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except UsageError as e:
        if str(e):
            print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: the clean shutdown is stuck, leave now
            raise KeyboardInterrupt
        print(f"{signal.Signals(signum).name}: stopping", file=sys.stderr)
        stop.set()

    reload_event = threading.Event()

    def on_hangup(signum: int, frame: Any) -> None:
        reload_event.set()  # the loop opens the model again beside the running one and swaps it in

    # the loop checks `stop` several times a second, so a signal never cuts a write in half
    handlers: dict[int, Any] = {signal.SIGINT: on_signal, signal.SIGTERM: on_signal}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = on_hangup
    previous = ({sig: signal.signal(sig, h) for sig, h in handlers.items()}
                if threading.current_thread() is threading.main_thread() else {})
    try:
        return run(args, s, stop, reload_event)
    except UsageError as e:  # runtime.pipeline.ExplainUnavailable: --explain that the model cannot draw
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ModelError, BackendError, SourceError, RecorderError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted during shutdown", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())

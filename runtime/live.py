"""The camera's live loop: the inference thread, the main thread's sinks, and the status they report.

runtime.camera parses the command line and calls Session.run; see its docstring for the threads.

    capture = make_capture(pipe, settings)                  # runtime.capture.Capture, prepares frames
    session = Session(pipe, capture, settings, stop_event)
    session.run()                                           # until the source ends, q, max_frames or stop
    session.status()                                        # what /status serves; the summary

A frame is only ever prepared, inferred, judged and drawn by runtime.pipeline (the object batch
inspection uses); this module moves frames between threads and into the sinks.
"""
from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
import weakref
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from core.deployment import published_version
from core.sidecar import SidecarError, update_sidecar
from runtime import overlay as ov
from runtime.capture import Capture
from runtime.keys import View, handle_key
from runtime.meter import LatencyMeter, StageClock, stage_text, stage_times
from runtime.inference_thread import END, Inspector, prepare
from runtime.pipeline import Pipeline, Result
from runtime.reload import Reloader
from runtime.recorder import FrameLog, PictureSaver, RecorderError, VideoRecorder, why
from runtime.reports import _num, model_identity
from runtime.sources import Frame, Reader, Request, Roi, SourceSpec, open_reader
from runtime.stream import Bind, StreamServer

WINDOW = "vae-inspect camera"
PROGRESS_EVERY_S = 10.0  # one status line on stderr this often


# ----------------------------------------------------------------------------- the main thread

@dataclass
class Settings:
    """The run, parsed from the command line (or built by a test or a benchmark)."""
    spec: SourceSpec
    request: Request = dataclasses.field(default_factory=Request)
    roi: Roi | None = None
    loop: bool = False
    realtime: bool = True
    batch: int = 1
    retries: int = 10
    window: bool = False
    record: Path | None = None
    serve: Bind | None = None
    log: Path | None = None
    save_ng: Path | None = None
    snapshots: Path = Path("runs/camera/snapshots")
    max_frames: int | None = None
    explain: str = "anomaly_map"


def make_capture(pipe: Pipeline | Callable[[], Pipeline], s: Settings, opener: Callable[[], Reader] | None = None,
                 backoff: tuple[float, float] = (0.5, 10.0)) -> Capture:
    """The capture thread for s.spec (or `opener`'s readers: a test's fake camera); it crops
    --roi and prepares each frame for the model (`pipe`, or a callable giving the current one: a
    reload swaps the model under a running capture)."""
    current = pipe if callable(pipe) and not isinstance(pipe, Pipeline) else (lambda: pipe)

    def process(frame: Frame) -> None:
        if s.roi is not None:
            frame.image = s.roi.crop(frame.image)
        prepare(frame, current())

    return Capture(opener or (lambda: open_reader(s.spec, s.request)), live=s.spec.live, loop=s.loop,
                   realtime=s.realtime, capacity=2 * s.batch, pace=s.request.fps, retries=s.retries,
                   backoff=backoff, name=s.spec.text, process=process)


def model_info(pipe: Pipeline) -> dict[str, Any]:
    """What names a model in the log, /status and the page: its file, deployment version (None
    outside a deployment folder), backend and sha256."""
    model = pipe.model
    version = published_version(model.path)
    return {"path": str(model.path), "version": version.name if version is not None else None,
            "backend": model.backend.name, "sha256": model_identity(model.sidecar, model.path)}


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds")


def frame_bgr(image: np.ndarray) -> np.ndarray:
    """A frame as captured (BGR, BGRA or gray) -> a new BGR picture to draw on."""
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR) if image.shape[2] == 4 else image.copy()


class Session:
    """The main thread's loop and its sinks; status() is what /status serves.

    `reload`: how to open the model again (runtime.camera's opener); it runs on `reload_event`
    (SIGHUP) and, when `watch` is a deployment folder, when its `current` version changes. The new
    model is opened beside the running one and swapped in between two frames, so the stream never
    stops; a model that fails to open is reported and the running one keeps serving."""

    def __init__(self, pipe: Pipeline, capture: Capture, s: Settings, stop: threading.Event,
                 reload: Callable[[], Pipeline] | None = None, reload_event: threading.Event | None = None,
                 watch: Path | None = None) -> None:
        self.pipe, self.capture, self.s, self.stop = pipe, capture, s, stop
        self.reloader = Reloader(reload, reload_event, watch) if reload is not None else None
        self.retired: list[Pipeline] = []
        self.keep_maps = bool(s.window or s.record or s.serve or s.save_ng)  # pictures need the full-size maps
        self.inspector = Inspector(pipe, capture, s.batch, stop)
        self.meter = LatencyMeter()
        self.clock = StageClock()  # judging, drawing and the sinks, per frame
        self.counts: Counter[str] = Counter({"OK": 0, "NG": 0, "NO VERDICT": 0, "failed": 0})
        self.view = View(pixel=pipe.thresholds.pixel)
        self.inspected = 0
        self.last: tuple[Frame, Result, np.ndarray | None, dict[str, Any]] | None = None  # the last one judged
        self.last_row: dict[str, Any] | None = None  # the last frame's row, failed ones included
        self.started = time.monotonic()
        self.recorder: VideoRecorder | None = None
        self.log: FrameLog | None = None
        self.server: StreamServer | None = None
        self.saver = PictureSaver()
        self.source_state = "connecting"
        self.model = model_info(pipe)
        # each row names the model that judged it: after a reload the old one may still judge
        # the frames it already ran, so the name goes with the Pipeline, not the moment
        self.tags: weakref.WeakKeyDictionary[Pipeline, str] = weakref.WeakKeyDictionary()
        self.tags[pipe] = self.model["version"] or self.model["sha256"][:12]

    # -------------------------------------------------------------- run

    def run(self) -> None:
        """Open the sinks, start the threads and loop until the end; everything is closed on every
        exit path (ExitStack: the threads first, then the files, then the socket)."""
        with ExitStack() as stack:
            stack.callback(self.saver.close)
            if self.s.serve is not None:
                self.server = StreamServer(self.s.serve, self.status).start()
                stack.callback(self.server.close)
                print(f"serving {self.server.url}  (stream: {self.server.url}stream.mjpg, status: "
                      f"{self.server.url}status)", file=sys.stderr, flush=True)
            if self.s.log is not None:
                self.log = FrameLog(self.s.log, self.header())
                stack.callback(self.log.close)
            stack.push(self._close_recorder)
            if self.s.window:
                cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
                stack.callback(cv2.destroyAllWindows)
            stack.callback(self._close_retired)
            if self.reloader is not None:  # after the threads: a reload still opening is waited for, then closed
                stack.callback(self.reloader.close)
            stack.callback(self._stop_threads)
            self.capture.start()
            self.inspector.start()
            self._loop()

    def _loop(self) -> None:
        next_line = time.monotonic() + PROGRESS_EVERY_S
        while not self.stop.is_set() and not self.view.quit:
            try:
                item = self.inspector.results.get(timeout=0.005 if self.s.window else 0.2)
            except queue.Empty:
                item = None
            if item is END:
                break
            if isinstance(item, BaseException):
                raise item
            if item is not None:
                began = time.perf_counter()
                self._finish(item.frame, item.judge(self.keep_maps), item.pipe)
                self.clock.add(time.perf_counter() - began)
                if self.s.max_frames and self.inspected >= self.s.max_frames:
                    break
            if self.s.window:
                self.press(cv2.waitKey(1))
                if cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:  # closed with the mouse
                    break
            self._watch_source()
            self._watch_model()
            if time.monotonic() >= next_line:
                print(self.status_line(), file=sys.stderr, flush=True)
                next_line += PROGRESS_EVERY_S

    def _stop_threads(self) -> None:
        self.stop.set()
        self.capture.stop()
        self.inspector.join(timeout=5.0)

    def _close_recorder(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        """Finalize the recording (an ExitStack exit callback). A recording that cannot be
        finalized is the run's error; when the run already failed (a full disk stopped the log),
        it is said beside that error instead of hiding it."""
        if self.recorder is not None:
            try:
                self.recorder.close()
            except RecorderError as e:
                if exc is None:
                    raise
                print(f"error: {e}", file=sys.stderr, flush=True)
        return False

    def _close_retired(self) -> None:
        for old in self.retired:
            old.close()
        self.retired = []

    def _watch_model(self) -> None:
        """Swap in a reloaded model between two frames (see the class docstring)."""
        new = self.reloader.poll() if self.reloader is not None else None
        if new is None:
            return
        old, self.pipe = self.pipe, new
        self.inspector.pipe = new  # the inference thread reads it once per batch
        self.view = dataclasses.replace(self.view, pixel=new.thresholds.pixel)
        model = new.model
        self.model = {**model_info(new), "reloaded": iso(time.time())}
        self.tags[new] = self.model["version"] or self.model["sha256"][:12]
        if self.log is not None:  # the rows from here on may name it: the log says what it is
            self.log.add({"reload": {"time": self.model["reloaded"], "model": self.model,
                                     "thresholds": self.thresholds()}})
        # the old model may still finish the batch in flight: closed one reload later, or at the end
        self._close_retired()
        self.retired.append(old)
        print(f"reloaded the model: {model.path} ({new.thresholds.describe(model.thresholds)})",
              file=sys.stderr, flush=True)

    # -------------------------------------------------------------- one frame

    def _finish(self, frame: Frame, result: Result | None, pipe: Pipeline) -> None:
        """One frame's row, picture and counts; `pipe`: the model that judged it. `result` None:
        it could not be prepared (frame.error), so there is nothing to draw, only its failed row."""
        ins = result.inspection if result is not None else None
        verdict = ins.verdict if ins is not None else "failed"
        row: dict[str, Any] = {"index": frame.index, "time": iso(frame.wall), **({"file": frame.name} if frame.name else {})}
        row["processing"] = "done" if ins is not None else "failed"
        row.update({**ins.as_row(), "score": _num(ins.score, 8)} if ins is not None else
                   {"verdict": None, "score": None, "area": None})
        row["reason"] = result.error if result is not None else frame.error
        row["model"] = self.tags.get(pipe)
        row["thresholds"] = {"pixel": pipe.thresholds.pixel, "image": pipe.thresholds.image}
        picture = None
        if result is not None and (self.s.window or self.s.record or self.server is not None
                                   or (self.s.save_ng and verdict == "NG")):
            picture = self.picture(frame, result)
            self._show(picture)
        ready = time.monotonic()
        self.meter.add(ready - frame.captured, ready)
        row["latency_ms"] = _num((ready - frame.captured) * 1e3, 3)
        if self.log is not None:
            self.log.add(row)
        if self.s.save_ng and verdict == "NG":
            self.saver.save(self.s.save_ng, f"ng_{frame.index:08d}", frame.image, picture, row)
        if self.server is not None and verdict == "NG" and picture is not None:
            self.server.add_ng(picture, {k: row.get(k) for k in ("index", "time", "score", "file", "model")})
        self.counts[verdict] += 1
        self.inspected += 1
        self.last_row = row
        if result is not None:
            self.last = (frame, result, picture, row)

    def picture(self, frame: Frame, result: Result) -> np.ndarray:
        """The overlay (runtime.pipeline's, as the keys set it) or the raw frame, with the counters."""
        if self.view.overlay:
            if not self.view.mask and result.inspection is not None:
                result = dataclasses.replace(result, inspection=dataclasses.replace(result.inspection, mask=None))
            picture = self.pipe.render(result, self.s.explain)
        else:
            picture = frame_bgr(frame.image)
        return ov.draw_info(picture, self.info(frame.index))

    def info(self, index: int) -> str:
        lat = self.meter.window_percentiles()["p50"]
        text = f"{self.meter.fps():.1f} fps  {lat or 0:.0f} ms  dropped {self.capture.buffer.dropped}  #{index}"
        if not self.pipe.thresholds.any:
            text += "  no thresholds: scores only"
        return text

    def _show(self, picture: np.ndarray, record: bool = True) -> None:
        if record and self.s.record is not None:
            if self.recorder is None:
                fps = self.s.request.fps or self.capture.status()["fps"] or 25.0
                self.recorder = VideoRecorder(self.s.record, fps)
            self.recorder.write(picture)
        if self.server is not None:
            self.server.publish(picture)
        if self.s.window and not self.view.paused:
            cv2.imshow(WINDOW, picture)

    # -------------------------------------------------------------- keys, source, status

    def press(self, key: int) -> None:
        """A key from the window (runtime.keys), applied: the live threshold, a snapshot, a write."""
        new = handle_key(self.view, key)
        if new.pixel != self.view.pixel:
            self.pipe.thresholds = dataclasses.replace(self.pipe.thresholds, pixel=new.pixel, source="live")
            print(f"pixel threshold {new.pixel:.6g} (w writes it to the sidecar)", file=sys.stderr)
        if new.paused and not self.view.paused and self.last is not None and self.last[2] is not None:
            # only the window stops: inspection, the log, the recording and the stream go on
            cv2.imshow(WINDOW, ov.draw_label(self.last[2].copy(), "PAUSED (space: go on)", ov.NONE_COLOR))
        if new.action == "snapshot":
            self.snapshot()
        elif new.action == "write":
            self.write_threshold()
        self.view = dataclasses.replace(new, action=None)

    def snapshot(self) -> None:
        """The last frame as captured, its overlay and its row, into --snapshots."""
        if self.last is None:
            return
        frame, _, picture, row = self.last
        stem = f"snapshot_{frame.index:08d}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.saver.save(self.s.snapshots, stem, frame.image, picture, {**row, "thresholds": self.thresholds()})
        print(f"snapshot: {self.s.snapshots / stem}_*", file=sys.stderr)

    def write_threshold(self) -> None:
        """The live pixel threshold into the model's sidecar (atomic, previous kept as .yaml.bak)."""
        model, pixel = self.pipe.model, self.pipe.thresholds.pixel
        if pixel is None:  # the keys never ask for it then (runtime.keys)
            return
        if model.sidecar is None:
            print("error: nothing written: the model has no sidecar (a .pt checkpoint)", file=sys.stderr)
            return
        version = published_version(model.path)
        if version is not None:  # a rollback must restore exactly what the gate passed
            print(f"error: nothing written: {version} is a published deployment version, never modified; the "
                  "value applies to this run only (keep it with --threshold-pixel, or recalibrate through "
                  "python -m training.retrain)", file=sys.stderr)
            return

        def set_pixel(th: dict[str, Any]) -> dict[str, Any]:
            # the section as the file holds it now, not the copy read at start: a calibration
            # written since (image threshold, rule, date) must not be reverted by this key
            rule = th.get("rule") if isinstance(th.get("rule"), dict) else {}
            return {**th, "pixel": float(pixel), "rule": {**rule, "pixel": f"set by hand in runtime.camera, "
                                                                           f"{iso(time.time())}"}}

        running = ((model.sidecar.get("files") or {}).get(model.path.name) or {}).get("sha256")
        try:  # beside the running model only: a re-export meanwhile replaced model and sidecar together
            model.sidecar = update_sidecar(model.path, thresholds=set_pixel, verify=True, backup=True,
                                           expect_sha256=running)
        except SidecarError as e:
            print(f"error: the threshold was not written: {e}", file=sys.stderr)
            return
        except OSError as e:  # the temporary beside it failed: its errno alone would not say which file
            print(f"error: the threshold was not written to {model.path.with_suffix('.yaml')}: {why(e)}",
                  file=sys.stderr)
            return
        print(f"wrote pixel threshold {pixel:.6g} to {model.path.with_suffix('.yaml')}", file=sys.stderr)

    def _watch_source(self) -> None:
        """Say when the source is lost or back, on stderr and on the picture that viewers see."""
        state = self.capture.state
        if state == self.source_state:
            return
        self.source_state = state
        status = self.capture.status()
        if state == "reconnecting":
            print(f"source lost ({status['error']}): reconnecting", file=sys.stderr, flush=True)
            if self.last is not None and self.last[2] is not None:
                notice = ov.draw_label(self.last[2].copy(), "SOURCE LOST: reconnecting", ov.FAIL_COLOR)
                self._show(notice, record=False)
        elif state == "live" and status["connects"] > 1:
            print(f"source live again (reconnect {status['reconnects']})", file=sys.stderr, flush=True)

    def thresholds(self) -> dict[str, Any]:
        th = self.pipe.thresholds
        out: dict[str, Any] = {"pixel": th.pixel, "image": th.image, "source": th.source}
        if not th.any:
            out["note"] = "no thresholds: scores only, NO VERDICT"
        return out

    def header(self) -> dict[str, Any]:
        s = self.s
        return {"source": s.spec.text, "kind": s.spec.kind, "roi": dataclasses.asdict(s.roi) if s.roi else None,
                "realtime": s.realtime, "batch": s.batch, "model": {**self.model, **self.pipe.describe()},
                "thresholds": self.thresholds(), "started": iso(time.time())}

    def status(self) -> dict[str, Any]:
        """Live counters for /status, the progress line and the summary (thread-safe reads)."""
        source = {"spec": self.s.spec.text, "kind": self.s.spec.kind, **self.capture.status()}
        last = self.last_row
        return {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "source": source, "fps": self.meter.fps(time.monotonic()),
            "frames": {"captured": source["frames"], "inspected": self.inspected, "dropped": source["dropped"]},
            "latency_ms": {**self.meter.window_percentiles(), "window": self.meter.window},
            "latency_run_ms": self.meter.run_percentiles(), "stages_ms_per_frame": self.stages(),
            "verdicts": dict(self.counts),
            "last": {k: last.get(k) for k in ("index", "file", "verdict", "score", "reason")} if last else None,
            "model": {**self.model, "thresholds": self.thresholds()},
            "outputs": {"record": str(self.s.record) if self.s.record else None,
                        "recorded": self.recorder.frames if self.recorder else 0,
                        "log": str(self.s.log) if self.s.log else None, "pictures_saved": self.saver.saved,
                        "error": self.saver.error},
            "stream_clients": self.server.clients if self.server is not None else 0,
        }

    def stages(self, run: bool = False) -> dict[str, Any]:
        """Each thread's time per frame (runtime.meter.StageClock) and the one that bounds the rate."""
        return stage_times({"capture": self.capture.clock, "inference": self.inspector.clock, "main": self.clock}, run)

    def status_line(self) -> str:
        st = self.status()
        lat, v = st["latency_ms"], st["verdicts"]
        ms = "/".join("-" if x is None else f"{x:.0f}" for x in (lat["p50"], lat["p99"]))
        return (f"{st['frames']['inspected']} frames  {st['fps']:.1f} fps  latency p50/p99 {ms} ms  OK {v['OK']}  "
                f"NG {v['NG']}  NO VERDICT {v['NO VERDICT']}  failed {v['failed']}  dropped {st['frames']['dropped']}  "
                f"source {st['source']['state']}")

    def summary_line(self) -> str:
        """The last line of a run: the counters, the latency over the whole run, the recording."""
        run = self.meter.run_percentiles()
        ms = "/".join("-" if x is None else f"{x:.1f}" for x in (run["p50"], run["p99"]))
        recorded = f"; recorded {self.s.record} ({self.recorder.frames} frames)" if self.recorder is not None else ""
        return (f"done: {self.status_line()}; latency over the run p50/p99 {ms} ms; per frame capture/inference/"
                f"main {stage_text(self.stages(run=True))}{recorded}")

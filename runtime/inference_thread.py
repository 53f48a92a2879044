"""The camera's inference thread: frames the capture thread prepared -> (frame, result) for the main
thread, through runtime.pipeline (infer, judge)."""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

from runtime.capture import Capture
from runtime.pipeline import Pipeline, Result, registration_error
from runtime.postprocess import OutputError
from runtime.sources import Frame

END = object()           # the inference thread has nothing more


def inspect_frames(pipe: Pipeline, frames: list[Frame], keep_maps: bool) -> list[tuple[Frame, Result]]:
    """Infer (one batch) and judge frames the capture thread prepared. A frame whose registration
    failed, or whose output is unusable, gets its Result with the reason: it is shown and logged,
    and the run goes on."""
    for f in frames:  # prepared before a reload for another model's input: prepare again
        if f.prepared_for != pipe.spec:
            f.prepared, f.prepared_for = pipe.prepare(f.image, bgr=True), pipe.spec
    good = [f for f in frames if f.prepared.ok]
    outs = iter(pipe.infer([f.prepared for f in good]))
    done = []
    for f in frames:
        p = f.prepared
        if not p.ok:
            done.append((f, Result(p, error=registration_error(p))))
            continue
        out = next(outs)
        try:
            done.append((f, Result(p, out, pipe.judge(p, out, keep_maps=keep_maps))))
        except OutputError as e:
            done.append((f, Result(p, out, error=str(e))))
    return done


class Inspector(threading.Thread):
    """The inference thread: frames from the capture buffer -> (frame, result) on `results`; an
    exception (the backend failed) is passed on for the main thread to raise.

    Realtime, it hands one result at a time and takes the next frame only once the main thread
    has taken that result: a result computed ahead would wait in the queue, and a frame taken
    then is fresher (inference of frame k still overlaps the drawing of frame k - 1). Otherwise
    (--no-realtime) it runs ahead by a few batches, for throughput."""

    def __init__(self, pipe: Pipeline, capture: Capture, batch: int, keep_maps: bool, stop: threading.Event) -> None:
        super().__init__(name="inference", daemon=True)
        self.pipe, self.capture, self.batch, self.keep_maps, self.stop = pipe, capture, batch, keep_maps, stop
        self.results: queue.Queue[Any] = queue.Queue(maxsize=1 if capture.realtime else 2 * batch)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                frames = self.capture.buffer.take(self.batch, timeout=0.1)
                if not frames:
                    if self.capture.buffer.drained:
                        break
                    continue
                for item in inspect_frames(self.pipe, frames, self.keep_maps):
                    self._put(item)
                if self.capture.realtime:
                    while not self.results.empty() and not self.stop.is_set():
                        time.sleep(0.001)  # a poll: the handover is once a frame, the wait a few ms
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which reports it
            self._put(e)
        self._put(END)

    def _put(self, item: Any) -> None:
        while True:  # waits while the main thread is busy or paused; gives up once stopping
            try:
                self.results.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.stop.is_set():
                    return

"""The camera's inference thread: frames the capture thread prepared -> the backend's outputs, for
the main thread to judge (runtime.pipeline's infer here, judge there).

The thread runs the backend and nothing else: it is the stage the camera's rate is bound to, so
every host step is elsewhere (decode and prepare in the capture thread, judge and the sinks in the
main thread) and overlaps the next frame's inference. Judging here cost the line about 1 ms a
frame on the critical path, plus waits for the GIL that the other threads' Python holds
(docs/benchmarks.md, "Camera")."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from core.images import ImageError
from runtime.capture import Capture
from runtime.meter import StageClock
from runtime.pipeline import Pipeline, Result
from runtime.postprocess import OutputError
from runtime.sources import Frame

END = object()           # the inference thread has nothing more


@dataclass
class Inferred:
    """A frame through the backend; `pipe` is the model that ran it (a reload may swap the model
    before the main thread judges it, and a map is judged by its own model's thresholds)."""
    frame: Frame
    pipe: Pipeline
    outputs: dict[str, np.ndarray] | None   # None: registration failed or frame.error, the model was not run

    def judge(self, keep_maps: bool) -> Result | None:
        """The frame's Result: inspected, or with the reason it could not be (registration, an
        unusable output); shown and logged either way, and the run goes on. None for a frame
        that could not even be prepared: `frame.error` says why."""
        if self.frame.error is not None:
            return None
        try:
            return self.pipe.result(self.frame.prepared, self.outputs, keep_maps)
        except OutputError as e:
            return Result(self.frame.prepared, self.outputs, error=str(e))


def prepare(frame: Frame, pipe: Pipeline) -> None:
    """The model's input for a frame read as BGR; a frame that cannot be one (1x1 pixels, a
    layout no model takes) gets `error` instead of stopping the run."""
    try:
        frame.prepared = pipe.prepare(frame.image, bgr=True)
    except (ImageError, cv2.error) as e:
        frame.prepared, frame.error = None, f"frame {frame.index} cannot be inspected ({e})"
    frame.prepared_for = pipe.spec


def infer_frames(pipe: Pipeline, frames: list[Frame]) -> list[Inferred]:
    """Run the frames the capture thread prepared through the backend, as one batch."""
    for f in frames:  # prepared before a reload for another model's input: prepare again
        if f.error is None and f.prepared_for != pipe.spec:
            prepare(f, pipe)
    outs = iter(pipe.infer_registered([f.prepared for f in frames if f.error is None]))
    return [Inferred(f, pipe, next(outs) if f.error is None else None) for f in frames]


class Inspector(threading.Thread):
    """The inference thread: frames from the capture buffer -> Inferred on `results`; an exception
    (the backend failed) is passed on for the main thread to raise.

    Realtime, it hands one result at a time and takes the next frame only once the main thread
    has taken that result: a result computed ahead would wait in the queue, and a frame taken
    then is fresher (inference of frame k still overlaps the judging and drawing of frame k - 1).
    Otherwise (--no-realtime) it runs ahead by a few batches, for throughput."""

    def __init__(self, pipe: Pipeline, capture: Capture, batch: int, stop: threading.Event) -> None:
        super().__init__(name="inference", daemon=True)
        self.pipe, self.capture, self.batch, self.stop = pipe, capture, batch, stop
        self.results: queue.Queue[Any] = queue.Queue(maxsize=1 if capture.realtime else 2 * batch)
        self.clock = StageClock()  # the backend's time per frame inside the loop

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                frames = self.capture.buffer.take(self.batch, timeout=0.1)
                if not frames:
                    if self.capture.buffer.drained:
                        break
                    continue
                began = time.perf_counter()
                done = infer_frames(self.pipe, frames)
                self.clock.add(time.perf_counter() - began, len(frames))
                for item in done:
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

"""The capture thread of the camera runtime: reads a source, reconnects it, fills a frame buffer.

    cap = Capture(lambda: open_reader(spec, request), live=spec.live, process=prepare_for_the_model)
    cap.start()
    frames = cap.buffer.take(1, timeout=0.1)   # the newest frame; older ones were dropped and counted
    cap.status()                               # state (live / reconnecting / ended / failed), counters
    cap.stop()

The capture thread never waits for inference: in realtime mode it keeps one latest-frame slot and
a frame the loop did not take in time is replaced (a drop, counted). With realtime=False (files
and folders only: a camera cannot wait) it keeps a short queue and waits for room instead, so
every frame is inspected, in order. Files and folders play at their own rate (or `pace`) in
realtime mode, as a camera would deliver them.

A live source (camera, URL, GStreamer) that stops delivering is reopened with a backoff that
doubles from `backoff[0]` to `backoff[1]` seconds; `retries` consecutive failed attempts (-1:
forever) end the run. A file or folder that cannot be opened fails at once, and its end is the end
of the run unless `loop` reopens it.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

from runtime.meter import StageClock
from runtime.sources import BadFrame, Frame, FrameError, Reader, SourceError

DEFAULT_PACE = 25.0  # frames/s of a folder played in realtime without a pace


def attempts(n: int) -> str:
    """"1 attempt", "3 attempts": for the message of a source given up on."""
    return f"{n} attempt{'' if n == 1 else 's'}"


class FrameBuffer:
    """Frames between the capture thread and the loop. drop=True: at most `capacity` newest frames,
    an older one is dropped (and counted) for a new one; drop=False: put() waits for room."""

    def __init__(self, capacity: int = 1, drop: bool = True) -> None:
        self.capacity, self.drop = max(1, capacity), drop
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, frame: Frame) -> bool:
        """Add a frame; False when the buffer was closed (the loop is gone) before there was room."""
        with self._cond:
            if self.drop:
                while len(self._items) >= self.capacity:
                    self._items.popleft()
                    self.dropped += 1
            else:
                while len(self._items) >= self.capacity and not self._closed:
                    self._cond.wait(0.5)
            if self._closed:
                return False
            self._items.append(frame)
            self._cond.notify_all()
            return True

    def take(self, n: int, timeout: float) -> list[Frame]:
        """Up to n waiting frames, oldest first, without waiting for more than one: a batch never
        costs latency. [] after `timeout` seconds with nothing, or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            out = [self._items.popleft() for _ in range(min(n, len(self._items)))]
            if out:
                self._cond.notify_all()
            return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def drained(self) -> bool:
        """Closed and empty: no frame will come any more."""
        with self._cond:
            return self._closed and not self._items


class Capture:
    """The capture thread: open (and reopen) a source, read it, fill a FrameBuffer."""

    def __init__(self, opener: Callable[[], Reader], live: bool, loop: bool = False, realtime: bool = True,
                 capacity: int = 1, pace: float | None = None, retries: int = 10,
                 backoff: tuple[float, float] = (0.5, 10.0), name: str = "source",
                 process: Callable[[Frame], None] | None = None) -> None:
        """`process` runs on each frame read in this thread before it is queued (the camera crops
        and prepares it there, beside the decoding and off the inference thread); a FrameError
        from it ends the capture as failed. A frame the reader could not read (BadFrame) is queued
        with its `error` instead, so that it gets its row."""
        if live and not realtime:
            raise ValueError("a live source cannot wait for the pipeline: realtime is required")
        self.opener, self.live, self.loop, self.pace, self.process = opener, live, loop, pace, process
        self.realtime, self.retries, self.backoff, self.name = realtime, retries, backoff, name
        self.buffer = FrameBuffer(capacity if not realtime else 1, drop=realtime)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._state: dict[str, Any] = {"state": "connecting", "frames": 0, "connects": 0, "reconnects": 0,
                                       "error": None, "retry_in_s": None, "fps": None}
        self.reader: Reader | None = None
        self.clock = StageClock()  # reading + `process`, per frame (pacing waits excluded)

    # -------------------------------------------------------------- control

    def start(self) -> "Capture":
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the thread to end and wait for it; a read blocked in a driver is left to finish on
        its own (the thread is a daemon, it cannot hold the process)."""
        self._stop.set()
        self.buffer.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._lock:
            if self._state["state"] not in ("ended", "failed"):
                self._state["state"] = "stopped"

    @property
    def state(self) -> str:
        with self._lock:
            return str(self._state["state"])

    @property
    def finished(self) -> bool:
        """Nothing more will come: the source ended, failed or was stopped."""
        return self.state in ("ended", "failed", "stopped")

    def status(self) -> dict[str, Any]:
        with self._lock:
            s = dict(self._state)
        s["dropped"] = self.buffer.dropped
        return s

    def _set(self, **values: Any) -> None:
        with self._lock:
            self._state.update(values)

    # -------------------------------------------------------------- the thread

    def _run(self) -> None:
        try:
            self._connect_and_read()
        except Exception as e:  # noqa: BLE001 - a bug in a driver or a hook must end the run, not hang it
            self._set(state="failed", error=f"capture failed ({e.__class__.__name__}: {e})")
        finally:
            self.buffer.close()

    def _connect_and_read(self) -> None:
        delay, failures = self.backoff[0], 0
        while not self._stop.is_set():
            try:
                reader = self.opener()
            except SourceError as e:
                failures += 1
                if not self.live:  # a file or folder that cannot be opened will not open later either
                    self._set(state="failed", error=str(e))
                    break
                if not self._retry(failures, delay, str(e), lost=False):
                    break
                delay = min(2 * delay, self.backoff[1])
                continue
            self.reader = reader
            with self._lock:
                self._state.update(state="live", retry_in_s=None, fps=reader.fps, error=None)
                self._state["connects"] += 1
            error = None
            try:
                got = self._pump(reader)
            except FrameError as e:
                self._set(state="failed", error=str(e))
                break
            except Exception as e:  # noqa: BLE001 - a driver's failure is a lost source, reported
                got, error = -1, f"read failed ({e.__class__.__name__}: {str(e).strip()[:200]})"
            finally:
                reader.close()
            if self._stop.is_set():
                break
            if not self.live:
                if got >= 0 and self.loop:
                    continue
                self._set(state="ended" if got >= 0 else "failed", error=error)
                break
            if got > 0:  # it delivered: the next outage starts the backoff again
                delay, failures = self.backoff[0], 0
            failures += 1
            if not self._retry(failures, delay, error or f"{self.name} stopped delivering frames", lost=True):
                break
            delay = min(2 * delay, self.backoff[1])

    def _retry(self, failures: int, delay: float, error: str, lost: bool) -> bool:
        """After a failed (re)connection or a lost source: False when `retries` are used up (the
        state is then failed) or the capture is stopped during the wait of `delay` seconds."""
        if 0 <= self.retries < failures:
            self._set(state="failed", error=f"{error} after {attempts(failures)}", retry_in_s=None)
            return False
        with self._lock:
            self._state.update(state="reconnecting", error=error, retry_in_s=delay)
            self._state["reconnects"] += int(lost)
        return not self._stop.wait(delay)

    def _pump(self, reader: Reader) -> int:
        """Read until the source ends or stops; the number of frames it gave."""
        # a live source delivers at its own rate; a file or folder in realtime mode is paced like one
        pace = None if self.live or not self.realtime else (self.pace or reader.fps or DEFAULT_PACE)
        start, n = time.monotonic(), 0
        while not self._stop.is_set():
            if pace:
                wait = start + n / pace - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
            began = time.perf_counter()
            error = None
            try:
                image = reader.read()
            except BadFrame as e:  # this frame only: it goes on as a failed row, the next one is read
                image, error = None, str(e)
            if image is None and error is None:
                break
            now = time.monotonic()
            with self._lock:
                index = self._state["frames"]
                self._state["frames"] = index + 1
            frame = Frame(index, image, now, time.time(), getattr(reader, "name", None), error=error)
            if self.process is not None and error is None:
                self.process(frame)
            self.clock.add(time.perf_counter() - began)
            if not self.buffer.put(frame):
                break
            n += 1
        return n

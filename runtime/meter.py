"""Live counters of the camera loop: frame rate and end-to-end latency, in constant memory.

    meter = LatencyMeter()
    meter.add(latency_s, done_at)              # once per frame shown / written
    meter.window_percentiles()                 # exact p50 / p99 over the last frames (/status)
    meter.run_percentiles()                    # p50 / p99 since the start, within 1 % (the summary)
    meter.fps()                                # frames per second over the last ~2 s

    clock = StageClock()                       # one per thread of the loop (capture, inference, main)
    clock.add(seconds, frames)                 # the time that thread spent on these frames
    clock.ms_per_frame()                       # over the recent window: the slowest stage bounds the rate

A camera runs for weeks: keeping every latency would grow without bound, so the whole run is a
histogram of log-spaced bins (1 % wide, 10 us .. 1000 s) and only the recent window is exact.
Thread-safe: the HTTP server reads while the loop writes.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

import numpy as np

_LO, _HI, _STEP = 1e-5, 1e3, 1.01   # seconds; bin edges LO * STEP**k
_BINS = math.ceil(math.log(_HI / _LO) / math.log(_STEP)) + 1


class LatencyMeter:
    """Latencies (seconds) and completion times of the frames the loop finished."""

    def __init__(self, window: int = 300, rate_span_s: float = 2.0) -> None:
        self._lock = threading.Lock()
        self.window = window
        self._recent: deque[float] = deque(maxlen=window)
        self._done: deque[float] = deque(maxlen=1000)
        self._span = rate_span_s
        self._hist = np.zeros(_BINS, np.int64)
        self.count = 0

    def add(self, latency_s: float, done_at: float) -> None:
        """One finished frame: its capture -> ready latency, and when it was ready (monotonic)."""
        k = int(math.log(max(latency_s, _LO) / _LO) / math.log(_STEP))
        with self._lock:
            self._recent.append(latency_s)
            self._done.append(done_at)
            self._hist[min(k, _BINS - 1)] += 1
            self.count += 1

    def fps(self, now: float | None = None) -> float:
        """Frames finished per second over the last `rate_span_s` (0 when fewer than two, or
        when the newest is older than that: a stalled source reads 0, not its last rate)."""
        with self._lock:
            if len(self._done) < 2 or (now is not None and now - self._done[-1] > self._span):
                return 0.0
            last = self._done[-1]
            times = [t for t in self._done if last - t <= self._span]
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def window_percentiles(self) -> dict[str, float | None]:
        """{"p50", "p99"} in milliseconds over the recent window (None before the first frame)."""
        with self._lock:
            values = np.array(self._recent, np.float64)
        if values.size == 0:
            return {"p50": None, "p99": None}
        p50, p99 = np.percentile(values, [50, 99]) * 1e3
        return {"p50": float(p50), "p99": float(p99)}

    def run_percentiles(self) -> dict[str, float | None]:
        """{"p50", "p99"} in milliseconds since the start, from the histogram (bin centres, so
        within half a bin, 0.5 %, of the exact value)."""
        with self._lock:
            hist = self._hist.copy()
        total = int(hist.sum())
        if total == 0:
            return {"p50": None, "p99": None}
        cum = np.cumsum(hist)
        out: dict[str, float | None] = {}
        for name, q in (("p50", 0.50), ("p99", 0.99)):
            k = int(np.searchsorted(cum, q * total))
            out[name] = _LO * _STEP ** (k + 0.5) * 1e3
        return out


class StageClock:
    """The time one stage of the loop (a thread) spends per frame, waits for its input excluded
    (a live camera's read is the wait for its next frame: there the capture stage is the camera's
    own frame interval, and a camera that bounds the rate is named as such). The loop runs at the
    rate of its slowest stage: /status names it, so an engineer sees whether the model, the host
    work around it or the source bounds the line's rate."""

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque(maxlen=window)
        self.seconds, self.frames = 0.0, 0

    def add(self, seconds: float, frames: int = 1) -> None:
        with self._lock:
            self._recent.append((seconds, frames))
            self.seconds += seconds
            self.frames += frames

    def ms_per_frame(self, run: bool = False) -> float | None:
        """Milliseconds per frame over the recent window (run=True: since the start); None before
        the first frame."""
        with self._lock:
            seconds, frames = (self.seconds, self.frames) if run else (
                sum(s for s, _ in self._recent), sum(n for _, n in self._recent))
        return seconds / frames * 1e3 if frames else None


def stage_times(clocks: dict[str, StageClock], run: bool = False) -> dict[str, Any]:
    """{stage: ms per frame, ..., "bound": the slowest stage's name} for /status and the bench."""
    out = {k: c.ms_per_frame(run) for k, c in clocks.items()}
    known = {k: v for k, v in out.items() if v is not None}
    return {**{k: None if v is None else round(v, 3) for k, v in out.items()},
            "bound": max(known, key=known.__getitem__) if known else None}


def stage_text(times: dict[str, Any]) -> str:
    """stage_times as one line: '5.0/14.1/1.9 ms (bound: inference)', stages in their order."""
    stages = [k for k in times if k != "bound"]
    ms = "/".join("-" if times[k] is None else f"{times[k]:.1f}" for k in stages)
    return f"{ms} ms (bound: {times['bound'] or '-'})"

"""Reloading the camera's model while it runs: on SIGHUP, or when a deployment folder's `current`
moves to another version (training.retrain, --rollback)."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable

from core.deployment import Deployment, DeploymentError
from runtime.pipeline import Pipeline


class Reloader:
    """Opens the model again in a background thread when asked (an Event: SIGHUP) or when the
    deployment folder `watch` points `current` at another version (checked every WATCH_EVERY_S);
    poll() hands over a freshly opened Pipeline once, between frames."""
    WATCH_EVERY_S = 2.0

    def __init__(self, reload: Callable[[], Pipeline], event: threading.Event | None, watch: Path | None) -> None:
        self.reload, self.event, self.watch = reload, event or threading.Event(), watch
        self.version = self._version()
        self.next_check = time.monotonic() + self.WATCH_EVERY_S
        self.ready: Pipeline | None = None
        self.busy: threading.Thread | None = None
        self._lock = threading.Lock()
        self.closed = False

    def _version(self) -> str | None:
        if self.watch is None:
            return None
        try:
            cur = Deployment(self.watch).current()
        except DeploymentError:
            return None
        return cur.name if cur is not None else None

    def poll(self) -> Pipeline | None:
        with self._lock:
            ready, self.ready = self.ready, None
        if ready is not None:
            return ready
        if self.busy is not None and self.busy.is_alive():
            return None
        why = None
        if self.event.is_set():
            self.event.clear()
            why = "SIGHUP"
        elif self.watch is not None and time.monotonic() >= self.next_check:
            self.next_check = time.monotonic() + self.WATCH_EVERY_S
            version = self._version()
            if version is not None and version != self.version:
                why, self.version = f"{self.watch}: current -> {version}", version
        if why is not None:
            print(f"reloading the model ({why})", file=sys.stderr, flush=True)
            self.busy = threading.Thread(target=self._open, name="reload", daemon=True)
            self.busy.start()
        return None

    def _open(self) -> None:
        try:
            opened = self.reload()
        except Exception as e:  # noqa: BLE001 - any failure: the running model keeps serving
            print(f"error: reload failed, the running model keeps serving: {str(e).splitlines()[0]}",
                  file=sys.stderr, flush=True)
            return
        with self._lock:
            if not self.closed:
                self.ready = opened
                return
        opened.close()  # the run ended while it opened (close() gave up waiting): nobody will swap it in

    def close(self, timeout: float = 10.0) -> None:
        """At the end of the run: wait for a reload in flight (a thread left inside a backend's C
        code while the interpreter exits can crash it; SIGTERM during a reload is the case) and
        close a model opened but never swapped in. A second signal interrupts the wait."""
        with self._lock:
            self.closed = True
        if self.busy is not None:
            self.busy.join(timeout)
        with self._lock:
            ready, self.ready = self.ready, None
        if ready is not None:
            ready.close()

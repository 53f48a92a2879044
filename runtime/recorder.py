"""What the camera writes to disk: the overlay video, the per-frame JSONL log, NG frames and snapshots.

    rec = VideoRecorder("out.mp4", fps=25)    # .mp4: mp4v, .avi: MJPG, .mkv: FFV1 (lossless)
    rec.write(picture)                         # BGR; the first picture fixes the size
    rec.close()                                # finalizes the file and renames it into place

    log = FrameLog("frames.jsonl", header)     # one line per inspected frame, flushed as written
    saver = PictureSaver()                     # NG frames and snapshots, written in the background

A recording is written under a temporary name beside the target and renamed when it is
finalized, so `out.mp4` is always a complete, playable file (an interrupted run that could not
finalize leaves only the hidden temporary). Pictures and JSON are written atomically.
"""
from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from core.files import json_text, write_json
from runtime.reports import save_image

# container -> codec OpenCV's FFmpeg writes without extra libraries (h264 needs an encoder the
# wheel does not ship); the container's extension decides
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}


class RecorderError(RuntimeError):
    """The recording cannot be written (unknown container, no encoder, unwritable folder)."""


def check_record_path(path: Path) -> None:
    """Usage checks before anything opens: a container OpenCV can write, in an existing folder."""
    if path.suffix.lower() not in CODECS:
        raise ValueError(f"--record {path}: use one of {', '.join(CODECS)} (the extension picks the codec)")
    if not path.parent.is_dir():
        raise ValueError(f"--record {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"--record {path}: is a folder")


class VideoRecorder:
    """cv2.VideoWriter with a temporary name, a fixed frame size and a guaranteed finalize."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, picture: np.ndarray) -> None:
        h, w = picture.shape[:2]
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*CODECS[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                self.writer = None
                raise RecorderError(f"--record {self.path}: OpenCV cannot write {CODECS[self.path.suffix.lower()]} "
                                    f"into {self.path.suffix} here (or the folder is not writable)")
            self.size = (w, h)
        if (w, h) != self.size:  # a reconnected camera in another mode: the file keeps its first size
            picture = cv2.resize(picture, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(picture)
        self.frames += 1

    def close(self) -> None:
        """Finalize (the container's index is written on release) and move into place."""
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        os.replace(self.tmp, self.path)


class FrameLog:
    """The JSONL log: a header line ({"header": ...}), then one line per inspected frame (and a
    {"reload": ...} line where another model takes over), each flushed at once so a crash loses
    at most the line being written. Appended to: a service that restarts keeps its history, each
    run starting with its own header line."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run, closed by close()
        self.add({"header": header})

    def add(self, row: dict[str, Any]) -> None:
        self.file.write(json_text(row, indent=None) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class PictureSaver:
    """A background thread for pictures (NG frames, snapshots): a PNG of a 1080p frame takes tens
    of milliseconds, which must not be added to the next frame's latency. The queue is bounded and
    put() waits when it is full: evidence of a defect is never dropped, and memory stays bounded."""

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="pictures", daemon=True)
        self.saved = 0
        self.error: str | None = None

    def save(self, folder: Path, stem: str, raw: np.ndarray, overlay: np.ndarray | None,
             row: dict[str, Any]) -> None:
        """folder/stem_raw.png (the frame as captured), stem_overlay.jpg and stem.json (its row)."""
        def job() -> None:
            save_image(folder / f"{stem}_raw.png", raw)
            if overlay is not None:
                save_image(folder / f"{stem}_overlay.jpg", overlay)
            write_json(folder / f"{stem}.json", row)
        if not self._thread.is_alive():  # started by the first picture: most runs save none
            self._thread.start()
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
                self.saved += 1
            except (OSError, cv2.error) as e:  # a full disk: say so in the status, keep inspecting
                self.error = f"cannot save a picture ({e.__class__.__name__}: {e})"

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)


def read_log(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The last run of a FrameLog: (its header, its frame rows; reload records left out)."""
    header: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if "header" in row:
                header, rows = row["header"], []
            elif "reload" not in row:
                rows.append(row)
    return header, rows

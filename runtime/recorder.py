"""What the camera writes to disk: the overlay video, the per-frame JSONL log, NG frames and snapshots.

    rec = VideoRecorder("out.mp4", fps=25)    # .mp4: mp4v, .avi: MJPG, .mkv: FFV1 (lossless)
    rec.write(picture)                         # BGR; the first picture fixes the size
    rec.close()                                # finalizes the file and renames it into place

    log = FrameLog("frames.jsonl", header)     # one line per inspected frame, flushed as written
    saver = PictureSaver()                     # NG frames and snapshots, written in the background

Whatever happens, each file ends valid. A recording is written as `out.partial.mp4` beside the
target and renamed to `out.mp4` once it is finalized and plays, so `out.mp4` is always a complete,
playable file; the recorder stops (finalizing what it has) while the disk still has room for the
container's index, and a recording that cannot be finalized keeps its .partial name. The log ends
on a whole line: a line cut by a full disk is taken back, and a torn last line a killed run left
is cut before the next run appends. Every message about a full disk names the file. Pictures and
JSON are written atomically.
"""
from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from core.files import write_json
from runtime.reports import jsonl_line, save_image

# container -> codec OpenCV's FFmpeg writes without extra libraries (h264 needs an encoder the
# wheel does not ship); the container's extension decides
CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}


class RecorderError(RuntimeError):
    """The recording or the log cannot be written (unknown container, no encoder, unwritable
    folder, a full disk); the message names the file."""


# FFmpeg's writes fail without a word when the disk is full, and an mp4 without its index (written
# last, on release) does not play: stop while this much is left, checked once a second
RESERVE_BYTES = 32 << 20
CHECK_EVERY_S = 1.0


def free_space(folder: Path) -> int:
    """Bytes the current user may still write on the disk holding `folder`."""
    return shutil.disk_usage(folder).free


def why(e: OSError) -> str:
    """An OSError's reason with its errno's name: 'No space left on device (ENOSPC)'."""
    name = errno.errorcode.get(e.errno or 0)
    return f"{e.strerror or e}" + (f" ({name})" if name else "")


def plays(path: Path) -> bool:
    """Whether a video file opens and gives its first frame."""
    cap = cv2.VideoCapture(str(path))
    try:
        return bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()


def check_record_path(path: Path) -> None:
    """Usage checks before anything opens: a container OpenCV can write, in an existing folder."""
    if path.suffix.lower() not in CODECS:
        raise ValueError(f"--record {path}: use one of {', '.join(CODECS)} (the extension picks the codec)")
    if not path.parent.is_dir():
        raise ValueError(f"--record {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"--record {path}: is a folder")


class VideoRecorder:
    """cv2.VideoWriter under a .partial name (the container's extension kept last, which is how
    OpenCV picks the container), a fixed frame size, a watch on the free space and a finalize
    that is checked."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self.partial = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.next_check = 0.0

    def write(self, picture: np.ndarray) -> None:
        """Add a frame. RecorderError when it cannot be written; on a full disk the recording is
        finalized first, so what it holds plays."""
        if time.monotonic() >= self.next_check:
            self.next_check = time.monotonic() + CHECK_EVERY_S
            free = free_space(self.path.parent)
            if free < RESERVE_BYTES:
                frames = self.frames
                self.close()
                kept = f"{self.path} plays" if frames else "nothing was recorded"
                raise RecorderError(f"--record {self.path}: the disk is full ({free >> 20} MB left, under the "
                                    f"{RESERVE_BYTES >> 20} MB that finishing the file needs; ENOSPC next): recording "
                                    f"stopped after {frames} frames, {kept}; free space, then start again")
        h, w = picture.shape[:2]
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*CODECS[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, (w, h))
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
        """Finalize (the container's index is written on release) and move into place once the
        file plays; RecorderError, naming the .partial file left, when it does not."""
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        if not plays(self.partial):
            raise RecorderError(f"--record {self.path}: the recording could not be finalized (a full disk?); what "
                                f"was written is in {self.partial}, which may not play")
        os.replace(self.partial, self.path)


class FrameLog:
    """The JSONL log: a header line ({"header": ...}), then one line per inspected frame (and a
    {"reload": ...} line where another model takes over), each written at once (unbuffered) so a
    crash loses at most the line being written. Appended to: a service that restarts keeps its
    history, each run starting with its own header line on a line of its own."""

    TAIL = 1 << 16  # a torn line is one row or header: far shorter

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            self._repair()
            self.add({"header": header})
        except BaseException:
            self.close()
            raise

    def _repair(self) -> None:
        """A run killed mid-line (or one a full disk stopped before this class took its line
        back) left a last line without its end: cut it, or end it when it is whole, so this run's
        header is a line of its own and every line stays readable."""
        with open(self.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - self.TAIL))
            tail = f.read()
        if not tail or tail.endswith(b"\n"):
            return
        last = tail.rsplit(b"\n", 1)[-1]
        try:
            json.loads(last)
        except ValueError:
            if len(last) == self.TAIL:  # not a torn row: a line this long is no log's, never cut
                self._write(b"\n")
                return
            os.ftruncate(self._fd(), size - len(last))
            print(f"note: --log {self.path}: cut a torn last line ({len(last)} bytes) that an earlier run left "
                  "(killed mid-write, or a full disk)", file=sys.stderr)
            return
        self._write(b"\n")

    def _fd(self) -> int:
        if self.fd is None:
            raise RecorderError(f"--log {self.path}: written after close")
        return self.fd

    def _write(self, data: bytes) -> None:
        fd = self._fd()
        view = memoryview(data)
        while view:  # a write may take only part of the line (a disk filling up)
            view = view[os.write(fd, view):]

    def add(self, row: dict[str, Any]) -> None:
        """One line; RecorderError naming the file when it cannot be written (a full disk): the
        part of the line that was written is taken back, so the log ends on a whole line."""
        end = os.fstat(self._fd()).st_size
        try:
            self._write(jsonl_line(row).encode("utf-8"))
        except OSError as e:
            try:
                os.ftruncate(self._fd(), end)
            except OSError:
                pass  # the line stays torn; the next run's _repair cuts it
            raise RecorderError(f"--log {self.path}: {why(e)}: the log ends with its last whole line; free space, "
                                "then start again") from e

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class PictureSaver:
    """A background thread for pictures (NG frames, snapshots): a PNG of a 1080p frame takes tens
    of milliseconds, which must not be added to the next frame's latency. The queue is bounded and
    put() waits when it is full: evidence of a defect is never dropped, and memory stays bounded."""

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[tuple[Path, Callable[[], None]] | None] = queue.Queue(depth)
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
        self._queue.put((folder / stem, job))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            stem, job = item
            try:
                job()
                self.saved += 1
            except (OSError, cv2.error) as e:  # a full disk: say so in the status, keep inspecting
                self.error = f"cannot save {stem}_*: {why(e) if isinstance(e, OSError) else e}"

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

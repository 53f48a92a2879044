"""Frame sources of the camera runtime: what --source names, and readers that give its frames.

    spec = parse_source("0")           # camera index, video file, folder of frames, URL, GStreamer pipeline
    reader = open_reader(spec, Request(width=1280, fps=30))   # SourceError when it cannot be opened
    image = reader.read()              # BGR (gray from a gray file); None: the end, or a lost source
    reader.close()

runtime.capture reads them in its thread (reconnects, pacing, the latest-frame slot). A live
source (camera, URL, GStreamer) delivers at its own rate and has no end; a file or a folder can be
paced like one, or read as fast as the model takes its frames. Network streams get a 5 s open and
read timeout, so an unplugged camera is noticed instead of blocking a read for FFmpeg's 30 s.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from core.images import ImageError, decode_file, is_image_name

LIVE_KINDS = ("camera", "url", "gstreamer")
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
NETWORK_TIMEOUT_MS = 5000


class SourceError(RuntimeError):
    """A source that cannot be opened or read; one line naming it."""


class FrameError(ValueError):
    """A frame the run cannot use as configured (e.g. --roi outside it): the run stops, no retry."""


class BadFrame(Exception):
    """One frame of a source that cannot be read (a folder's unreadable file): that frame is a
    failed row with this reason, and the run goes on, as batch inspection does."""


@dataclass(frozen=True)
class Roi:
    """--roi x,y,w,h: the part of each frame that is inspected, in the source's pixels."""
    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str) -> "Roi":
        """'x,y,w,h' -> Roi; ValueError (a usage error) for anything else."""
        try:
            x, y, w, h = (int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--roi {text!r}: expected x,y,w,h in pixels, e.g. 100,50,640,480") from None
        if x < 0 or y < 0 or w < 2 or h < 2:
            raise ValueError(f"--roi {text!r}: x and y must be >= 0, w and h >= 2")
        return cls(x, y, w, h)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The region of one frame (a view); FrameError when it does not fit inside."""
        height, width = image.shape[:2]
        if self.x + self.w > width or self.y + self.h > height:
            raise FrameError(f"--roi {self.x},{self.y},{self.w},{self.h} does not fit the {width}x{height} frame")
        return image[self.y:self.y + self.h, self.x:self.x + self.w]


@dataclass(frozen=True)
class SourceSpec:
    """What --source names: kind is camera, file, folder, url or gstreamer."""
    kind: str
    target: str | int
    text: str

    @property
    def live(self) -> bool:
        """Frames come when the device sends them: no waiting, no end, reconnect when lost."""
        return self.kind in LIVE_KINDS


@dataclass(frozen=True)
class Request:
    """What the user asked of the source: capture size and rate (a camera may ignore them), and
    the pace of a file or folder in realtime mode."""
    width: int | None = None
    height: int | None = None
    fps: float | None = None


@dataclass
class Frame:
    index: int          # frames read from the source since the start, dropped ones included
    image: np.ndarray | None  # BGR (or gray from a gray file), as OpenCV decodes it; None: unreadable
    captured: float     # time.monotonic() when the read returned: the start of the latency
    wall: float         # time.time() of the same moment, for logs
    name: str | None = None  # the file of a folder source
    prepared: Any = None     # what Capture's `process` made of it (the camera: the model's input)
    prepared_for: Any = None  # the InputSpec it was prepared for (a reloaded model may want another)
    error: str | None = None  # why it cannot be inspected (unreadable, too small): its row says so


def gstreamer_available() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key == "GStreamer":
            return value.strip().upper().startswith("YES")
    return False


def parse_source(text: str) -> SourceSpec:
    """--source text -> SourceSpec. ValueError (a usage error) for a path that does not exist or a
    GStreamer pipeline this OpenCV build cannot run."""
    t = text.strip()
    if t.isdigit():
        return SourceSpec("camera", int(t), text)
    if t.lower().startswith(URL_SCHEMES):
        return SourceSpec("url", t, text)
    if " ! " in t:
        if not gstreamer_available():
            raise ValueError("--source: a GStreamer pipeline needs OpenCV built with GStreamer, and this one is not "
                             "(cv2.getBuildInformation(): GStreamer NO); give a camera index, file or URL instead")
        return SourceSpec("gstreamer", t, text)
    p = Path(t)
    if p.is_dir():
        return SourceSpec("folder", str(p), text)
    if p.is_file():
        return SourceSpec("file", str(p), text)
    raise ValueError(f"--source {text}: no such file or folder (a camera is a number, e.g. 0; a stream a URL)")


class Reader(Protocol):
    fps: float | None  # the source's own frame rate when it declares one

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end of a file / when a live source stops delivering;
        BadFrame for one frame that cannot be read while the next ones can."""
        ...

    def close(self) -> None: ...


class VideoReader:
    """cv2.VideoCapture over a camera index, a file, a URL or a GStreamer pipeline."""

    def __init__(self, spec: SourceSpec, request: Request) -> None:
        if spec.kind == "gstreamer":
            cap = cv2.VideoCapture(str(spec.target), cv2.CAP_GSTREAMER)
        elif spec.kind == "url":
            cap = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS])
        elif spec.kind == "camera" and sys.platform.startswith("linux"):
            cap = cv2.VideoCapture(int(spec.target), cv2.CAP_V4L2)  # CAP_ANY would also try FFmpeg and Orbbec
        else:
            cap = cv2.VideoCapture(spec.target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {spec.kind} {spec.text}")
        if spec.kind == "camera":  # requests only: the driver picks the nearest mode it has
            for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, request.width), (cv2.CAP_PROP_FRAME_HEIGHT, request.height),
                                (cv2.CAP_PROP_FPS, request.fps)):
                if value:
                    cap.set(prop, float(value))
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps < 1000 else None
        self.cap = cap

    def read(self) -> np.ndarray | None:
        ok, image = self.cap.read()
        return image if ok and image is not None else None

    def close(self) -> None:
        self.cap.release()


class FolderReader:
    """The images of a folder in name order, decoded as stored (a gray file stays gray, as batch
    inspection reads it). An unreadable file is a BadFrame, not the end of the run."""

    fps = None

    def __init__(self, spec: SourceSpec) -> None:
        folder = Path(str(spec.target))
        try:
            names = sorted(n for n in os.listdir(folder) if is_image_name(n))
        except OSError as e:
            raise SourceError(f"cannot list folder {spec.text} ({e.strerror or e})") from e
        if not names:
            raise SourceError(f"folder {spec.text} holds no images")
        self.paths = [folder / n for n in names]
        self.position = 0

    @property
    def name(self) -> str | None:
        """The file the last frame came from."""
        return self.paths[self.position - 1].name if self.position else None

    def read(self) -> np.ndarray | None:
        if self.position >= len(self.paths):
            return None
        self.position += 1
        try:
            return decode_file(self.paths[self.position - 1])
        except ImageError as e:
            raise BadFrame(str(e)) from e

    def close(self) -> None:
        pass


def open_reader(spec: SourceSpec, request: Request) -> Reader:
    """The reader for a parsed source; SourceError when it cannot be opened."""
    return FolderReader(spec) if spec.kind == "folder" else VideoReader(spec, request)

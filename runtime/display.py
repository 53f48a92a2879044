"""Can this process open an OpenCV window? Asked once, before the camera or a viewer calls imshow.

The project depends on the GUI wheel (`opencv-python`, Qt) so that a window opens where a display
exists. Without one, its Qt backend does not raise: it prints "could not connect to display" and
aborts the whole process. So the question is answered in a throw-away child process (about half
a second, once), and the caller falls back to writing video or images when the answer is no.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import cv2

_PROBE = "import cv2, numpy; cv2.namedWindow('probe'); cv2.imshow('probe', numpy.zeros((8, 8), numpy.uint8)); " \
         "cv2.waitKey(1); cv2.destroyAllWindows()"


@dataclass(frozen=True)
class Display:
    available: bool
    reason: str   # why not, or which display


def gui_backend() -> str:
    """The GUI backend OpenCV was built with ('QT5', 'GTK3', 'WIN32UI', ...), or 'NONE' (headless wheel)."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key == "GUI":
            return value.strip() or "NONE"
    return "NONE"


def probe(timeout_s: float = 10.0) -> Display:
    """Whether cv2.imshow works here, found without risking this process."""
    backend = gui_backend()
    if backend == "NONE":
        return Display(False, "OpenCV was built without a GUI (the headless wheel); "
                              "`pip install opencv-python` for windows")
    if sys.platform.startswith("linux"):
        name = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        if not name:
            return Display(False, "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)")
    else:
        name = sys.platform
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Display(False, f"opening a window on {name} did not finish within {timeout_s:.0f} s")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[0]
        return Display(False, f"cannot open a window on {name} ({backend}): {last}")
    return Display(True, f"{name} ({backend})")

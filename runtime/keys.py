"""The camera window's keys, as a pure function of the view state (tested without a window).

    view = View(pixel=pipe.thresholds.pixel)
    view = handle_key(view, cv2.waitKey(1))

q / Esc quit, space pause the window (inspection goes on), o overlay on/off, m mask outline on/off, s snapshot, [ and ] move the
pixel threshold by 5 % down / up, w write it to the model's sidecar. `action` (snapshot, write)
asks the loop to do something once; the loop clears it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

THRESHOLD_STEP = 1.05   # [ and ]: one press moves the pixel threshold by 5 %


@dataclass(frozen=True)
class View:
    """What the window shows, and what a key asked for. `action` (snapshot / write) is done once
    by the loop, which then clears it."""
    paused: bool = False
    overlay: bool = True
    mask: bool = True
    quit: bool = False
    pixel: float | None = None
    action: str | None = None


def handle_key(view: View, key: int) -> View:
    """The window's keys, as a pure function (cv2.waitKey's code; -1: none)."""
    if key < 0:
        return view
    ch = chr(key & 0xFF)
    if ch in ("q", "\x1b"):
        return dataclasses.replace(view, quit=True)
    if ch == " ":
        return dataclasses.replace(view, paused=not view.paused)
    if ch == "o":
        return dataclasses.replace(view, overlay=not view.overlay)
    if ch == "m":
        return dataclasses.replace(view, mask=not view.mask)
    if ch == "s":
        return dataclasses.replace(view, action="snapshot")
    if ch in "[]" and view.pixel is not None:
        return dataclasses.replace(view, pixel=view.pixel * (THRESHOLD_STEP if ch == "]" else 1 / THRESHOLD_STEP))
    if ch == "w" and view.pixel is not None:
        return dataclasses.replace(view, action="write")
    return view

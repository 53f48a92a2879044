"""The window probe answers instead of aborting the process on a machine without a display."""
from __future__ import annotations

import sys

import pytest

from runtime import display


def test_no_display_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("DISPLAY only decides on Linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    d = display.probe()
    assert not d.available
    assert "display" in d.reason or "GUI" in d.reason


def test_a_bad_display_aborts_only_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    if not sys.platform.startswith("linux") or display.gui_backend() == "NONE":
        pytest.skip("needs the GUI wheel on Linux")
    monkeypatch.setenv("DISPLAY", ":987")   # no X server there: Qt aborts the child, not us
    d = display.probe()
    assert not d.available
    assert ":987" in d.reason


def test_headless_build_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(display, "gui_backend", lambda: "NONE")
    d = display.probe()
    assert not d.available and "headless" in d.reason


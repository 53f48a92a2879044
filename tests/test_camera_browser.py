"""A real browser opens the camera's page: headless Chromium (Debian's `chromium`, which .ci/run
installs) takes a screenshot, and the live image must be in it where the <img> is. Skipped where
no Chromium is installed."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_camera_real import hashed_stub, served_url, start_camera

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
W, H = 320, 200          # the frames' size: the <img> shows them 1:1 in an 800x600 window
BACKGROUND = (17, 17, 17)  # the page's #111


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium here (CI installs Debian's chromium: see .ci/run)")


def test_browser_shows_the_live_image(tmp_path: Path) -> None:
    chromium = browser()
    model = hashed_stub(tmp_path / "model", size=32, thresholds={"pixel": 0.6, "image": 0.6})
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # textured frames with a moving bright part: nothing like the dark page
        img = rng.integers(40, 140, (H, W, 3), dtype=np.uint8)
        cv2.circle(img, (60 + 40 * i, 100), 25, (255, 255, 255), -1)
        cv2.imwrite(str(frames / f"{i}.png"), img)
    proc, err = start_camera(["--engine", str(model), "--source", str(frames), "--loop", "--fps", "10",
                              "--headless", "--serve", "127.0.0.1:0"], tmp_path)
    try:
        url = served_url(proc, err)
        shot = tmp_path / "page.png"
        headless = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,600",
                    "--virtual-time-budget=3000"]
        run = subprocess.run(headless + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=60)
        assert shot.exists(), run.stderr[-2000:]
        dom = subprocess.run(headless + ["--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
        assert "source live" in dom and " fps " in dom  # the page's script fetched /status and shows the counters
        assert "(bound: " in dom  # and which thread bounds the rate
    finally:
        proc.terminate()
        proc.wait(30)
    page = cv2.imread(str(shot))
    content = np.any(np.abs(page.astype(int) - BACKGROUND) > 12, axis=2)
    rows, cols = np.where(content[:H + 3])  # the image is at the top; the counters' text starts 6 px below it
    assert rows.size, "the page shows no image"
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    assert abs((bottom - top + 1) - H) <= 4 and abs((right - left + 1) - W) <= 4, (top, bottom, left, right)
    live = page[top:bottom + 1, left:right + 1]
    assert live.std() > 20  # the frame itself (noise, a bright disc, the overlay), not a flat placeholder

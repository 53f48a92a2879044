"""A real browser opens the camera's page: headless Chromium (Debian's `chromium`, which .ci/run
installs) takes screenshots. The live image must be in it where the <img> is, beside a panel with
the source's health, the model and thresholds in force and the last NG frames as thumbnails; the
link a thumbnail's click makes (#ng=ID) shows that frame enlarged. Skipped where no Chromium is
installed."""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_camera_real import hashed_stub, served_url, start_camera, wait_for

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
W, H = 320, 200          # the frames' size: the <img> shows them 1:1
WINDOW = (1100, 700)     # the live view left of the 300-px panel
PANEL = 300
BACKGROUND = (17, 17, 17)  # the page's #111


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium here (CI installs Debian's chromium: see .ci/run)")


def test_browser_shows_the_live_image_the_ng_history_and_what_is_in_force(tmp_path: Path) -> None:
    chromium = browser()
    model = hashed_stub(tmp_path / "model", size=32, thresholds={"pixel": 0.6, "image": 0.8})
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # textured frames with a moving part: bright (NG), dim (over the pixel threshold only: OK), none
        img = rng.integers(40, 140, (H, W, 3), dtype=np.uint8)
        if i % 3:
            cv2.circle(img, (60 + 40 * i, 100), 25, (255, 255, 255) if i % 3 == 1 else (185, 185, 185), -1)
        cv2.imwrite(str(frames / f"{i}.png"), img)
    # 4 frames/s: the history's 8 NG pictures last long enough for the browser to load them
    proc, err = start_camera(["--engine", str(model), "--source", str(frames), "--loop", "--fps", "4",
                              "--headless", "--serve", "127.0.0.1:0"], tmp_path)

    def status() -> dict:
        with urllib.request.urlopen(url + "status", timeout=5) as r:
            return json.loads(r.read())

    try:
        url = served_url(proc, err)
        wait_for(lambda: len(status()["recent_ng"]) >= 2, 60, "two NG frames", proc, err)
        headless = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                    "--virtual-time-budget=3000"]
        shot, big = tmp_path / "page.png", tmp_path / "enlarged.png"
        run = subprocess.run(headless + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=60)
        assert shot.exists(), run.stderr[-2000:]
        dom = subprocess.run(headless + ["--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
        newest = status()["recent_ng"][0]
        run = subprocess.run(headless + [f"--screenshot={big}", f"{url}#ng={newest['id']}"], capture_output=True,
                             text=True, timeout=60)
        assert big.exists(), run.stderr[-2000:]
    finally:
        proc.terminate()
        proc.wait(30)
    assert "source live" in dom and " fps " in dom  # the page's script fetched /status and shows the counters
    assert "(bound: " in dom  # and which thread bounds the rate
    assert 'class="box live"' in dom and "dropped 0  reconnects 0" in dom  # the source's health
    assert "stub.onnx  onnxruntime  sha256 " in dom and "pixel 0.6000  image 0.8000  (sidecar)" in dom
    thumbs = dom.count('src="/ng/')
    assert 2 <= thumbs <= 8 and "score 1.000" in dom  # NG thumbnails with their score (and time)

    page = cv2.imread(str(shot))
    view = page[:, :WINDOW[0] - PANEL]
    content = np.any(np.abs(view.astype(int) - BACKGROUND) > 12, axis=2)
    rows, cols = np.where(content[:H + 3])  # the image is at the top; the counters' text starts 6 px below it
    assert rows.size, "the page shows no image"
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    assert abs((bottom - top + 1) - H) <= 4 and abs((right - left + 1) - W) <= 4, (top, bottom, left, right)
    live = view[top:bottom + 1, left:right + 1]
    assert live.std() > 20  # the frame itself (noise, a bright disc, the overlay), not a flat placeholder
    panel = page[:, WINDOW[0] - PANEL:].astype(int)
    red = (np.abs(panel - (51, 51, 221)) < 40).all(axis=2)  # the thumbnails' #d33 frames
    assert red.sum() > 4 * 100, "no NG thumbnails in the panel"

    enlarged = cv2.imread(str(big)).astype(int)
    middle = enlarged[WINDOW[1] // 2 - 100:WINDOW[1] // 2 + 100, WINDOW[0] // 2 - 150:WINDOW[0] // 2 + 150]
    assert middle.std() > 20  # a frame fills the middle of the window, over the dimmed page

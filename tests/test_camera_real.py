"""runtime.camera on a real video: the UCSD Ped2 frames (Test001) turned into a lossless video.

What "the same scores as runtime.inspect" means here: the camera reads the video with OpenCV's
VideoCapture (BGR frames); the test decodes the same file with VideoCapture, writes each frame as
a PNG (lossless), and runs runtime.inspect over those PNGs. Both then see bit-identical pixels, so
score (both write it rounded to 8 decimals by the same function, runtime.reports._num), verdict and
defect area must be equal exactly, frame by frame (both at batch 1: a different batch could change
the last bits of a convolution's sum). The video is FFV1 in .avi, which this
OpenCV's FFmpeg writes and reads back bit-exact.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from core.sidecar import write_sidecar
from runtime import camera
from runtime import inspect as runtime_inspect
from runtime.recorder import read_log
from test_runtime_models import make_stub_model, stub_sidecars  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[1]
UCSD = Path("../shared/data/ucsd/UCSDped2/Test/Test001")  # relative to the repo root, as the README says
N = 40


def ucsd_frames() -> list[Path]:
    folder = REPO / UCSD
    if not folder.is_dir():
        pytest.skip(f"UCSD Ped2 not found under {folder}")
    return sorted(folder.glob("*.tif"))[:N]


def hashed_stub(folder: Path, **kw: object) -> Path:
    """make_stub_model with a real, hashed sidecar: for a camera process, which verifies it (the
    test's stub_sidecars reader does not reach into another process)."""
    model = make_stub_model(folder, **kw)  # type: ignore[arg-type]
    side = yaml.safe_load(model.with_suffix(".yaml").read_text())
    model.with_suffix(".yaml").unlink()
    write_sidecar(model, {k: v for k, v in side.items() if k not in ("files", "schema")})
    return model


def count_frames(path: Path) -> int:
    """Frames a player gets out of a video file: decoded one by one, not the header's claim."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first N frames of Test001 as a lossless FFV1 video (gray frames as BGR, 10 fps)."""
    frames = ucsd_frames()
    path = tmp_path_factory.mktemp("ucsd") / "test001.avi"
    first = cv2.imread(str(frames[0]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (first.shape[1], first.shape[0]))
    assert writer.isOpened(), "this OpenCV cannot write FFV1"
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stub at 64x64 (score: the brightest pixel of the 64x64 frame, 0.710 or 0.714 on these
    frames) with thresholds that make the brighter frames NG and draw masks."""
    return make_stub_model(tmp_path_factory.mktemp("model"), size=64, thresholds={"pixel": 0.7, "image": 0.712})


def test_headless_run_records_every_frame_and_logs_inspect_scores(video: Path, model: Path, stub_sidecars: None,
                                                                  tmp_path: Path) -> None:
    rec, log = tmp_path / "rec.mp4", tmp_path / "frames.jsonl"
    assert camera.main(["--engine", str(model), "--source", str(video), "--no-realtime", "--headless",
                        "--record", str(rec), "--log", str(log)]) == 0
    assert count_frames(rec) == N and not list(tmp_path.glob("rec.partial*"))
    header, rows = read_log(log)
    assert [r["index"] for r in rows] == list(range(N)) and header["kind"] == "file"

    decoded = tmp_path / "decoded"
    decoded.mkdir()
    cap = cv2.VideoCapture(str(video))
    for i in range(N):
        ok, img = cap.read()
        assert ok
        cv2.imwrite(str(decoded / f"{i:03d}.png"), img)
    cap.release()
    out = tmp_path / "inspect"
    assert runtime_inspect.main(["--engine", str(model), "--input", str(decoded), "--output", str(out),
                                 "--batch", "1", "--quiet"]) == 0
    batch = {r["file"]: r for r in map(json.loads, (out / "report.jsonl").read_text().splitlines())}
    for r in rows:
        b = batch[f"{r['index']:03d}.png"]
        assert (r["score"], r["verdict"], r["area"]) == (b["score"], b["verdict"], b["area"]), r["index"]
    assert {r["verdict"] for r in rows} == {"OK", "NG"}  # both verdicts occur: the comparison means something


def start_camera(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """The camera as its own process (as systemd runs it), stderr to a file."""
    err = tmp_path / "camera.err"
    with open(err, "wb") as f:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "runtime.camera", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=f)
    return proc, err


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen[bytes], err: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{what} did not happen; camera stderr:\n{err.read_text()}")


def served_url(proc: subprocess.Popen[bytes], err: Path) -> str:
    def url() -> str | None:
        for line in err.read_text().splitlines():
            if line.startswith("serving http://"):
                return line.split()[1]
        return None
    return wait_for(url, 60, "serving", proc, err)


def test_status_stream_and_sigterm_leave_a_playable_recording(video: Path, tmp_path: Path) -> None:
    """A real process on a looping video: /status and the MJPEG stream answer; SIGTERM ends it with
    exit 0, the recording finalized and playable, the socket released."""
    hashed = hashed_stub(tmp_path / "m", size=64, name="hashed", thresholds={"pixel": 0.7, "image": 0.712})
    rec, log = tmp_path / "loop.mp4", tmp_path / "loop.jsonl"
    proc, err = start_camera(["--engine", str(hashed), "--source", str(video), "--loop", "--headless",
                              "--record", str(rec), "--log", str(log), "--serve", "127.0.0.1:0"], tmp_path)
    try:
        url = served_url(proc, err)
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) > 15, 60, "15 frames", proc, err)
        with urllib.request.urlopen(url + "status", timeout=5) as r:
            st = json.loads(r.read())
        assert st["source"]["state"] == "live" and st["frames"]["inspected"] > 10 and st["fps"] > 0
        assert st["latency_ms"]["p50"] > 0 and st["model"]["path"].endswith("hashed.onnx")
        assert st["model"]["sha256"] == yaml.safe_load(hashed.with_suffix(".yaml").read_text())["files"][
            "hashed.onnx"]["sha256"]
        with urllib.request.urlopen(url + "stream.mjpg", timeout=5) as r:
            assert r.readline() == b"--frame\r\n"
            r.readline()
            n = int(r.readline().split(b":")[1])
            r.readline()
            img = cv2.imdecode(np.frombuffer(r.read(n), np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (240, 360, 3) and img.std() > 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.read_text()
    assert "SIGTERM: stopping" in text and "Traceback" not in text
    frames = count_frames(rec)
    _, rows = read_log(log)
    assert frames > 15 and frames == len(rows)  # every logged frame is in the finalized recording
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(OSError):  # nobody listens there any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2)
    assert not (tmp_path / "loop.partial.mp4").exists()


def test_a_flood_of_idle_connections_never_stops_inspection(tmp_path: Path) -> None:
    """Issue 26: 150 idle connects under `ulimit -n 128` stopped the camera (each held a thread
    and a descriptor for ever, until opening the next frame failed). With the same limit and the
    same flood, frames go on being inspected, none fails, and the page answers once they leave."""
    import resource
    import socket

    model = hashed_stub(tmp_path / "m", size=32)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        cv2.imwrite(str(frames / f"{i}.png"), np.full((48, 48, 3), 40 + 50 * i, np.uint8))
    log, err = tmp_path / "frames.jsonl", tmp_path / "camera.err"
    with open(err, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.camera", "--engine", str(model), "--source", str(frames), "--loop",
             "--fps", "50", "--headless", "--log", str(log), "--serve", "127.0.0.1:0"], cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=f, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)))
    socks: list[socket.socket] = []
    try:
        url = served_url(proc, err)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        rows = lambda: len(log.read_text().splitlines())  # noqa: E731
        before = wait_for(rows, 30, "the first rows", proc, err)
        for _ in range(150):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:  # the backlog full: the flood is refused, not the camera stopped
                pass
        time.sleep(1.5)
        flooded = rows()
        wait_for(lambda: rows() > flooded + 25, 30, "frames inspected during the flood", proc, err)
        assert proc.poll() is None
        for s in socks:
            s.close()
        socks.clear()
        wait_for(lambda: urllib.request.urlopen(url + "status", timeout=2).status == 200, 30, "/status", proc, err)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, err.read_text()
    finally:
        for s in socks:
            s.close()
        if proc.poll() is None:
            proc.kill()
    _, logged = read_log(log)
    assert len(logged) > before and all(r["processing"] == "done" for r in logged), [
        r["reason"] for r in logged if r["processing"] != "done"][:3]
    assert "Traceback" not in err.read_text()

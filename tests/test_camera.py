"""runtime.camera without a camera: keys, the command line, sources, reconnection, the server, the
sinks and the .trt fallback, on the stub model (anomaly_map = brightness) and synthetic frames."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from runtime import camera
from runtime.keys import View, handle_key
from runtime.live import Session, Settings, make_capture
from runtime.meter import LatencyMeter, StageClock, stage_times
from runtime.pipeline import Pipeline
from runtime.recorder import read_log
from runtime.capture import Capture, FrameBuffer
from runtime.sources import Frame, SourceError, SourceSpec, parse_source
from runtime.stream import Bind, StreamServer, parse_bind
from test_camera_real import hashed_stub
from torchless import run_without_torch
from test_runtime_models import make_stub_model, stub_sidecars  # noqa: F401 - fixture


def frame(bright: bool, size: int = 48) -> np.ndarray:
    """A BGR frame: dark, with a bright square when `bright` (NG for the stub at thresholds 0.5)."""
    img = np.full((size, size, 3), 40, np.uint8)
    if bright:
        img[10:20, 25:35] = 250
    return img


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stub_model(tmp_path_factory.mktemp("cam"))


@pytest.fixture
def frames_dir(tmp_path: Path) -> Path:
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(6):
        cv2.imwrite(str(d / f"{i:03d}.png"), frame(i % 3 == 2))
    return d


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


# ----------------------------------------------------------------------------- pure parts

def test_keys_are_a_pure_function_of_the_view() -> None:
    v = View(pixel=0.5)
    assert handle_key(v, -1) is v
    assert handle_key(v, ord("q")).quit and handle_key(v, 27).quit
    paused = handle_key(v, ord(" "))
    assert paused.paused and not handle_key(paused, ord(" ")).paused
    assert not handle_key(v, ord("o")).overlay and not handle_key(v, ord("m")).mask
    assert handle_key(v, ord("s")).action == "snapshot" and handle_key(v, ord("w")).action == "write"
    assert handle_key(v, ord("]")).pixel == pytest.approx(0.525)
    assert handle_key(handle_key(v, ord("]")), ord("[")).pixel == pytest.approx(0.5)
    assert handle_key(v, ord("x")) == v and v == View(pixel=0.5)  # unknown keys change nothing; v is untouched
    none = View(pixel=None)  # a model without a pixel threshold: nothing to move or write
    assert handle_key(none, ord("]")) == none and handle_key(none, ord("w")).action is None


def test_sources_and_binds_parse_or_say_what_is_expected(frames_dir: Path) -> None:
    assert parse_source("0") == SourceSpec("camera", 0, "0") and parse_source("0").live
    assert parse_source("rtsp://cam/stream").kind == "url" and parse_source(str(frames_dir)).kind == "folder"
    with pytest.raises(ValueError, match="no such file or folder"):
        parse_source("nope.mp4")
    assert parse_bind("8080") == Bind("127.0.0.1", 8080) and parse_bind("[::1]:0") == Bind("::1", 0)
    assert parse_bind("127.0.0.1:0").loopback and not parse_bind("0.0.0.0:80").loopback
    for bad in ("x", "host:", "1.2.3.4:99999", "fe80::1:80"):
        with pytest.raises(ValueError, match="expected PORT"):
            parse_bind(bad)


def test_latency_meter_is_exact_recently_and_close_over_the_run() -> None:
    m = LatencyMeter(window=50)
    rng = np.random.default_rng(0)
    values = rng.uniform(0.010, 0.050, 2000)
    for i, v in enumerate(values):
        m.add(float(v), i * 0.04)
    assert m.window_percentiles()["p50"] == pytest.approx(np.percentile(values[-50:], 50) * 1e3)
    run = m.run_percentiles()
    assert run["p50"] == pytest.approx(np.percentile(values, 50) * 1e3, rel=0.01)
    assert run["p99"] == pytest.approx(np.percentile(values, 99) * 1e3, rel=0.01)
    assert m.fps() == pytest.approx(25.0) and m.fps(now=2000 * 0.04 + 10) == 0.0  # stalled: 0, not the last rate


def test_stage_clocks_give_ms_per_frame_and_the_stage_that_bounds_the_rate() -> None:
    capture, inference, main = StageClock(window=2), StageClock(), StageClock()
    assert stage_times({"capture": capture}) == {"capture": None, "bound": None}  # before the first frame
    for seconds in (0.010, 0.004, 0.006):  # the window keeps the last two
        capture.add(seconds)
    inference.add(0.024, frames=2)  # one batch of two frames
    main.add(0.001)
    assert capture.ms_per_frame() == pytest.approx(5.0) and capture.ms_per_frame(run=True) == pytest.approx(20 / 3)
    times = stage_times({"capture": capture, "inference": inference, "main": main})
    assert times == {"capture": 5.0, "inference": 12.0, "main": 1.0, "bound": "inference"}


def test_latest_frame_slot_drops_stale_frames_and_the_queue_waits() -> None:
    slot = FrameBuffer(1, drop=True)
    for i in range(5):
        slot.put(Frame(i, np.zeros((2, 2)), 0.0, 0.0))
    assert [f.index for f in slot.take(4, 0.01)] == [4] and slot.dropped == 4
    q = FrameBuffer(2, drop=False)
    q.put(Frame(0, np.zeros((2, 2)), 0.0, 0.0))
    q.put(Frame(1, np.zeros((2, 2)), 0.0, 0.0))
    done = threading.Event()
    threading.Thread(target=lambda: (q.put(Frame(2, np.zeros((2, 2)), 0.0, 0.0)), done.set()), daemon=True).start()
    assert not done.wait(0.2)  # full: the capture waits instead of dropping
    assert [f.index for f in q.take(8, 0.01)] == [0, 1]  # a batch of what is waiting, oldest first
    assert done.wait(2) and [f.index for f in q.take(8, 0.5)] == [2] and q.dropped == 0
    q.close()
    assert q.take(1, 5.0) == [] and q.drained


# ----------------------------------------------------------------------------- reconnection

class FakeCamera:
    """A live source's reader: `frames` frames, then it stops delivering (unplugged)."""
    fps = None

    def __init__(self, frames: int) -> None:
        self.left = frames

    def read(self) -> np.ndarray | None:
        if self.left <= 0:
            return None
        self.left -= 1
        time.sleep(0.01)  # ~100 frames/s
        return frame(self.left % 4 == 0)

    def close(self) -> None:
        pass


def test_backoff_doubles_up_to_its_cap_then_gives_up() -> None:
    waited: list[Any] = []
    cap: Capture

    def opener() -> FakeCamera:
        waited.append(cap.status()["retry_in_s"])  # the wait before this attempt
        raise SourceError("cannot open camera 7")

    cap = Capture(opener, live=True, retries=5, backoff=(0.01, 0.04))
    cap.start()
    deadline = time.monotonic() + 5
    while not cap.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waited == [None, 0.01, 0.02, 0.04, 0.04, 0.04]
    assert cap.state == "failed" and cap.status()["error"] == "cannot open camera 7 after 6 attempts"


def test_a_source_that_dies_mid_run_is_reconnected(stub: Path, stub_sidecars: None) -> None:
    """First connection: 15 frames, then the camera stops; the next attempt fails (still
    unplugged); the one after delivers again. /status says 'reconnecting' meanwhile."""
    plan = iter([FakeCamera(15), SourceError("cannot open camera 0"), FakeCamera(10_000)])

    def opener() -> FakeCamera:
        step = next(plan)
        if isinstance(step, Exception):
            raise step
        return step

    s = Settings(SourceSpec("camera", 0, "fake camera"), serve=Bind("127.0.0.1", 0), max_frames=40)
    stop = threading.Event()
    with Pipeline.open(stub) as pipe:
        session = Session(pipe, make_capture(pipe, s, opener, backoff=(0.2, 0.4)), s, stop)
        runner = threading.Thread(target=session.run, daemon=True)
        runner.start()
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while runner.is_alive() and time.monotonic() < deadline:
            if session.server is not None:
                try:
                    seen.append(json.loads(get(session.server.url + "status", 2)[1])["source"]["state"])
                except OSError:  # the session closed the server between two polls
                    pass
            time.sleep(0.03)
        stop.set()
        runner.join(5)
    st = session.status()
    assert "reconnecting" in seen and seen.index("reconnecting") < len(seen) - 1 - seen[::-1].index("live")
    assert st["source"]["reconnects"] == 1 and st["source"]["connects"] == 2
    assert st["frames"]["inspected"] == 40 and st["verdicts"]["NG"] > 0  # frames flowed again after the outage


# ----------------------------------------------------------------------------- the server

def test_server_endpoints_and_socket_release() -> None:
    server = StreamServer(Bind("127.0.0.1", 0), status=lambda: {"fps": 1.5}).start()
    try:
        assert get(server.url + "snapshot.jpg")[0] == 503  # nothing published yet
        picture = np.zeros((40, 60, 3), np.uint8)
        picture[:, 30:] = 200
        server.publish(picture)
        code, body, ctype = get(server.url + "status")
        assert code == 200 and ctype == "application/json" and json.loads(body) == {"fps": 1.5, "recent_ng": []}
        code, body, ctype = get(server.url)
        assert code == 200 and b'<img id="live" src="/stream.mjpg"' in body and "text/html" in ctype
        code, body, ctype = get(server.url + "snapshot.jpg")
        assert code == 200 and ctype == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (40, 60, 3)
        assert get(server.url + "nothing")[0] == 404
        with urllib.request.urlopen(server.url + "stream.mjpg", timeout=5) as r:
            assert r.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
            assert r.readline() == b"--frame\r\n" and r.readline() == b"Content-Type: image/jpeg\r\n"
            n = int(r.readline().split(b":")[1])
            r.readline()
            part = r.read(n)
            assert cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR).shape == (40, 60, 3)
            assert server.clients == 1
    finally:
        server.close()
    port = server.httpd.server_address[1]
    with socket.socket() as sock:  # released: the port can be bound again at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_a_client_that_resets_its_connection_is_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """The page polls /status on a kept-alive connection: a browser tab closed mid-request resets
    it, and socketserver printed a 'ConnectionResetError' traceback into the camera's log for each."""
    import struct

    server = StreamServer(Bind("127.0.0.1", 0), status=lambda: {"fps": 1.5}).start()
    try:
        server.publish(np.zeros((40, 60, 3), np.uint8))
        for path in ("/status", "/stream.mjpg", "/status"):
            sock = socket.create_connection(server.httpd.server_address[:2], timeout=5)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: camera\r\n\r\n".encode())
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            sock.close()
        deadline = time.monotonic() + 5
        while server.clients and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the handlers see the reset
        assert get(server.url + "status")[0] == 200 and server.clients == 0
    finally:
        server.close()
    assert "Traceback" not in capsys.readouterr().err


def test_the_server_caps_clients_times_idle_ones_out_and_answers_head() -> None:
    """Issue 26: idle connections each held a thread and a descriptor for ever, there was no cap
    and HEAD was refused. Past the cap a connection is answered 503 (or closed) at once, an idle
    one is closed after the timeout, streams have their own cap, HEAD gets the headers only."""
    import http.client

    server = StreamServer(Bind("127.0.0.1", 0), status=lambda: {"fps": 1.5}, max_clients=3, max_streams=1,
                          idle_timeout=0.5).start()
    host, port = server.httpd.server_address[:2]
    try:
        assert server.httpd.request_queue_size >= 128  # a burst of connects waits in the kernel
        server.publish(np.zeros((40, 60, 3), np.uint8))
        for path, ctype in (("/", "text/html"), ("/status", "application/json"), ("/snapshot.jpg", "image/jpeg"),
                            ("/stream.mjpg", "multipart/x-mixed-replace")):
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("HEAD", path)
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("Content-Type").startswith(ctype) and r.read() == b"", path
            conn.close()
        idle = [socket.create_connection((host, port), timeout=5) for _ in range(3)]
        time.sleep(0.1)
        extra = socket.create_connection((host, port), timeout=5)
        began = time.monotonic()
        try:
            first = extra.recv(64)
        except ConnectionResetError:  # closed with the request unread: a reset is an answer too
            first = b""
        assert first == b"" or first.startswith(b"HTTP/1.1 503"), first
        assert time.monotonic() - began < 1.0  # answered or closed at once, not held
        extra.close()
        for sock in idle:  # closed by the server once idle for the timeout
            sock.settimeout(3)
            assert sock.recv(64) == b""
            sock.close()
        with urllib.request.urlopen(server.url + "stream.mjpg", timeout=5) as r:
            assert r.readline() == b"--frame\r\n"
            code, body, _ = get(server.url + "stream.mjpg")
            assert code == 503 and b"viewers" in body
        assert get(server.url + "status")[0] == 200
    finally:
        server.close()


def test_the_page_holds_the_last_ng_frames_with_thumbnails(stub: Path, stub_sidecars: None, frames_dir: Path) -> None:
    """Issue 26: the page showed only the live frame. The server keeps the last NG pictures the
    session hands it (what their captions say in /status, newest first), serves each full size
    and as a thumbnail, and forgets the oldest past NG_KEEP."""
    from runtime import stream

    s = Settings(parse_source(str(frames_dir)), realtime=False, serve=Bind("127.0.0.1", 0))
    with Pipeline.open(stub) as pipe:
        session = Session(pipe, make_capture(pipe, s), s, threading.Event())
        session.run()
    held = session.server.recent_ng()
    assert [(h["index"], h["file"]) for h in held] == [(5, "005.png"), (2, "002.png")]
    assert held[0]["score"] > 0.5 and held[0]["time"] and held[0]["model"] == session.tags[pipe]

    server = StreamServer(Bind("127.0.0.1", 0), status=lambda: {"fps": 1.5}).start()
    try:
        for i in range(stream.NG_KEEP + 2):
            server.add_ng(np.full((480, 640, 3), i, np.uint8), {"index": i, "score": 0.9})
        code, body, _ = get(server.url + "status")
        recent = json.loads(body)["recent_ng"]
        assert [n["index"] for n in recent] == list(range(stream.NG_KEEP + 1, 1, -1))
        newest = recent[0]["id"]
        decode = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)  # noqa: E731
        code, body, ctype = get(server.url + f"ng/{newest}.jpg")
        assert code == 200 and ctype == "image/jpeg" and decode(body).shape == (480, 640, 3)
        code, body, _ = get(server.url + f"ng/{newest}_thumb.jpg")
        assert code == 200 and decode(body).shape == (240, stream.THUMB_WIDTH, 3)
        assert get(server.url + f"ng/{recent[-1]['id'] - 1}.jpg")[0] == 404  # left the history
        page = get(server.url)[1].decode()
        assert "Last NG frames" in page and "Model in force" in page and 'id="source"' in page
    finally:
        server.close()


# ----------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("extra, message", [
    (["--roi", "1,2,3"], "--roi '1,2,3': expected x,y,w,h"),
    (["--serve", "here:there"], "--serve 'here:there': expected PORT"),
    (["--source", "0", "--no-realtime"], "--no-realtime: a camera cannot wait"),
    (["--batch", "4"], "--batch N needs --no-realtime"),
    (["--record", "out.flv"], "--record out.flv: use one of"),
])
def test_usage_errors_exit_2_with_one_line(stub: Path, frames_dir: Path, extra: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--engine", str(stub), "--source", str(frames_dir), "--headless"] + extra
    assert camera.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_missing_engine_is_usage_and_unopenable_sources_and_models_are_failures(
        stub: Path, stub_sidecars: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert camera.main(["--engine", str(tmp_path / "none.onnx")]) == 2
    assert "error: --engine" in capsys.readouterr().err
    assert camera.main(["--engine", str(stub), "--source", "97", "--retries", "0", "--headless"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "error: cannot open camera 97 after 1 attempt"
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(stub.read_bytes())  # no sidecar beside it
    assert camera.main(["--engine", str(bare), "--source", "0", "--headless"]) == 1
    assert "sidecar missing" in capsys.readouterr().err


def test_trt_without_tensorrt_is_an_error_or_falls_back_when_asked(
        stub: Path, stub_sidecars: None, tmp_path: Path, frames_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_stub_model(tmp_path / "m", name="screw")
    engine = model.with_suffix(".trt")
    engine.write_bytes(b"not an engine: TensorRT is missing here anyway")
    side = yaml.safe_load(model.with_suffix(".yaml").read_text())
    side["files"]["screw.trt"] = {"sha256": "stub"}
    model.with_suffix(".yaml").write_text(yaml.safe_dump(side))
    argv = ["--engine", str(engine), "--source", str(frames_dir), "--headless", "--no-realtime"]
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the engine would be loaded for real")
    assert camera.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "add --fallback onnx" in err[0]
    assert camera.main(argv + ["--fallback", "onnx", "--log", str(tmp_path / "f.jsonl")]) == 0
    assert "--fallback onnx: running" in capsys.readouterr().err
    header, rows = read_log(tmp_path / "f.jsonl")
    assert header["model"]["path"].endswith("screw.onnx") and len(rows) == 6


def test_a_window_less_machine_runs_headless_and_never_aborts(
        stub: Path, stub_sidecars: None, frames_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No --headless: runtime.display.probe decides, in a child process; here there is no display
    (or a display that does not answer), so the run goes on headless and says so."""
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":987")  # no X server there: Qt would abort a process that imshows
    assert camera.main(["--engine", str(stub), "--source", str(frames_dir), "--no-realtime"]) == 0
    err = capsys.readouterr().err
    assert "headless: no window" in err and "done: 6 frames" in err


def test_a_torn_log_line_is_cut_before_the_next_run_appends(stub: Path, stub_sidecars: None, tmp_path: Path,
                                                            frames_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 26: a run killed mid-line (or stopped by a full disk) left a last line without its
    end; the next run's header was glued to it and the line could never be read again. The torn
    tail is cut, said on stderr, and the new run starts on a fresh line; whole lines are kept."""
    log = tmp_path / "log.jsonl"
    argv = ["--engine", str(stub), "--source", str(frames_dir), "--no-realtime", "--headless", "--log", str(log)]
    assert camera.main(argv) == 0
    whole = log.read_bytes()
    log.write_bytes(whole + b'{"index": 6, "time": "2026-')
    assert camera.main(argv) == 0
    assert f"--log {log}: cut a torn last line" in capsys.readouterr().err
    text = log.read_bytes()
    assert text.startswith(whole) and text.endswith(b"\n")
    lines = [json.loads(line) for line in text.decode().splitlines()]  # every line is whole
    assert sum("header" in r for r in lines) == 2 and len(read_log(log)[1]) == 6
    log.write_bytes(text + b'{"index": 9}')  # a whole line that only lacks its end keeps it
    assert camera.main(argv) == 0
    assert json.loads(log.read_text().splitlines()[len(lines)]) == {"index": 9}


def test_a_full_disk_ends_the_log_on_a_whole_line_and_names_the_file(stub: Path, stub_sidecars: None, tmp_path: Path,
                                                                    frames_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills while the log is written: the fourth row gets half written, then ENOSPC.
    The run stops (exit 1) with one line naming the log, and the log ends on its last whole row."""
    import errno

    log = tmp_path / "log.jsonl"
    real_write, calls = os.write, []

    def full_disk(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") != str(log):
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 5:  # the header, three rows, then half of the fourth
            return real_write(fd, bytes(data)[:len(data) // 2])
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    assert camera.main(["--engine", str(stub), "--source", str(frames_dir), "--no-realtime", "--headless",
                        "--log", str(log)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"error: --log {log}: No space left on device (ENOSPC)"), err
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert "header" in lines[0] and [r["index"] for r in lines[1:]] == [0, 1, 2]


def test_a_recording_ends_playable_or_under_its_partial_name(stub: Path, stub_sidecars: None, tmp_path: Path,
                                                            frames_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 26: the disk filled while recording and the camera left a file that does not play
    under the final name. The recorder stops while there is still room to finalize (the free
    space under its reserve): the file plays, and the run says why it stopped, naming it. A
    recording that cannot be finalized stays under its .partial name and the message says so."""
    from runtime import recorder
    from test_camera_real import count_frames

    rec = tmp_path / "out.mp4"
    argv = ["--engine", str(stub), "--source", str(frames_dir), "--no-realtime", "--headless", "--record", str(rec)]
    free = iter([10 << 30] * 4)  # four checks with room, then the disk is (nearly) full
    monkeypatch.setattr(recorder, "CHECK_EVERY_S", 0.0)
    monkeypatch.setattr(recorder, "free_space", lambda folder: next(free, 1 << 20))
    assert camera.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"error: --record {rec}: the disk is full") and f"{rec} plays" in err[-1], err
    assert count_frames(rec) == 4 and not list(tmp_path.glob("*.partial*"))
    monkeypatch.setattr(recorder, "free_space", lambda folder: 10 << 30)

    class BrokenWriter:  # what a full disk does under FFmpeg: the writes go nowhere, release cannot finish
        def __init__(self, path: str, *args: Any) -> None:
            Path(path).write_bytes(b"\0" * 100)

        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return True

        def write(self, picture: np.ndarray) -> None:
            pass

        def release(self) -> None:
            pass

    rec.unlink()
    monkeypatch.setattr(recorder.cv2, "VideoWriter", BrokenWriter)
    assert camera.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    partial = tmp_path / "out.partial.mp4"
    assert err[-1] == (f"error: --record {rec}: the recording could not be finalized (a full disk?); what was "
                       f"written is in {partial}, which may not play"), err
    assert partial.exists() and not rec.exists()


def test_a_picture_that_cannot_be_saved_names_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from runtime import recorder

    def full(path: Path, image: np.ndarray) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(recorder, "save_image", full)
    saver = recorder.PictureSaver()
    saver.save(tmp_path / "ng", "ng_00000002", frame(True), None, {"index": 2})
    saver.close()
    assert saver.error == f"cannot save {tmp_path / 'ng' / 'ng_00000002'}_*: No space left on device (ENOSPC)"


def test_frames_log_verdicts_failures_and_ng_pictures(stub: Path, stub_sidecars: None, tmp_path: Path,
                                                      frames_dir: Path) -> None:
    """--log rows and --save-ng pictures; a frame whose registration fails is logged with its reason."""
    model = make_stub_model(tmp_path / "reg")
    side = yaml.safe_load(model.with_suffix(".yaml").read_text())
    side["registration"] = {"method": "principal_axis", "lighting": "none"}  # a blank frame has no part
    model.with_suffix(".yaml").write_text(yaml.safe_dump(side))
    cv2.imwrite(str(frames_dir / "999_blank.png"), np.full((48, 48, 3), 30, np.uint8))
    log, ng = tmp_path / "log.jsonl", tmp_path / "ng"
    for engine in (stub, model):
        assert camera.main(["--engine", str(engine), "--source", str(frames_dir), "--no-realtime", "--headless",
                            "--log", str(log), "--save-ng", str(ng)]) == 0
        header, rows = read_log(log)
        assert [r["index"] for r in rows] == list(range(7)) and header["source"] == str(frames_dir)
        if engine == stub:
            assert [r["verdict"] for r in rows] == ["OK", "OK", "NG", "OK", "OK", "NG", "OK"]
            assert rows[2]["file"] == "002.png" and rows[2]["area"] > 0 and rows[2]["latency_ms"] > 0
            assert sorted(p.name for p in ng.iterdir()) == sorted(
                f"ng_{i:08d}{k}" for i in (2, 5) for k in ("_raw.png", "_overlay.jpg", ".json"))
            assert json.loads((ng / "ng_00000002.json").read_text())["verdict"] == "NG"
    blank = rows[-1]
    assert blank["verdict"] is None and blank["score"] is None
    assert blank["reason"].startswith("registration ") and blank["file"] == "999_blank.png"


def test_bad_files_in_a_folder_are_failed_rows_and_the_run_goes_on(stub: Path, stub_sidecars: None, tmp_path: Path,
                                                                    frames_dir: Path) -> None:
    """Issue 26: an unreadable file of a folder source was dropped without a row or a word, and a
    1x1 image stopped the camera (exit 1). Each is a failed row with its reason, as in batch
    inspection, the later frames are inspected, and /status counts them."""
    (frames_dir / "002_broken.png").write_bytes(b"not a png")
    cv2.imwrite(str(frames_dir / "003_tiny.png"), np.full((1, 1, 3), 200, np.uint8))
    log = tmp_path / "log.jsonl"
    assert camera.main(["--engine", str(stub), "--source", str(frames_dir), "--no-realtime", "--headless",
                        "--log", str(log)]) == 0
    _, rows = read_log(log)
    assert [r["file"] for r in rows] == sorted(p.name for p in frames_dir.iterdir())
    bad = {r["file"]: r for r in rows if r["processing"] == "failed"}
    assert set(bad) == {"002_broken.png", "003_tiny.png"} and all(r["verdict"] is None for r in bad.values())
    assert "002_broken.png: not a decodable image" in bad["002_broken.png"]["reason"]
    assert "too small (1x1)" in bad["003_tiny.png"]["reason"]
    assert [r["verdict"] for r in rows if r["processing"] == "done"] == ["OK", "OK", "NG", "OK", "OK", "NG"]
    s = Settings(parse_source(str(frames_dir)), realtime=False, serve=Bind("127.0.0.1", 0))
    with Pipeline.open(stub) as pipe:  # the same frames through a session: its status and the served page
        session = Session(pipe, make_capture(pipe, s), s, threading.Event())
        session.run()
    st = session.status()
    assert st["verdicts"]["failed"] == 2 and st["frames"]["inspected"] == 8


def test_live_threshold_keys_write_the_sidecar(tmp_path: Path, frames_dir: Path) -> None:
    """] raises the pixel threshold 5 % for the next frames; w writes it with update_sidecar
    (a real, hashed sidecar: verify=True), keeping the previous one as .yaml.bak."""
    model = hashed_stub(tmp_path / "w")
    s = Settings(parse_source(str(frames_dir)), realtime=False)
    with Pipeline.open(model) as pipe:
        session = Session(pipe, make_capture(pipe, s), s, threading.Event())
        session.press(ord("]"))
        assert pipe.thresholds.pixel == pytest.approx(0.525) and pipe.thresholds.image == 0.5
        session.press(ord("w"))
    written = yaml.safe_load(model.with_suffix(".yaml").read_text())["thresholds"]
    assert written["pixel"] == pytest.approx(0.525) and written["image"] == 0.5
    assert "runtime.camera" in written["rule"]["pixel"]
    assert yaml.safe_load(model.with_suffix(".yaml.bak").read_text())["thresholds"]["pixel"] == 0.5
    with Pipeline.open(model) as pipe:  # the hash still matches: the model opens with the new value
        assert pipe.thresholds.pixel == pytest.approx(0.525)


def test_w_writes_only_the_pixel_threshold_over_a_calibration_made_meanwhile(tmp_path: Path, frames_dir: Path) -> None:
    """w wrote the whole thresholds section the camera had read when it opened the model: a
    calibration written while the camera ran (a new image threshold, rule, date) was silently
    reverted to the old one. Only the pixel threshold (and its rule) is the key's to change."""
    from core.sidecar import update_sidecar

    model = hashed_stub(tmp_path / "w")
    s = Settings(parse_source(str(frames_dir)), realtime=False)
    with Pipeline.open(model) as pipe:
        session = Session(pipe, make_capture(pipe, s), s, threading.Event())
        update_sidecar(model, thresholds={"pixel": 0.4, "image": 0.7, "rule": {"pixel": "best-iou", "image": "fpr=0.01"},
                                          "created": "2026-12-07T08:00:00+00:00"}, verify=True)
        session.press(ord("]"))
        session.press(ord("w"))
    written = yaml.safe_load(model.with_suffix(".yaml").read_text())["thresholds"]
    assert written["pixel"] == pytest.approx(0.525) and "runtime.camera" in written["rule"]["pixel"]
    assert written["image"] == 0.7 and written["rule"]["image"] == "fpr=0.01"  # the newer calibration's
    assert written["created"] == "2026-12-07T08:00:00+00:00"


def test_a_stop_during_a_reload_waits_for_it_and_closes_the_model_it_opened(stub: Path, stub_sidecars: None,
                                                                          frames_dir: Path) -> None:
    """SIGTERM while a reload is opening the next model: the run used to end at once, leaving the
    reload thread inside the backend's C code while the interpreter exits, and the model it opened
    was never closed. The end of the run now waits for it (bounded) and closes what it opened."""
    entered, release = threading.Event(), threading.Event()

    class Opened:
        closed = False

        def close(self) -> None:
            self.closed = True

    opened = Opened()

    def reload() -> Any:
        entered.set()
        release.wait(5)
        return opened

    s = Settings(parse_source(str(frames_dir)), realtime=False, loop=True)
    stop, hup = threading.Event(), threading.Event()
    with Pipeline.open(stub) as pipe:
        session = Session(pipe, make_capture(pipe, s), s, stop, reload=reload, reload_event=hup)
        runner = threading.Thread(target=session.run, daemon=True)
        runner.start()
        hup.set()
        assert entered.wait(5)
        stop.set()  # what SIGTERM does
        threading.Timer(0.3, release.set).start()
        runner.join(10)
        assert not runner.is_alive()
        assert opened.closed and session.pipe is pipe  # never swapped in after the stop: closed


def test_w_on_a_full_disk_names_the_sidecar(tmp_path: Path, frames_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The w key's write fails on a full disk: the message said only 'No space left on device'."""
    import errno

    from runtime import live

    def full(*args: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    model = hashed_stub(tmp_path / "w")
    s = Settings(parse_source(str(frames_dir)), realtime=False)
    with Pipeline.open(model) as pipe:
        session = Session(pipe, make_capture(pipe, s), s, threading.Event())
        monkeypatch.setattr(live, "update_sidecar", full)
        session.press(ord("]"))
        session.press(ord("w"))
    assert (f"error: the threshold was not written to {model.with_suffix('.yaml')}: No space left on device (ENOSPC)"
            in capsys.readouterr().err)


def test_w_refuses_a_model_re_exported_while_the_camera_ran(tmp_path: Path, frames_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The live threshold was tuned on the running model: a re-export (model and sidecar replaced
    together) passed update_sidecar's verify, and w wrote it beside the new model."""
    from core.sidecar import write_sidecar

    model = hashed_stub(tmp_path / "w")
    side = model.with_suffix(".yaml")
    s = Settings(parse_source(str(frames_dir)), realtime=False)
    with Pipeline.open(model) as pipe:
        session = Session(pipe, make_capture(pipe, s), s, threading.Event())
        info = {k: v for k, v in yaml.safe_load(side.read_text()).items() if k not in ("files", "schema")}
        with open(model, "ab") as f:
            f.write(b"\0")
        side.unlink()
        write_sidecar(model, info)  # what export does: a new model and its own sidecar
        before = side.read_bytes()
        session.press(ord("]"))
        session.press(ord("w"))
    assert side.read_bytes() == before and "re-exported" in capsys.readouterr().err


def test_w_never_modifies_a_published_deployment_version(tmp_path: Path, frames_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """With a deployment folder as --engine the model is a published version, which is never
    modified (a rollback restores it byte for byte, its calibration.json describes its sidecar):
    w used to rewrite that version's sidecar (and drop a .yaml.bak into it). It says why not."""
    import shutil

    from core.deployment import Deployment

    dep = Deployment(tmp_path / "models")
    model = hashed_stub(tmp_path / "a")
    stage = dep.stage()
    for f in model.parent.iterdir():
        shutil.copy(f, stage / f.name)
    version = dep.switch(dep.publish(stage, {"model": model.name}))
    before = {p.name: p.read_bytes() for p in version.path.iterdir()}
    s = Settings(parse_source(str(frames_dir)), realtime=False)
    with Pipeline.open(dep.root) as pipe:
        session = Session(pipe, make_capture(pipe, s), s, threading.Event())
        session.press(ord("]"))
        session.press(ord("w"))
        assert pipe.thresholds.pixel == pytest.approx(0.525)  # the live value still applies to this run
    assert {p.name: p.read_bytes() for p in version.path.iterdir()} == before
    assert "published deployment version" in capsys.readouterr().err


def test_scores_only_without_thresholds_is_said_on_the_picture(tmp_path: Path, stub_sidecars: None,
                                                                frames_dir: Path) -> None:
    model = make_stub_model(tmp_path / "n", thresholds={})
    s = Settings(parse_source(str(frames_dir)), realtime=False, max_frames=3, serve=Bind("127.0.0.1", 0))
    with Pipeline.open(model) as pipe:
        session = Session(pipe, make_capture(pipe, s), s, threading.Event())
        session.run()
        frame_, _, picture, row = session.last
        assert "no thresholds: scores only" in session.info(frame_.index)
        assert row["verdict"] == "NO VERDICT" and session.status()["model"]["thresholds"]["note"].startswith(
            "no thresholds")
        assert picture is not None and picture.shape == (48, 48, 3)


def test_the_camera_imports_and_runs_without_torch(tmp_path: Path, frames_dir: Path) -> None:
    """An edge box with ONNX Runtime only: `import torch` fails, and the camera still runs."""
    model = hashed_stub(tmp_path / "m")  # built here, where torch exists
    result = run_without_torch(f"""
for name in ('runtime.camera', 'runtime.live', 'runtime.sources', 'runtime.capture', 'runtime.stream', 'runtime.recorder',
             'runtime.meter', 'runtime.keys', 'bench.camera'):
    importlib.import_module(name)
import runtime.camera as rc
rc = rc.main(['--engine', {str(model)!r}, '--source', {str(frames_dir)!r}, '--no-realtime', '--headless',
              '--log', {str(tmp_path / 'log.jsonl')!r}])
""", timeout=60)
    assert result == {"rc": 0, "torch": []}
    assert len(read_log(tmp_path / "log.jsonl")[1]) == 6


def test_the_benchmark_runs_end_to_end(stub: Path, stub_sidecars: None, tmp_path: Path) -> None:
    """python -m bench.camera on a few 1080p frames, soak included: its table and JSON files."""
    from bench import camera as bench

    assert bench.main(["--engine", str(stub), "--frames", "6", "--rounds", "1", "--soak", "1",
                       "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "camera.json").read_text())
    assert [r["config"] for r in result["rows"]] == ["bare", "decode", "camera", "+overlay", "realtime"]
    assert result["rows"][2]["frames"] == 6 and result["size"] == [1920, 1080]
    assert set(result["targets_met"]) == {"overhead_le_10pct", "realtime_p99_le_2x_p50"}
    stages = result["rows"][2]["stages_ms"]  # every thread timed its frames; the slowest named
    assert all(stages[k] > 0 for k in ("capture", "inference", "main"))
    assert stages["bound"] == max(("capture", "inference", "main"), key=stages.__getitem__)
    assert result["floor_overhead"] >= 0
    soak = json.loads((tmp_path / "soak.json").read_text())
    assert soak["samples"] and soak["samples"][0]["fds"] > 0


@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda _: ())(0)) < 2, reason="pins to two cores")
def test_the_contention_benchmark_times_the_backend_beside_each_load(tmp_path: Path) -> None:
    from bench import contention

    stub = hashed_stub(tmp_path / "m")  # the loads open it in processes of their own: a sidecar that checks out
    cores = os.sched_getaffinity(0)
    assert contention.main(["--engine", str(stub), "--frames", "3", "--runs", "3", "--rounds", "1",
                            "--out", str(tmp_path)]) == 0
    assert os.sched_getaffinity(0) == cores  # pinned to core 0 while it measured, not after (it ran the suite on one core)
    result = json.loads((tmp_path / "contention.json").read_text())
    rows = {r["load"]: r for r in result["rows"]}
    assert list(rows) == ["none", "alu", "memory", "decode", "capture"]
    assert rows["none"]["slowdown"] == 0 and all(r["backend_ms"] > 0 for r in rows.values())
    with pytest.raises(SystemExit) as bad:
        contention.main(["--engine", str(stub), "--roi", "1,2", "--out", str(tmp_path)])
    assert bad.value.code == 2


def test_roi_and_batches(stub: Path, stub_sidecars: None, tmp_path: Path, frames_dir: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    """--roi inspects the region only (the bright square of frame 2 lies outside 0,25,48,23: OK);
    --batch 3 gives the rows batch 1 gives; a region that does not fit the frames stops the run."""
    base = ["--engine", str(stub), "--source", str(frames_dir), "--no-realtime", "--headless"]
    rows = {}
    for name, extra in (("one", []), ("batched", ["--batch", "3"]), ("roi", ["--roi", "0,25,48,23"])):
        assert camera.main(base + extra + ["--log", str(tmp_path / f"{name}.jsonl")]) == 0
        rows[name] = read_log(tmp_path / f"{name}.jsonl")[1]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time", "latency_ms")}  # noqa: E731
    assert [strip(r) for r in rows["batched"]] == [strip(r) for r in rows["one"]]
    assert [r["verdict"] for r in rows["one"]].count("NG") == 2 and {r["verdict"] for r in rows["roi"]} == {"OK"}
    assert read_log(tmp_path / "roi.jsonl")[0]["roi"] == {"x": 0, "y": 25, "w": 48, "h": 23}
    capsys.readouterr()
    assert camera.main(base + ["--roi", "40,40,20,20"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "error: --roi 40,40,20,20 does not fit the 48x48 frame"

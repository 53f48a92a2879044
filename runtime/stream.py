"""The camera's HTTP face for a headless edge box: a live MJPEG stream, a page, and a status JSON.

    server = StreamServer(parse_bind("127.0.0.1:8080"), status=lambda: {...}).start()
    server.publish(picture)     # BGR overlay of the newest frame; encoded only when someone asks
    server.add_ng(picture, {"index": 7, "time": "...", "score": 0.9})   # the page's NG history
    server.url                  # http://127.0.0.1:8080/ (port 0 becomes the port the system gave)
    server.close()              # stops the threads and releases the socket

Endpoints: /  one page, inline script and style: the stream with the live counters, the source's
health, the model and thresholds in force, and the last NG frames (thumbnails with time and
score; a click enlarges one), refreshed from /status once a second; /stream.mjpg
multipart/x-mixed-replace JPEG frames; /status  JSON (the camera's, and `recent_ng`: the history
the server holds); /ng/ID.jpg and /ng/ID_thumb.jpg  an NG picture of that history;
/snapshot.jpg  the newest picture; HEAD answers each with its headers. Standard library only
(http.server, one thread per connection). A flood of connections never reaches the camera's
loop: at most `max_clients` connections hold a thread (the next ones are answered 503 and closed
at once), `max_streams` of them streaming, and one idle for `idle_timeout` seconds is closed; the
listen backlog (128) lets a burst of connects wait instead of being refused.
Bound to loopback unless the user names another address: there is no authentication.
"""
from __future__ import annotations

import ipaddress
import json
import re
import select
import socket
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import cv2
import numpy as np

from core.files import json_text

JPEG_QUALITY = 80
BOUNDARY = "frame"
NG_KEEP = 8         # NG pictures the page's history holds (in memory, by reference: ~6 MB each at 1080p)
THUMB_WIDTH = 320   # the history's thumbnails, pixels
NG_PATH = re.compile(r"/ng/(\d+)(_thumb)?\.jpg")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vae-inspect camera</title>
<style>
body{margin:0;background:#111;color:#ddd;font:14px sans-serif}
main{display:flex;align-items:flex-start}
#view{flex:1 1 auto;min-width:0}
#live{display:block;max-width:100%;margin:auto}
#c{padding:6px 10px;white-space:pre-wrap}
aside{flex:0 0 300px;width:300px;box-sizing:border-box;min-height:100vh;padding:4px 12px;background:#1c1c1c;
overflow-wrap:anywhere}
h2{margin:12px 0 4px;font-size:12px;font-weight:normal;letter-spacing:.08em;text-transform:uppercase;color:#8ab}
.box{padding:4px 8px;border-left:4px solid #666;white-space:pre-wrap}
.live{border-color:#4c6}.connecting,.reconnecting{border-color:#fa0}.failed,.stopped,.ended{border-color:#e44}
#ng{display:grid;grid-template-columns:1fr 1fr;gap:8px}
#ng figure{margin:0;cursor:zoom-in}#ng img{display:block;width:100%;border:2px solid #d33}
figcaption{font-size:12px;color:#bbb;padding-top:2px;white-space:pre-line}
#big{position:fixed;inset:0;display:flex;flex-direction:column;align-items:center;justify-content:center;
background:rgba(0,0,0,.88);cursor:zoom-out}
#big[hidden]{display:none}#big img{width:94vw;height:86vh;object-fit:contain}
</style></head>
<body><main>
<section id="view"><img id="live" src="/stream.mjpg" alt="live overlay"><div id="c">waiting for /status</div></section>
<aside><h2>Source</h2><div id="source" class="box">-</div>
<h2>Model in force</h2><div id="model" class="box">-</div>
<h2>Last NG frames</h2><div id="ng">none yet</div></aside>
</main>
<div id="big" hidden><img id="bigimg" alt="this NG frame is no longer held"><figcaption id="bigcap"></figcaption></div>
<script>
const $ = id => document.getElementById(id);
const ms = v => v == null ? "-" : v.toFixed(0);
const ms1 = v => v == null ? "-" : v.toFixed(1);
const num = v => v == null ? "none" : Number(v).toPrecision(4);
const clock = t => new Date(t).toLocaleTimeString();
let held = [], shown = "";
function caption(n, sep) {  // a thumbnail's lines (sep "\\n") or the enlarged frame's one line
  return [clock(n.time), `score ${num(n.score)}`, `frame ${n.index}` + (n.file ? ` (${n.file})` : ""),
          ...(n.model ? [`model ${n.model}`] : [])].join(sep);
}
function enlarge() {  // #ng=ID: the link a click makes, so that back closes it and it can be shared
  const m = /^#ng=(\\d+)$/.exec(location.hash), big = $("big");
  if (!m) { big.hidden = true; return; }
  const n = held.find(h => String(h.id) === m[1]);
  $("bigimg").src = `/ng/${m[1]}.jpg`;
  $("bigcap").textContent = n ? caption(n, "  ·  ") : "";
  big.hidden = false;
}
function showNg(list) {
  held = list;
  const key = list.map(n => n.id).join();
  if (key === shown) return;
  shown = key;
  const box = $("ng");
  box.textContent = list.length ? "" : "none yet";
  for (const n of list) {
    const [f, img, c] = ["figure", "img", "figcaption"].map(t => document.createElement(t));
    img.src = `/ng/${n.id}_thumb.jpg`; img.alt = `NG frame ${n.index}`; img.title = n.time;
    c.textContent = caption(n, "\\n");
    f.append(img, c);
    f.onclick = () => { location.hash = `ng=${n.id}`; };
    box.append(f);
  }
  enlarge();
}
async function tick() {
  try {
    const s = await (await fetch("/status", {cache: "no-store"})).json();
    const v = s.verdicts, src = s.source, m = s.model, th = m.thresholds;
    $("c").textContent =
      `source ${src.state}  ${s.fps.toFixed(1)} fps  latency p50 ${ms(s.latency_ms.p50)} ms ` +
      `p99 ${ms(s.latency_ms.p99)} ms  frames ${s.frames.inspected}  dropped ${s.frames.dropped}  ` +
      `OK ${v.OK}  NG ${v.NG}  NO VERDICT ${v["NO VERDICT"]}  failed ${v.failed}` +
      (s.stages_ms_per_frame ? `\\nms per frame: capture ${ms1(s.stages_ms_per_frame.capture)}  inference ` +
        `${ms1(s.stages_ms_per_frame.inference)}  main ${ms1(s.stages_ms_per_frame.main)}  ` +
        `(bound: ${s.stages_ms_per_frame.bound || "-"})` : "");
    $("source").className = `box ${src.state}`;
    $("source").textContent = `${src.state}  ${s.fps.toFixed(1)} fps\\n` +
      `dropped ${src.dropped}  reconnects ${src.reconnects}` +
      (src.retry_in_s != null ? `\\nnext try in ${src.retry_in_s} s` : "") + (src.error ? `\\n${src.error}` : "") +
      `\\n${src.spec}`;
    $("model").textContent = `${m.version || m.path.split("/").pop()}  ${m.backend}  ` +
      `sha256 ${m.sha256.slice(0, 12)}\\n` +
      `pixel ${num(th.pixel)}  image ${num(th.image)}  (${th.source})` + (th.note ? `\\n${th.note}` : "") +
      (m.reloaded ? `\\nreloaded ${clock(m.reloaded)}` : "");
    showNg(s.recent_ng || []);
  } catch (e) { $("c").textContent = "no status: " + e; }
}
$("big").onclick = () => { location.hash = ""; };
document.onkeydown = e => { if (e.key === "Escape") location.hash = ""; };
window.onhashchange = enlarge;
setInterval(tick, 1000); tick();
</script></body></html>
"""


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def parse_bind(text: str) -> Bind:
    """--serve: PORT (on 127.0.0.1), HOST:PORT or [IPv6]:PORT; port 0 = any free port.
    ValueError with the expected form otherwise."""
    t = text.strip()
    host, sep, port = t.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", t
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    bare_ipv6 = ":" in host and "[" not in t  # 'fe80::1:8080' is ambiguous: the port needs brackets
    if not port.isdigit() or not 0 <= int(port) <= 65535 or not host or bare_ipv6:
        raise ValueError(f"--serve {text!r}: expected PORT, HOST:PORT or [IPv6]:PORT, e.g. 127.0.0.1:8080")
    return Bind(host, int(port))


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n"
        b"Retry-After: 5\r\nConnection: close\r\n\r\ntoo many clients\n")


def encode_jpeg(picture: np.ndarray) -> bytes | None:
    """A BGR picture as JPEG bytes at JPEG_QUALITY; None when OpenCV cannot encode it."""
    ok, buf = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes() if ok else None


class Slots:
    """A count with a cap, shared by the handler threads: connections, streams."""

    def __init__(self, cap: int) -> None:
        self.cap, self.used = cap, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """One more; False (and nothing taken) when all `cap` are in use."""
        with self._lock:
            if self.used >= self.cap:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.used -= 1


@dataclass
class HeldNg:
    """One NG picture of the page's history: what its caption says, and its JPEGs once asked for."""
    id: int
    info: dict[str, Any]
    picture: np.ndarray
    jpeg: dict[bool, bytes] = field(default_factory=dict)  # thumbnail? -> bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True       # a client stuck on a slow link never holds the process
    allow_reuse_address = True  # a restart binds at once, not after TIME_WAIT
    request_queue_size = 128    # the listen backlog: a burst of connects waits in the kernel (5 refused them)
    owner: "StreamServer"

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, up to the owner's cap: past it the connection is answered
        503 and closed at once, in this thread, so a flood of connects holds no thread and no
        descriptor (one per idle client exhausted `ulimit -n` and stopped the camera's reads)."""
        if not self.owner.connections.take():
            try:
                request.setblocking(False)  # a fresh socket's send buffer takes the answer; never wait
                request.send(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: the slot is free again
            self.owner.connections.give()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner.connections.give()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a browser tab closed while /status was kept alive resets the
        connection) is not an error: socketserver would print a traceback into the camera's log."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class StreamServer:
    """The server and the newest picture; see the module docstring. `max_clients` connections
    (pages, /status polls and streams together) and `max_streams` of them streaming; a connection
    that sends no request for `idle_timeout` seconds (or a viewer that takes no data for as long)
    is closed."""

    def __init__(self, bind: Bind, status: Callable[[], dict[str, Any]], max_clients: int = 32,
                 max_streams: int = 8, idle_timeout: float = 10.0) -> None:
        self.status = status
        self.connections, self.streams, self.idle_timeout = Slots(max_clients), Slots(max_streams), idle_timeout
        try:
            self.httpd = (_Server6 if ":" in bind.host else _Server)((bind.host, bind.port), _Handler)
        except OSError as e:
            raise OSError(f"--serve {bind.host}:{bind.port}: cannot listen ({e.strerror or e})") from e
        self.httpd.owner = self
        self._cond = threading.Condition()
        self._picture: np.ndarray | None = None
        self._seq = 0
        self._jpeg: tuple[int, bytes] | None = None   # (seq, bytes): encoded once for every client
        self._ng: deque[HeldNg] = deque(maxlen=NG_KEEP)
        self._ng_seq = 0
        self._closing = False
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}/"

    def start(self) -> "StreamServer":
        self._thread.start()
        return self

    def publish(self, picture: np.ndarray) -> None:
        """The newest picture (BGR). Kept by reference: the caller must not draw on it later."""
        with self._cond:
            self._picture = picture
            self._seq += 1
            self._cond.notify_all()

    def jpeg(self, after: int = -1, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """(seq, JPEG) of the newest picture newer than `after`, waiting up to `timeout` for one;
        None when there is none (yet) or the server is closing. Encoded by the first client that
        asks for it, outside the loop's thread."""
        with self._cond:
            if self._seq <= after and not self._closing:
                self._cond.wait(timeout)
            if self._closing or self._picture is None or self._seq <= after:
                return None
            if self._jpeg is not None and self._jpeg[0] == self._seq:
                return self._jpeg
            seq, picture = self._seq, self._picture
        data = encode_jpeg(picture)
        if data is None:
            return None
        with self._cond:
            self._jpeg = (seq, data)
            return self._jpeg

    def add_ng(self, picture: np.ndarray, info: dict[str, Any]) -> None:
        """An NG picture (BGR, kept by reference like publish's) for the page's history of the
        last NG_KEEP, with what its caption says (index, time, score, file, model). Nothing is
        encoded here: the loop's thread only appends."""
        with self._cond:
            self._ng_seq += 1
            self._ng.append(HeldNg(self._ng_seq, info, picture))

    def recent_ng(self) -> list[dict[str, Any]]:
        """The history, newest first: {"id", **info}; /ng/ID.jpg and /ng/ID_thumb.jpg serve it."""
        with self._cond:
            return [{"id": h.id, **h.info} for h in reversed(self._ng)]

    def ng_jpeg(self, ng_id: int, thumb: bool) -> bytes | None:
        """The JPEG of a held NG picture (thumb: THUMB_WIDTH wide), encoded once on the first
        request; None when it has left the history."""
        with self._cond:
            held = next((h for h in self._ng if h.id == ng_id), None)
            if held is None:
                return None
            if thumb in held.jpeg:
                return held.jpeg[thumb]
        picture = held.picture
        if thumb and picture.shape[1] > THUMB_WIDTH:
            height = max(1, round(picture.shape[0] * THUMB_WIDTH / picture.shape[1]))
            picture = cv2.resize(picture, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
        data = encode_jpeg(picture)
        if data is not None:
            with self._cond:
                held.jpeg[thumb] = data
        return data

    @property
    def clients(self) -> int:
        """Viewers of the stream now."""
        return self.streams.used

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop serving, end the streams and release the socket."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    head = False  # this request is a HEAD: the headers of its GET, no body

    def setup(self) -> None:
        # the socket's timeout: a connection that sends no request (or a viewer that takes no
        # data) for this long is closed instead of holding its thread and descriptor for ever
        self.timeout = self.server.owner.idle_timeout
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: one line per request would flood a headless box's journal."""

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not self.head:
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.head = True
        self._get()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.head = False
        self._get()

    def _get(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/status":
                status = {**owner.status(), "recent_ng": owner.recent_ng()}
                self._send(200, (json_text(status, indent=None) + "\n").encode(), "application/json")
            elif path == "/snapshot.jpg":
                got = owner.jpeg(timeout=0)
                if got is None:
                    self._send(503, b"no frame yet\n", "text/plain")
                else:
                    self._send(200, got[1], "image/jpeg")
            elif path == "/stream.mjpg":
                self._stream(owner)
            elif m := NG_PATH.fullmatch(path):
                data = owner.ng_jpeg(int(m[1]), thumb=bool(m[2]))
                if data is None:
                    self._send(404, b"no longer held: the page keeps the last NG frames only\n", "text/plain")
                else:
                    self._send(200, data, "image/jpeg")
            else:
                self._send(404, json.dumps({"error": f"no such page {path}"}).encode(), "application/json")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away

    def _client_gone(self) -> bool:
        """Whether the client closed or reset the connection. Only a failed write used to tell,
        so while no new frame came (a source reconnecting) a client that left stayed counted in
        /status and kept its thread. A viewer sends nothing after its request: end of file or a reset
        means it left."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # reset, or the socket already closed
            return True

    def _stream(self, owner: StreamServer) -> None:
        viewer = not self.head
        if viewer and not owner.streams.take():  # each viewer costs a JPEG write per frame
            self._send(503, f"too many viewers ({owner.streams.cap}); try again later\n".encode(), "text/plain")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if not viewer:
                return
            seq = -1
            while not owner.closing:
                got = owner.jpeg(seq)
                if got is None:
                    if self._client_gone():  # no frame to write (a lost source): ask the socket itself
                        return
                    continue
                seq, data = got
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                                 .encode() + data + b"\r\n")
                self.wfile.flush()
        finally:
            if viewer:
                owner.streams.give()

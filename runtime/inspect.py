"""Batch folder inspection: every image in a folder -> verdict, score, defect area and boxes.

    python -m runtime.inspect --engine screw.onnx --input DIR --output OUT [--recursive]
        [--batch 8] [--save overlay,mask,heatmap] [--threshold-pixel X] [--threshold-image Y]
        [--resume] [--backend onnxruntime|tensorrt|torch] [--providers cpu,cuda] [--device cpu]

Writes OUT/report.jsonl and OUT/report.csv (one row per input, unreadable ones with their reason),
OUT/summary.json (counts, NG rate, images/s, latency percentiles) and, with --save, pictures under
OUT/overlay/, OUT/mask/, OUT/heatmap/ mirroring the input tree (`<relative path>.jpg`, masks
`.png`; --format png for lossless overlays).

Pipeline: a thread pool decodes ahead of the model (OpenCV releases the GIL), the main thread runs
batches, a second pool post-processes and writes pictures; rows are written in input order (sorted
relative paths), so the report is deterministic. report.jsonl is appended and flushed row by row
(a row is written only after its pictures), report.csv and summary.json are rewritten atomically,
so a crash never leaves a half-written file, and --resume continues after the last row (refused
when the model, thresholds, input folder, --recursive, --save or --format differ from the report's).
An image whose model output is not finite or whose pictures cannot be written is an error row.
Inputs are only read. Exit: 0 every input has its row (failed ones with their reason), 1 fatal
error (model, backend, inference), 2 usage error.
"""
from __future__ import annotations

import argparse
import csv
import errno
import io
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np

from runtime import overlay as ov
from runtime.model import Model, ModelError, open_model
from runtime.backends import BackendError
from runtime.postprocess import OutputError, Thresholds, inspect_map
from core.files import atomic_write, json_text, sha256, write_json
from core.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, Decoded, ImageError, decode

SAVE_KINDS = ("overlay", "mask", "heatmap")
REPORT_FILES = ("report.jsonl", "report.csv", "summary.json")
CSV_FIELDS = ("file", "status", "verdict", "score", "area", "n_boxes", "boxes", "width", "height",
              "decode_scale", "latency_ms", "decode_ms", "infer_ms", "post_ms", "batch", "reason")
CSV_EVERY_S = 2.0


# a picture write failing with one of these stops the run (every later write would fail too)
OUTPUT_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class OutputFull(RuntimeError):
    """The output folder cannot take more files: the run stops, resumable, instead of turning
    every later image into an error row that --resume would then skip."""


class UsageError(Exception):
    """Bad command line or paths: exit 2."""


# ----------------------------------------------------------------------------- discovery

@dataclass(frozen=True)
class Entry:
    rel: str                # posix path relative to --input: the report's key
    path: Path
    error: str | None = None


def _reason(e: Exception) -> str:
    """One short line: an OSError's strerror (its message would repeat a possibly very long path)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return report_safe(str(e).strip().splitlines()[0][:200]) if str(e).strip() else e.__class__.__name__


def report_name(name: str) -> str:
    """A file name as the report writes it: bytes that are not UTF-8 (Python keeps them as lone
    surrogates, which no UTF-8 writer accepts) become backslash escapes, e.g. caf\\xe9.png, and a
    backslash in a name is doubled first, so that the escaping is reversible (a file literally
    named caf\\xe9.png gets another key). The report key, error texts and picture names all use
    it; reading uses the real path."""
    return report_safe(name.replace("\\", "\\\\"))


def report_safe(obj: Any) -> Any:
    """Every string of a JSON-able value with bytes that are not UTF-8 as backslash escapes
    (paths given on the command line, for the summary's header and the console)."""
    if isinstance(obj, str):
        return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {k: report_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [report_safe(v) for v in obj]
    return obj


def _key(p: Path | os.DirEntry) -> tuple[int, int] | None:  # type: ignore[type-arg]
    try:
        st = p.stat() if isinstance(p, Path) else p.stat(follow_symlinks=True)
        return st.st_dev, st.st_ino
    except OSError:
        return None


def _is_dir(e: os.DirEntry) -> bool:  # type: ignore[type-arg]
    """From the directory listing itself (d_type): works where stat() of the entry fails."""
    try:
        return e.is_dir(follow_symlinks=False)
    except OSError:
        return False


def discover(root: Path, recursive: bool = False, exclude: Path | None = None,
             scandir: Callable[[Path], Any] | None = None,
             extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Entry]:
    """Image files under root, sorted by relative path; problems become entries with an error.

    Symlinks are followed; a link back to a folder above it (a loop), a folder reached a second
    time through another link (its images are listed once, under the first path) and a link that
    loops on itself are listed with their reason, as is a directory that cannot be listed. `exclude` (the
    output folder when it lies inside the input) is skipped, so a run never inspects its own
    pictures. `scandir` is injectable so tests can simulate unreadable folders (tests run as root).
    """
    if root.is_file():
        return [Entry(report_name(root.name), root)]
    scandir = scandir or os.scandir
    out: list[Entry] = []
    skip = _key(exclude) if exclude is not None and exclude.exists() else None
    visited: dict[tuple[int, int], str] = {}

    def walk(d: Path, rel: str, ancestors: frozenset[tuple[int, int]] = frozenset()) -> None:
        k = _key(d)
        if k is not None and k in ancestors:
            out.append(Entry(rel, d, "symlink loop: a link back to a folder above it"))
            return
        if k is not None and k in visited:  # an alias, not a loop: say where its images are
            out.append(Entry(rel, d, f"same folder as '{visited[k] or '.'}' (reached twice through a "
                                     "symlink): its images are inspected there"))
            return
        if k is not None:
            visited[k] = rel
            ancestors = ancestors | {k}
        try:
            with scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.append(Entry(rel or ".", d, f"cannot list directory ({_reason(e)})"))
            return
        for e in entries:
            p = Path(e.path)
            name = report_name(e.name)
            r = f"{rel}/{name}" if rel else name
            try:
                st = os.stat(p)  # follows symlinks
            except OSError as err:
                if err.errno == errno.ELOOP:
                    out.append(Entry(r, p, "symlink loop"))
                elif Path(e.name).suffix.lower() in extensions or (recursive and _is_dir(e)):
                    out.append(Entry(r, p, f"cannot access ({_reason(err)}; broken symlink?)"
                                     if os.path.islink(p) else f"cannot access ({_reason(err)})"))
                continue
            if stat.S_ISDIR(st.st_mode):
                if skip is not None and (st.st_dev, st.st_ino) == skip:
                    continue
                if recursive:
                    walk(p, r, ancestors)
                continue
            if Path(e.name).suffix.lower() not in extensions:
                continue
            if not stat.S_ISREG(st.st_mode):
                out.append(Entry(r, p, "not a regular file"))
                continue
            out.append(Entry(r, p))

    walk(root, "")
    out.sort(key=lambda e: e.rel)
    return out


# ----------------------------------------------------------------------------- decoding

# ----------------------------------------------------------------------------- reports

def _num(x: Any, nd: int = 6) -> Any:
    return None if x is None else round(float(x), nd)


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    r = {k: row.get(k) for k in CSV_FIELDS}
    r["boxes"] = ";".join(" ".join(str(v) for v in b) for b in (row.get("boxes") or []))
    return {k: "" if v is None else v for k, v in r.items()}


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(csv_row(row))
    data = buf.getvalue().encode("utf-8")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


# Line breaks to Python's str.splitlines (and to many editors) that JSON leaves unescaped; json
# escapes every other control character itself.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def jsonl_line(row: dict[str, Any]) -> str:
    """One report row as one JSON line that every line reader splits where we do."""
    text = json_text(row, indent=None)
    for ch, esc in _LINE_BREAKS.items():
        text = text.replace(ch, esc)
    return text + "\n"


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    data = "".join(jsonl_line(r) for r in rows).encode("utf-8")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_report(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing report.jsonl. A killed run can leave a torn last line: it is dropped
    (that input is simply inspected again), so resume never duplicates nor loses a row."""
    if not path.exists():
        return []
    rows = []
    # "\n" only: splitlines() also splits at U+2028 / U+0085, which a file name may contain
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and "file" in r:
            rows.append(r)
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:  # last row per file wins, first position kept
        seen[r["file"]] = r
    return list(seen.values())


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "mean": round(float(a.mean()), 3)}


def failure_kind(reason: str, file: str = "") -> str:
    """A short class of a failure reason for the summary: the row's own file name removed (it
    may contain ': ' itself), then any parenthesized detail."""
    r = reason.removeprefix(f"{file}: ") if file else reason
    return r.split(" (")[0].strip()


def summarize(rows: list[dict[str, Any]], run_rows: list[dict[str, Any]], wall_s: float,
              header: dict[str, Any], status: str, cpu_s: float | None = None) -> dict[str, Any]:
    # inspected = judged by the model (it has a score), even when its pictures could not be
    # written: that row also counts as failed, but its verdict still counts, an NG part included
    inspected = [r for r in rows if r.get("score") is not None]
    failed = [r for r in rows if r.get("status") != "ok"]
    ng = sum(r.get("verdict") == "NG" for r in inspected)
    good = sum(r.get("verdict") == "OK" for r in inspected)
    judged = ng + good
    run_ok = [r for r in run_rows if r.get("score") is not None]  # as counts.inspected
    return {
        **header,
        "status": status,
        "counts": {"total": len(rows), "inspected": len(inspected), "failed": len(failed),
                   "ok": good, "ng": ng, "no_verdict": len(inspected) - judged},
        "ng_rate": round(ng / judged, 6) if judged else None,
        "failures": dict(Counter(failure_kind(r.get("reason") or "", r.get("file", "")) for r in failed)),
        "this_run": {"rows": len(run_rows), "inspected": len(run_ok), "wall_s": round(wall_s, 3),
                     "cpu_s": None if cpu_s is None else round(cpu_s, 3),
                     "images_per_s": round(len(run_ok) / wall_s, 3) if wall_s > 0 and run_ok else None},
        "latency_ms": percentiles([r["latency_ms"] for r in run_ok if r.get("latency_ms") is not None]),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds") if status != "running" else None,
    }


class Reports:
    """report.jsonl (append + flush per row), report.csv and summary.json (atomic rewrites)."""

    def __init__(self, out: Path, previous: list[dict[str, Any]], header: dict[str, Any]) -> None:
        self.out = out
        self.rows = list(previous)
        self.run_rows: list[dict[str, Any]] = []
        self.header = header
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()  # all threads: what the work costs, whoever else runs
        self._csv_at = 0.0
        self._csv_cost = 0.0  # seconds the last table rewrite took
        # Rewrite the previous rows (drops a torn last line), then append from here on.
        write_jsonl(out / "report.jsonl", self.rows)
        self.jsonl = open(out / "report.jsonl", "a", encoding="utf-8")
        self.flush_tables("running", force=True)

    def add(self, row: dict[str, Any]) -> None:
        self.jsonl.write(jsonl_line(row))
        self.jsonl.flush()
        self.rows.append(row)
        self.run_rows.append(row)
        self.flush_tables("running")

    def flush_tables(self, status: str, force: bool = False, order: list[str] | None = None) -> None:
        now = time.perf_counter()
        # the rewrite costs O(rows) on the inference thread (76 ms at 10,000 rows, 1 s at 100,000):
        # at most ~5 % of the run's time goes to it, however large the report grows
        if not force and now - self._csv_at < max(CSV_EVERY_S, 20 * self._csv_cost):
            return
        self._csv_at = now
        rows = self.rows
        if order is not None:
            pos = {k: i for i, k in enumerate(order)}
            rows = sorted(rows, key=lambda r: (pos.get(r["file"], len(pos)), r["file"]))
        write_csv(self.out / "report.csv", rows)
        self.summary = summarize(rows, self.run_rows, now - self.started, self.header, status,
                                 time.process_time() - self.cpu_started)
        write_json(self.out / "summary.json", self.summary)
        self._csv_cost = time.perf_counter() - now

    def finish(self, status: str, order: list[str]) -> dict[str, Any]:
        try:
            self.jsonl.close()
            if status == "complete":
                pos = {k: i for i, k in enumerate(order)}
                self.rows.sort(key=lambda r: (pos.get(r["file"], len(pos)), r["file"]))
                write_jsonl(self.out / "report.jsonl", self.rows)  # input order, even across resumes
            self.flush_tables(status, force=True, order=order)
        except OSError:
            if status == "complete":
                raise
            # a run already failing (a full disk fails the buffered flush again): the JSONL
            # written row by row is what --resume reads; the original error is the one to report
        return self.summary


# atomic_write's temporaries: ".<final name>.<8 random chars from mkstemp><suffix>". A real picture
# ends in ".<image extension of at most 4 chars>.<png|jpg>", so it never matches.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}(\.tmp|\.png|\.jpg)$")


def remove_previous(out: Path) -> None:
    """What a run writes into OUT (reports and picture folders), nothing else: OUT may hold other files."""
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    for kind in SAVE_KINDS:
        if (out / kind).is_dir() and not (out / kind).is_symlink():
            shutil.rmtree(out / kind)


def clean_temporaries(out: Path) -> int:
    """Remove temporary files a killed run left behind: never real output, which is only ever
    replaced whole. Looks only at the report files' folder and the picture folders."""
    n = 0
    candidates = [p for p in out.glob(".*") if p.name.split(".")[1] in ("report", "summary")]
    for kind in SAVE_KINDS:
        if (out / kind).is_dir():
            candidates += list((out / kind).rglob(".*"))
    for p in candidates:
        if _TEMPORARY.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


# ----------------------------------------------------------------------------- pictures

# PNG at the fastest compression (masks are binary: tiny anyway); JPEG for the pictures people
# look at by default, because a 1024x1024 color PNG costs ~100 ms to encode, JPEG ~6 ms.
ENCODE_PARAMS = {".png": [cv2.IMWRITE_PNG_COMPRESSION, 1], ".jpg": [cv2.IMWRITE_JPEG_QUALITY, 90]}


def save_image(path: Path, image: np.ndarray) -> None:
    """Atomic write; imencode + tofile because cv2.imwrite cannot write unicode paths everywhere."""
    ok, buf = cv2.imencode(path.suffix, image, ENCODE_PARAMS.get(path.suffix, []))
    if not ok:
        raise OSError(errno.EINVAL, f"{path.suffix} encoding failed", str(path))
    # write_bytes, not ndarray.tofile: a full disk must raise with its errno (ENOSPC), not a bare OSError
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()), suffix=path.suffix, durable=False)


def picture_path(out: Path, kind: str, rel: str, fmt: str = "jpg") -> Path:
    """OUT/<kind>/<relative input path>.<ext>: keeps the tree, and a.jpg / a.png never collide.
    Masks are always PNG (lossless); overlays and heatmaps use `fmt`."""
    return out / kind / f"{rel}.{'png' if kind == 'mask' else fmt}"


# ----------------------------------------------------------------------------- the run

@dataclass
class Job:
    entry: Entry
    decoded: Decoded | None = None
    input: np.ndarray | None = None
    error: str | None = None
    decode_ms: float = 0.0
    size: tuple[int, int] = (0, 0)  # decoded (height, width): where maps are mapped back to
    future: Future | None = None
    row: dict[str, Any] | None = None


@dataclass
class Settings:
    out: Path
    thresholds: Thresholds
    save: tuple[str, ...]
    max_pixels: int
    explain_name: str
    picture_format: str = "jpg"
    explain_range: tuple[float, float] | None = None  # fixed color scale of the overlay (None: per image)
    legend: str | None = None


def prepare_job(entry: Entry, model: Model, s: Settings) -> Job:
    job = Job(entry)
    if entry.error is not None:
        job.error = entry.error
        return job
    t0 = time.perf_counter()
    try:
        d = decode(entry.path, model.spec.channels, s.max_pixels)
        job.input = model.prepare(d.image)
        job.decoded = d
        job.size = d.size
        if "overlay" not in s.save:  # only the overlay needs the pixels: free them early (a slice
            d.image = np.empty((0, 0, d.image.shape[2]), np.uint8)  # would be a view keeping them alive)
    except ImageError as e:
        job.error = report_safe(str(e).replace(str(entry.path), entry.rel, 1))  # rel is escaped already
    except (OSError, cv2.error, MemoryError) as e:
        job.error = f"{entry.rel}: cannot decode ({report_safe(str(e).splitlines()[0][:200])})"
    job.decode_ms = (time.perf_counter() - t0) * 1e3
    return job


def error_row(job: Job) -> dict[str, Any]:
    return {"file": job.entry.rel, "status": "error", "reason": job.error, "decode_ms": _num(job.decode_ms, 3)}


def finish_job(job: Job, outputs: dict[str, np.ndarray], infer_ms: float, batch: int, s: Settings) -> dict[str, Any]:
    """Post-process one image and write its pictures; returns its report row.

    Failures of this one image become its error row, so the run goes on: an unusable model output
    (OutputError), or pictures that cannot be written (e.g. a name too long once the picture
    extension is added); the latter keeps the score and verdict, which were computed."""
    t0 = time.perf_counter()
    d = job.decoded
    assert d is not None
    size = job.size
    want_maps = bool(set(s.save) & {"mask", "heatmap", "overlay"})
    try:
        res = inspect_map(outputs["anomaly_map"], size, s.thresholds, d.scale, keep_maps=want_maps)
    except OutputError as e:
        job.error = f"{job.entry.rel}: {e}"
        return error_row(job)
    except MemoryError:  # full-size maps of a huge image: that image fails, as in decoding
        job.error = f"{job.entry.rel}: out of memory in post-processing"
        return error_row(job)
    saved = {}
    unsaved = []
    for kind in s.save:
        p = picture_path(s.out, kind, job.entry.rel, s.picture_format)
        try:
            if kind == "mask":
                if res.mask is None:
                    continue
                save_image(p, res.mask)
            elif kind == "heatmap":
                save_image(p, ov.heatmap(res.anomaly_map, pixel_threshold=s.thresholds.pixel))
            else:
                lo, hi = s.explain_range or (None, None)
                save_image(p, ov.render(d.image, outputs.get(s.explain_name, outputs["anomaly_map"]), res.mask,
                                      res.verdict, res.score, s.thresholds.image, vmin=lo, vmax=hi,
                                      legend=s.legend))
        except (OSError, cv2.error, MemoryError) as e:
            if isinstance(e, OSError) and e.errno in OUTPUT_FULL:  # every later picture would fail too
                raise OutputFull(f"{p}: {e.strerror}: free space on the output, then rerun with --resume") from e
            unsaved.append(f"cannot write {kind} picture ({_reason(e)})")
            continue
        saved[kind] = str(p.relative_to(s.out).as_posix())
    post_ms = (time.perf_counter() - t0) * 1e3
    reason = f"{job.entry.rel}: {'; '.join(unsaved)}" if unsaved else None
    return {"file": job.entry.rel, "status": "error" if reason else "ok", **res.as_row(), "score": _num(res.score, 8),
            "width": d.original[1], "height": d.original[0], "decode_scale": _num(d.scale, 4),
            "latency_ms": _num(job.decode_ms + infer_ms + post_ms, 3), "decode_ms": _num(job.decode_ms, 3),
            "infer_ms": _num(infer_ms, 3), "post_ms": _num(post_ms, 3), "batch": batch,
            "pictures": saved or None, "reason": reason}


def prefetch(pool: ThreadPoolExecutor, fn: Callable[[Entry], Job], items: list[Entry],
             depth: int) -> Iterator[Job]:
    """fn over items in a thread pool, at most `depth` ahead, results in input order."""
    q: deque[Future] = deque()
    it = iter(items)
    for item in it:
        q.append(pool.submit(fn, item))
        if len(q) >= depth:
            break
    while q:
        fut = q.popleft()
        nxt = next(it, None)
        if nxt is not None:
            q.append(pool.submit(fn, nxt))
        yield fut.result()


def inspect_folder(model: Model, entries: list[Entry], s: Settings, reports: Reports, batch: int = 8,
                   workers: int = 2, progress: bool = True) -> None:
    """Run every entry through decode -> model -> post-process, writing rows in input order."""
    from tqdm import tqdm

    bar = tqdm(total=len(entries), unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    pending: deque[Job] = deque()
    max_pending = max(4 * batch, 2 * workers)

    def flush(keep: int | None = None) -> None:
        """Write the finished rows at the head of the queue, in input order. With `keep`, also
        wait for the head until at most `keep` jobs are pending (back-pressure that still lets
        the newest batch's post-processing overlap the next inference)."""
        while pending:
            head = pending[0]
            if head.row is None:
                if head.future is None:  # its batch has not run yet
                    return
                if not head.future.done() and (keep is None or len(pending) <= keep):
                    return
                head.row = head.future.result()
            pending.popleft()
            reports.add(head.row)
            bar.update(1)

    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as dec_pool, \
            ThreadPoolExecutor(workers, thread_name_prefix="post") as post_pool:
        todo: list[Job] = []

        def run_batch() -> None:
            x = np.stack([j.input for j in todo])  # type: ignore[misc]
            t0 = time.perf_counter()
            outs = model(x)
            infer_ms = (time.perf_counter() - t0) * 1e3
            n = len(todo)
            for i, j in enumerate(todo):
                j.input = None
                one = {k: v[i] for k, v in outs.items()}
                j.future = post_pool.submit(finish_job, j, one, infer_ms, n, s)
            todo.clear()

        try:
            for job in prefetch(dec_pool, lambda e: prepare_job(e, model, s), entries, depth=2 * batch + workers):
                pending.append(job)
                if job.error is not None:
                    job.row = error_row(job)
                else:
                    todo.append(job)
                    if len(todo) == batch:
                        run_batch()
                flush(keep=max_pending)  # bounds the decoded images held in memory
            if todo:
                run_batch()
            flush(keep=0)
        except BaseException as e:
            # stop now: queued decodes are cancelled (cheap to redo on --resume). After a fatal
            # error the images already inferred finish post-processing and get their rows; after
            # Ctrl-C / SIGTERM their queued pictures are cancelled too and only finished rows are written.
            interrupted = isinstance(e, KeyboardInterrupt)
            dec_pool.shutdown(wait=False, cancel_futures=True)
            if interrupted:
                post_pool.shutdown(wait=False, cancel_futures=True)
            try:
                flush() if interrupted else flush(keep=0)
            except BaseException:  # noqa: BLE001 - the original error is the one to report
                pass
            raise
    bar.close()


# ----------------------------------------------------------------------------- CLI

def device_arg(value: str) -> str:
    """argparse type: the device grammar every backend shares (a typo is a usage error, exit 2)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r}: choose cpu, cuda or cuda:N")
    return value


def explanation_range(model: Model, explain: str, th: Thresholds) -> tuple[float, float] | None:
    """The overlay's fixed color scale (runtime.overlay): the attention over 0 .. 2 x its normal
    99th percentile from the sidecar, the anomaly map over 0 .. 2 x the pixel threshold; None
    (per image) when the model does not say what normal is."""
    if explain == "attention":
        # an exported model's sidecar, or a checkpoint's own export settings (the torch backend)
        scale = (((model.sidecar or {}).get("model") or {}).get("attention_scale")
                 or (getattr(model.backend, "settings", None) or {}).get("attention_scale"))
        return (0.0, 2.0 * float(scale)) if isinstance(scale, (int, float)) and scale > 0 else None
    return (0.0, 2.0 * th.pixel) if th.pixel is not None and th.pixel > 0 else None


def finite_float(text: str) -> float:
    """argparse type: a threshold of nan or inf would make every comparison False or True."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", "--model", dest="engine", required=True,
                   help="model file: .onnx, .trt/.engine/.plan or .pt (sidecar X.yaml beside it)")
    p.add_argument("--input", required=True, help="folder of images (or one image)")
    p.add_argument("--output", required=True, help="report folder (may lie inside --input: it is skipped)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--batch", type=int, default=8, help="images per model call (default 8)")
    p.add_argument("--save", default="", help=f"pictures to write, comma list of {','.join(SAVE_KINDS)}")
    p.add_argument("--format", choices=["jpg", "png"], default="jpg",
                   help="overlay/heatmap file format (default jpg: ~20x faster to encode; masks are always png)")
    p.add_argument("--threshold-pixel", type=finite_float, help="pixel threshold on anomaly_map (default: sidecar)")
    p.add_argument("--threshold-image", type=finite_float, help="image-score threshold for NG (default: sidecar)")
    p.add_argument("--resume", action="store_true", help="skip inputs already in OUT/report.jsonl")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous report in OUT, and its pictures (without it, or --resume, a folder "
                        "holding a report is refused)")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt", "torch"], help="override the extension's backend")
    p.add_argument("--providers", help="ONNX Runtime providers in order, e.g. cuda,cpu (default: TensorRT, CUDA, CPU as available)")
    p.add_argument("--device", type=device_arg, help="cpu, cuda or cuda:N (default: cuda when available); for .onnx, cpu means "
                                    "the CPU provider only and cuda:N the GPU of the CUDA/TensorRT providers")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--workers", type=int, default=2, help="decode / post-process threads each (default 2)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"larger images are decoded reduced by 2/4/8 (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_paths(inp: Path, out: Path) -> None:
    if not inp.exists():
        raise UsageError(f"--input {inp}: not found")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out}: exists and is not a folder")
    ri, ro = inp.resolve(), out.resolve()
    if ri == ro:
        raise UsageError("--output must differ from --input (inputs are never modified; "
                         "a sub-folder of the input is fine, it is skipped)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 2 on usage errors, 0 on --help
        return int(e.code or 0)
    try:
        save = tuple(k.strip() for k in args.save.split(",") if k.strip())
        bad = [k for k in save if k not in SAVE_KINDS]
        if bad:
            raise UsageError(f"--save: unknown picture kind(s) {bad}; choose from {','.join(SAVE_KINDS)}")
        if args.batch < 1 or args.workers < 1 or args.max_pixels < 1:
            raise UsageError("--batch, --workers and --max-pixels must be positive")
        inp, out = Path(args.input), Path(args.output)
        check_paths(inp, out)
        if args.resume and args.overwrite:
            raise UsageError("--resume continues the report in --output, --overwrite replaces it: choose one")
        if args.overwrite and any(inp.resolve().is_relative_to((out / kind).resolve()) for kind in SAVE_KINDS):
            raise UsageError(f"--overwrite would delete the input {inp}: it lies in a picture folder of {out}")
        if not (args.resume or args.overwrite) and (out / "report.jsonl").exists():
            # a new report beside the old run's pictures would contradict them
            raise UsageError(f"--output {out} holds a previous report: --resume continues it, --overwrite "
                             f"replaces it and its pictures, or choose another --output")
    except UsageError as e:
        print(f"error: {report_safe(str(e))}", file=sys.stderr)
        return 2
    # SIGTERM (systemd, docker stop) takes the Ctrl-C path: an 'interrupted' report, not a torn one
    previous = (signal.signal(signal.SIGTERM, _terminate)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        return run(args, inp, out, save)
    except UsageError as e:
        print(f"error: {report_safe(str(e))}", file=sys.stderr)
        return 2
    except (ModelError, BackendError) as e:
        print(f"error: {report_safe(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun with --resume to continue", file=sys.stderr)
        return 1
    except OutputFull as e:
        print(f"error: {report_safe(str(e))}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e.__class__.__name__}: {report_safe(str(e))}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def model_identity(model: Model) -> str:
    files = (model.sidecar or {}).get("files") or {}
    entry = files.get(model.path.name) or {}
    return str(entry.get("sha256") or sha256(model.path))


def resume_conflicts(old: dict[str, Any], header: dict[str, Any]) -> list[str]:
    """The settings of this run that differ from those of the report being resumed (its
    summary.json): mixing them would give a report whose rows answer different questions."""
    old_th, th = old.get("thresholds") or {}, header["thresholds"]
    checks = {
        "model": (old.get("model") or {}).get("sha256") == header["model"]["sha256"],
        "thresholds": (old_th.get("pixel"), old_th.get("image")) == (th["pixel"], th["image"]),
        # resolved: the same folder given by another path (relative, via a symlink) is the same input
        "--input": bool(old.get("input")) and Path(old["input"]).resolve() == Path(header["input"]),
        "--recursive": old.get("recursive") == header["recursive"],
        "--save": sorted(old.get("save") or []) == sorted(header["save"]),
        # masks are always PNG: the format only matters for overlays and heatmaps
        "--format": old.get("format") == header["format"] or not {"overlay", "heatmap"} & set(header["save"]),
    }
    return [name for name, same in checks.items() if not same]


def run(args: argparse.Namespace, inp: Path, out: Path, save: tuple[str, ...]) -> int:
    cv2.setNumThreads(1)  # parallelism is per image (thread pools); OpenCV's own pool would oversubscribe
    # libpng/libjpeg warnings about a broken file would interleave with the progress bar; the
    # report already holds each failure with its reason
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    model = open_model(args.engine, backend=args.backend, providers=args.providers, device=args.device,
                       threads=args.threads)
    if "anomaly_map" not in model.output_names:
        raise ModelError(f"{model.path}: the model has no 'anomaly_map' output (outputs: {list(model.output_names)}); "
                         f"re-export it with python -m export.onnx")
    try:
        th = Thresholds.resolve(model.thresholds, args.threshold_pixel, args.threshold_image)
    except ValueError as e:
        raise ModelError(f"{model.path}: sidecar thresholds: {e}") from e
    if not th.any:
        print("note: no thresholds in the sidecar and none given (--threshold-pixel/--threshold-image): "
              "reporting scores only, no verdicts, masks or areas", file=sys.stderr)
    elif th.image is None:
        print("note: no image threshold: no OK/NG verdicts, only scores, areas and boxes", file=sys.stderr)
    elif th.pixel is None:
        print("note: no pixel threshold: verdicts and scores only, no masks, areas or boxes", file=sys.stderr)
    if "mask" in save and th.pixel is None:
        print("note: --save mask needs a pixel threshold; masks are not written", file=sys.stderr)
    explain = "attention" if "attention" in model.output_names else "anomaly_map"
    explain_range = explanation_range(model, explain, th)

    if args.overwrite:  # only now that the model opened: a fatal error must not cost the old report
        remove_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)
    header = report_safe({  # paths from the command line may hold bytes that are not UTF-8 too
        "input": str(inp.resolve()), "output": str(out), "recursive": bool(args.recursive), "batch": args.batch,
        "workers": args.workers, "model": {**model.describe(), "sha256": model_identity(model)},
        "thresholds": {"pixel": th.pixel, "image": th.image, "source": th.source,
                       **({} if th.any else {"note": "no thresholds: scores only"})},
        "save": list(save), "format": args.format, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    previous: list[dict[str, Any]] = []
    if args.resume:
        previous = read_report(out / "report.jsonl")
        old = {}
        try:
            old = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        differ = resume_conflicts(old, header) if previous and isinstance(old, dict) and old else []
        if differ:
            raise UsageError(f"--resume: {out} holds a report whose {', '.join(differ)} "
                             f"{'differs' if len(differ) == 1 else 'differ'} from this run's; use a new --output "
                             f"or --overwrite")
    entries = discover(inp, args.recursive, exclude=out)
    if previous:
        # a failure of an input that is gone (a loop since fixed, a bad file since removed) would
        # stay in the report for ever; rows with a score are results and stay
        current = {e.rel for e in entries}
        kept = [r for r in previous if r["file"] in current or r.get("score") is not None]
        if len(kept) < len(previous):
            print(f"resume: dropped {len(previous) - len(kept)} failure row(s) of inputs no longer there",
                  file=sys.stderr)
        previous = kept
    done = {r["file"] for r in previous}
    todo = [e for e in entries if e.rel not in done]
    if args.resume and previous:
        print(f"resume: {len(done)} inputs already in the report, {len(todo)} to go", file=sys.stderr)
    # One batch of zeros before the clock starts: lazy initialization (ONNX Runtime's arenas, cuDNN
    # algorithm search, CUDA graph capture) would otherwise be charged to the first images.
    t0 = time.perf_counter()
    model(np.zeros((min(args.batch, model.backend.max_batch or args.batch), model.spec.height, model.spec.width,
                    model.spec.channels), np.uint8))
    header["warmup_s"] = round(time.perf_counter() - t0, 3)
    s = Settings(out, th, save, args.max_pixels, explain, args.format, explain_range,
                 ov.legend_text(explain, explain_range is not None, th.pixel))
    reports = Reports(out, previous, header)
    status = "failed"
    try:
        inspect_folder(model, todo, s, reports, args.batch, args.workers, progress=not args.quiet)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        try:
            summary = reports.finish(status, [e.rel for e in entries])
        finally:
            model.close()
    c = summary["counts"]
    rate = summary["this_run"]["images_per_s"]
    print(f"{c['inspected']} inspected ({c['ng']} NG, {c['ok']} OK, {c['no_verdict']} without verdict), "
          f"{c['failed']} failed; {f'{rate:.1f} images/s' if rate else 'nothing inspected in this run'}; "
          f"report: {report_safe(str(out / 'report.csv'))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

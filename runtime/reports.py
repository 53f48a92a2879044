"""What a folder inspection writes into its output folder, and how a run is resumed from it.

report.jsonl is appended and flushed row by row (a row is written only after its pictures) and is
the truth on --resume; report.csv and summary.json are rewritten atomically; pictures are written
atomically under OUT/<kind>/ mirroring the input tree. A crash never leaves a half-written file.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import re
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from core.files import atomic_write, json_text, sha256, write_json

SAVE_KINDS = ("overlay", "mask", "heatmap")
REPORT_FILES = ("report.jsonl", "report.csv", "summary.json")
# `processing` says whether the image went through (done) or not (failed, with its reason); the
# verdict is its own column, OK / NG / NO VERDICT, so that nobody reads one as the other
CSV_FIELDS = ("file", "processing", "verdict", "score", "area", "n_boxes", "boxes", "width", "height",
              "decode_scale", "registration", "angle", "latency_ms", "decode_ms", "infer_ms", "post_ms", "batch",
              "reason")
REPORT_VERSION = 2  # rows of version 1 had `status` ok/error and no NO VERDICT: never mixed on resume
CSV_EVERY_S = 2.0


# a picture write failing with one of these stops the run (every later write would fail too): a
# full or read-only disk, or a picture folder blocked by a file of the same name
OUTPUT_STOPS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOTDIR, errno.EEXIST})


class OutputUnwritable(RuntimeError):
    """The output folder cannot take more files: the run stops, resumable, instead of turning
    every later image into an error row."""


def unwritable(path: Path, e: OSError) -> OutputUnwritable:
    """The one line for a write that stops the run: the file, the reason, what to do."""
    why = e.strerror or str(e)
    fix = ("a file blocks the folder: move it" if e.errno in (errno.ENOTDIR, errno.EEXIST)
           else "free space on the output (or make it writable)")
    return OutputUnwritable(f"{path}: {why}: {fix}, then rerun with --resume")


def _num(x: Any, nd: int = 6) -> Any:
    return None if x is None else round(float(x), nd)


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    r = {k: row.get(k) for k in CSV_FIELDS}
    r["boxes"] = ";".join(" ".join(str(v) for v in b) for b in (row.get("boxes") or []))
    reg = row.get("registration") or {}
    r["registration"], r["angle"] = reg.get("status"), reg.get("angle")
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
    failed = [r for r in rows if r.get("processing") != "done"]
    ng = sum(r.get("verdict") == "NG" for r in inspected)
    good = sum(r.get("verdict") == "OK" for r in inspected)
    judged = ng + good
    run_ok = [r for r in run_rows if r.get("score") is not None]  # as counts.inspected
    return {
        **header,
        "status": status,
        "report_version": REPORT_VERSION,
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
        try:
            self.jsonl.write(jsonl_line(row))
            self.jsonl.flush()
        except OSError as e:
            raise unwritable(self.out / "report.jsonl", e) from e
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
        self.summary = summarize(rows, self.run_rows, now - self.started, self.header, status,
                                 time.process_time() - self.cpu_started)
        for name, write in (("report.csv", lambda: write_csv(self.out / "report.csv", rows)),
                            ("summary.json", lambda: write_json(self.out / "summary.json", self.summary))):
            try:
                write()
            except OSError as e:
                raise unwritable(self.out / name, e) from e
        self._csv_cost = time.perf_counter() - now

    def finish(self, status: str, order: list[str]) -> dict[str, Any]:
        try:
            self.jsonl.close()
            if status == "complete":
                pos = {k: i for i, k in enumerate(order)}
                self.rows.sort(key=lambda r: (pos.get(r["file"], len(pos)), r["file"]))
                write_jsonl(self.out / "report.jsonl", self.rows)  # input order, even across resumes
            self.flush_tables(status, force=True, order=order)
        except (OSError, OutputUnwritable):
            if status == "complete":
                raise
            # a run already failing (a full disk fails the buffered flush again): the JSONL
            # written row by row is what --resume reads; the original error is the one to report
        return self.summary


# atomic_write's temporaries: ".<final name>.<8 random chars from mkstemp><suffix>": a report's ends
# in .tmp, a picture's repeats its extension around the random part (".000.jpg.k2j_x9qa.jpg"), which
# a real picture name (a dot-name only when its input's is one) does not.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$|^\..+\.(png|jpg)\.[a-z0-9_]{8}\.(png|jpg)$")


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


def picture_stems(rels: Iterable[str], reserved: dict[str, str] | None = None) -> dict[str, str]:
    """The name each input's pictures take, without extension: the relative path with its
    extension dropped (000.png -> 000, so 000.jpg), unless another input's pictures would then
    share it: then the relative path itself (a.png and a.jpg side by side keep theirs: a.png.jpg,
    a.jpg.jpg), and when even that is taken (a.png.jpg beside them is shortened to a.png) a
    numbered one (a.png~2). `reserved`: {input: name} of the rows a resumed report keeps; their
    pictures exist, so those names stay theirs and no other input takes one."""
    fixed = dict(reserved or {})
    rels = [r for r in rels if r not in fixed]
    stems = {r: (r.rsplit(".", 1)[0] if "." in r.rsplit("/", 1)[-1] else r) for r in rels}
    level = dict.fromkeys(rels, 0)  # 0 shortened, 1 the relative path, 2 numbered: only ever raised
    while True:
        owners: dict[str, list[str]] = {}
        for r, stem in [*fixed.items(), *stems.items()]:
            owners.setdefault(stem, []).append(r)
        # in each shared name, only the inputs with the shortest form move on (a.png.jpg to its whole
        # name, not a.png to a number), so every step frees a name and the loop ends
        moving = []
        for names in owners.values():
            movable = [r for r in names if r in level and level[r] < 2]
            if len(names) > 1 and movable:
                low = min(level[r] for r in movable)
                moving += [r for r in movable if level[r] == low]
        if not moving:
            return {**fixed, **stems}
        used = set(owners)
        for r in moving:
            if level[r] == 0 and stems[r] != r:
                stems[r], level[r] = r, 1
            else:
                n = 2
                while f"{r}~{n}" in used:
                    n += 1
                stems[r], level[r] = f"{r}~{n}", 2
            used.add(stems[r])


def kept_stems(rows: Iterable[dict[str, Any]]) -> dict[str, str]:
    """{input: picture name} of report rows that have pictures (picture_path's inverse), so that a
    resumed run never gives one of their names to another input."""
    out = {}
    for row in rows:
        for kind, rel in (row.get("pictures") or {}).items():
            if isinstance(rel, str) and rel.startswith(f"{kind}/"):
                out[row["file"]] = rel[len(kind) + 1:].rsplit(".", 1)[0]
                break
    return out


def picture_path(out: Path, kind: str, stem: str, fmt: str = "jpg") -> Path:
    """OUT/<kind>/<stem>.<ext> (stem from picture_stems): keeps the input tree. Masks are always
    PNG (lossless); overlays and heatmaps use `fmt`."""
    return out / kind / f"{stem}.{'png' if kind == 'mask' else fmt}"


def model_identity(sidecar: dict[str, Any] | None, path: Path) -> str:
    """The sha256 the report records for the model (the sidecar's, else measured)."""
    entry = ((sidecar or {}).get("files") or {}).get(path.name) or {}
    return str(entry.get("sha256") or sha256(path))


def resume_conflicts(old: dict[str, Any], header: dict[str, Any]) -> list[str]:
    """The settings of this run that differ from those of the report being resumed (its
    summary.json): mixing them would give a report whose rows answer different questions."""
    old_th, th = old.get("thresholds") or {}, header["thresholds"]
    checks = {
        "report version": old.get("report_version") == REPORT_VERSION,
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

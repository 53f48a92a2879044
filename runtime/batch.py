"""The threads of a folder inspection: a pool decodes and prepares ahead of the model, the calling
thread runs batches through runtime.pipeline, a second pool judges each image and writes its
pictures, and rows are handed to runtime.reports in input order as soon as the row at the head is
done. One image's failure (unreadable, not registered, non-finite output, pictures that cannot be
written) is that image's row; a full output disk or a fatal backend error stops the run with the
rows already finished written."""
from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from core.images import ImageError
from core.prepare import Prepared
from runtime.discover import Entry, reason_of, report_safe
from runtime.pipeline import Pipeline, Result, registration_error
from runtime.postprocess import OutputError
from runtime.reports import OUTPUT_STOPS, Reports, _num, picture_path, save_image, unwritable


# ----------------------------------------------------------------------------- one image

@dataclass
class Job:
    entry: Entry
    prepared: Prepared | None = None
    error: str | None = None
    decode_ms: float = 0.0
    future: Future | None = None
    row: dict[str, Any] | None = None


@dataclass
class Settings:
    out: Path
    save: tuple[str, ...]
    max_pixels: int
    explain: str = "anomaly_map"
    picture_format: str = "jpg"
    stems: dict[str, str] | None = None  # input -> picture name (runtime.reports.picture_stems)


def prepare_job(entry: Entry, pipe: Pipeline, s: Settings) -> Job:
    """Decode, colour, register and resize one input (a decode thread); its failure is its row."""
    job = Job(entry)
    if entry.error is not None:
        job.error = entry.error
        return job
    t0 = time.perf_counter()
    try:
        # only the overlay needs the decoded pixels: the others free them at once
        job.prepared = pipe.load(entry.path, s.max_pixels, keep_image="overlay" in s.save)
        if not job.prepared.ok:
            job.error = f"{entry.rel}: {registration_error(job.prepared)}"
    except ImageError as e:
        job.error = report_safe(str(e).replace(str(entry.path), entry.rel, 1))  # rel is escaped already
    except (OSError, cv2.error, MemoryError) as e:
        job.error = f"{entry.rel}: cannot decode ({report_safe(str(e).splitlines()[0][:200])})"
    job.decode_ms = (time.perf_counter() - t0) * 1e3
    return job


def error_row(job: Job) -> dict[str, Any]:
    row = {"file": job.entry.rel, "processing": "failed", "verdict": None, "reason": job.error,
           "decode_ms": _num(job.decode_ms, 3)}
    if job.prepared is not None and job.prepared.registration.status != "off":
        row["registration"] = registration_row(job.prepared)
    return row


def registration_row(p: Prepared) -> dict[str, Any]:
    """What registration did, for the row (angle, centre, flip, gain, status); nothing when off.
    The centre in the file's pixels, as the boxes are (registration ran on the reduced decode of
    a huge file)."""
    r = p.registration.as_row()
    r.pop("matrix", None)
    if p.scale != 1.0:
        r["centre"] = [None if c is None else round(c * p.scale, 4) for c in r["centre"]]
    return r


def finish_job(job: Job, outputs: dict[str, np.ndarray], infer_ms: float, batch: int, s: Settings,
               pipe: Pipeline) -> dict[str, Any]:
    """Judge one image and write its pictures (a post-processing thread); returns its report row.

    Failures of this one image become its failed row, so the run goes on: an unusable model output
    (OutputError), or pictures that cannot be written (e.g. a name too long once the picture
    extension is added); the latter keeps the score and verdict, which were computed."""
    t0 = time.perf_counter()
    p = job.prepared
    assert p is not None
    want_maps = bool(set(s.save) & {"mask", "heatmap", "overlay"})
    try:
        result = Result(p, outputs, pipe.judge(p, outputs, keep_maps=want_maps))
    except OutputError as e:
        job.error = f"{job.entry.rel}: {e}"
        return error_row(job)
    except MemoryError:  # full-size maps of a huge image: that image fails, as in decoding
        job.error = f"{job.entry.rel}: out of memory in post-processing"
        return error_row(job)
    res = result.inspection
    assert res is not None
    saved = {}
    unsaved = []
    stem = (s.stems or {}).get(job.entry.rel, job.entry.rel)
    for kind in s.save:
        path = picture_path(s.out, kind, stem, s.picture_format)
        try:
            if kind == "mask":
                if res.mask is None:
                    continue
                save_image(path, res.mask)
            elif kind == "heatmap":
                save_image(path, pipe.heatmap(result))
            else:
                save_image(path, pipe.render(result, s.explain))
        except (OSError, cv2.error, MemoryError) as e:
            if isinstance(e, OSError) and e.errno in OUTPUT_STOPS:  # every later picture would fail too
                raise unwritable(path, e) from e
            unsaved.append(f"cannot write {kind} picture ({reason_of(e)})")
            continue
        saved[kind] = str(path.relative_to(s.out).as_posix())
    post_ms = (time.perf_counter() - t0) * 1e3
    reason = f"{job.entry.rel}: {'; '.join(unsaved)}" if unsaved else None
    row = {"file": job.entry.rel, "processing": "failed" if reason else "done", **res.as_row(),
           "score": _num(res.score, 8), "width": p.original[1], "height": p.original[0],
           "decode_scale": _num(p.scale, 4), "latency_ms": _num(job.decode_ms + infer_ms + post_ms, 3),
           "decode_ms": _num(job.decode_ms, 3), "infer_ms": _num(infer_ms, 3), "post_ms": _num(post_ms, 3),
           "batch": batch, "pictures": saved or None, "reason": reason}
    if p.registration.status != "off":
        row["registration"] = registration_row(p)
    return row


# ----------------------------------------------------------------------------- the run

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


def inspect_folder(pipe: Pipeline, entries: list[Entry], s: Settings, reports: Reports, batch: int = 8,
                   workers: int = 2, progress: bool = True) -> None:
    """Run every entry through prepare -> infer -> judge + pictures, writing rows in input order."""
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
            t0 = time.perf_counter()
            outs = pipe.infer([j.prepared for j in todo])  # type: ignore[misc]
            infer_ms = (time.perf_counter() - t0) * 1e3
            n = len(todo)
            for j, one in zip(todo, outs):
                j.future = post_pool.submit(finish_job, j, one, infer_ms, n, s, pipe)
            todo.clear()

        try:
            for job in prefetch(dec_pool, lambda e: prepare_job(e, pipe, s), entries, depth=2 * batch + workers):
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

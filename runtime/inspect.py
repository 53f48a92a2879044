"""Batch folder inspection: every image in a folder -> verdict, score, defect area and boxes.

    python -m runtime.inspect --engine screw.onnx --input DIR --output OUT [--recursive]
        [--batch 8] [--save overlay,mask,heatmap] [--explain anomaly_map|attention|both]
        [--threshold-pixel X] [--threshold-image Y] [--resume | --overwrite]
        [--backend onnxruntime|tensorrt|torch] [--providers cpu,cuda] [--device cpu|cuda[:N]]

Writes OUT/report.jsonl and OUT/report.csv (one row per input, unreadable ones with their reason),
OUT/summary.json (counts, NG rate, images/s, latency percentiles) and, with --save, pictures under
OUT/overlay/, OUT/mask/, OUT/heatmap/ mirroring the input tree (`000.png` -> `overlay/000.jpg`,
masks `.png`; --format png for lossless overlays).

Each image goes through runtime.pipeline (the camera and calibration use the same object):
prepare (decode, colour, registration, resize), infer (batched), judge (verdict OK / NG / NO
VERDICT, mask, boxes), render. Around it this module adds the files: a thread pool decodes ahead
of the model (OpenCV releases the GIL), the main thread runs batches, a second pool post-processes
and writes pictures; rows are written in input order (sorted relative paths), so the report is
deterministic (runtime.reports). --resume continues a report (refused when the model, thresholds,
input folder, --recursive, --save or --format differ); its failed rows are tried again.
An image that cannot be read, registered, scored (non-finite output) or drawn is a failed row with
its reason. Inputs are only read. Exit: 0 every input has its row (failed ones with their reason),
1 failure while working (model, backend, inference, a full output disk), 2 usage error (anything
typed wrong, missing paths included).
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2

from core.deployment import is_deployment
from core.device import device_arg
from core.images import DEFAULT_MAX_PIXELS, is_image_name
from runtime.backends import BACKENDS, BackendError
from runtime.batch import Settings, inspect_folder
from core.cli import UsageError, finite_float, int_at_least, quiet_native_stderr, sigterm_interrupts
from runtime.discover import Entry, discover, report_safe
from runtime.model import ModelError
from runtime.pipeline import EXPLAIN, Pipeline
from runtime.reports import (SAVE_KINDS, OutputUnwritable, Reports, clean_temporaries, kept_stems, model_identity,
                             picture_stems, read_report, remove_previous, resume_conflicts)


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", "--model", dest="engine", required=True,
                   help="model file: .onnx, .trt/.engine/.plan, .pt or .npz (template bank), sidecar X.yaml beside it; "
                        "or a deployment folder (its current version)")
    p.add_argument("--input", required=True, help="folder of images (or one image)")
    p.add_argument("--output", required=True, help="report folder (may lie inside --input: it is skipped)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--batch", type=int, default=8, help="images per model call (default 8)")
    p.add_argument("--save", default="", help=f"pictures to write, comma list of {','.join(SAVE_KINDS)}")
    p.add_argument("--explain", choices=EXPLAIN, default="anomaly_map",
                   help="what the overlay colours: the map that decides (default), the paper's latent attention, "
                        "or both side by side")
    p.add_argument("--format", choices=["jpg", "png"], default="jpg",
                   help="overlay/heatmap file format (default jpg: ~20x faster to encode; masks are always png)")
    p.add_argument("--threshold-pixel", type=finite_float, help="pixel threshold on anomaly_map (default: sidecar)")
    p.add_argument("--threshold-image", type=finite_float, help="image-score threshold for NG (default: sidecar)")
    p.add_argument("--resume", action="store_true", help="continue the report in OUT (failed rows are tried again)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous report in OUT, and its pictures (without it, or --resume, a folder "
                        "holding a report is refused)")
    p.add_argument("--backend", choices=BACKENDS, help="override the extension's backend")
    p.add_argument("--providers", help="ONNX Runtime providers in order, e.g. cuda,cpu (default: TensorRT, CUDA, CPU as available)")
    p.add_argument("--device", type=device_arg, help="auto, cpu, cuda or cuda:N (default: cuda when available); for .onnx, "
                                                     "cpu means the CPU provider only and cuda:N the GPU of the CUDA/TensorRT providers")
    p.add_argument("--threads", type=int_at_least(1), help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--workers", type=int_at_least(1), default=2, help="decode / post-process threads each (default 2)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"larger images are decoded reduced by 2/4/8 (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is off anyway when stderr is not a terminal)")
    return p


def check_paths(engine: Path, inp: Path, out: Path) -> None:
    """Usage errors (exit 2) for paths the user typed: missing, or of the wrong kind."""
    if not engine.exists():
        raise UsageError(f"--engine {engine}: not found")
    if engine.is_dir() and not is_deployment(engine):
        raise UsageError(f"--engine {engine}: is a folder but not a deployment folder (no `current`); give the model "
                         f"file (.onnx, .trt, .pt, .npz) or a folder made by python -m training.retrain --deploy")
    if not inp.exists():
        raise UsageError(f"--input {inp}: not found")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out}: exists and is not a folder")
    for kind in SAVE_KINDS:
        if (out / kind).exists() and not (out / kind).is_dir():
            raise UsageError(f"--output {out}: {out / kind} is a file where the {kind} pictures go: move it")
    if inp.resolve() == out.resolve():
        raise UsageError("--output must differ from --input (inputs are never modified; "
                         "a sub-folder of the input is fine, it is skipped)")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Path, Path, tuple[str, ...]]:
    """The command line, checked: UsageError (exit 2) for anything typed wrong."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: 2 on usage errors, 0 on --help
        raise UsageError("") if e.code else e
    save = tuple(k.strip() for k in args.save.split(",") if k.strip())
    bad = [k for k in save if k not in SAVE_KINDS]
    if bad:
        raise UsageError(f"--save: unknown picture kind(s) {bad}; choose from {','.join(SAVE_KINDS)}")
    if args.batch < 1 or args.workers < 1 or args.max_pixels < 1:
        raise UsageError("--batch, --workers and --max-pixels must be positive")
    inp, out = Path(args.input), Path(args.output)
    check_paths(Path(args.engine), inp, out)
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the report in --output, --overwrite replaces it: choose one")
    if args.overwrite and any(inp.resolve().is_relative_to((out / kind).resolve()) for kind in SAVE_KINDS):
        raise UsageError(f"--overwrite would delete the input {inp}: it lies in a picture folder of {out}")
    if not (args.resume or args.overwrite) and (out / "report.jsonl").exists():
        # a new report beside the old run's pictures would contradict them
        raise UsageError(f"--output {out} holds a previous report: --resume continues it, --overwrite "
                         f"replaces it and its pictures, or choose another --output")
    return args, inp, out, save


def main(argv: list[str] | None = None) -> int:
    try:
        args, inp, out, save = parse(argv)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except UsageError as e:
        if str(e):
            print(f"error: {report_safe(str(e))}", file=sys.stderr)
        return 2
    # SIGTERM (systemd, docker stop) takes the Ctrl-C path: an 'interrupted' report, not a torn one
    try:
        with sigterm_interrupts(), quiet_native_stderr():
            return run(args, inp, out, save)
    except UsageError as e:
        print(f"error: {report_safe(str(e))}", file=sys.stderr)
        return 2
    except (ModelError, BackendError, OutputUnwritable) as e:
        print(f"error: {report_safe(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun with --resume to continue", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e.__class__.__name__}: {report_safe(str(e))}", file=sys.stderr)
        return 1


def subfolder_images(root: Path, limit: int = 1000) -> int:
    """Images one level or more below `root` (counted up to `limit`), for the --recursive hint."""
    n = 0
    for _dirpath, _dirs, files in os.walk(root):
        if _dirpath != str(root):
            n += sum(is_image_name(f) for f in files)
            if n >= limit:
                break
    return n


def run(args: argparse.Namespace, inp: Path, out: Path, save: tuple[str, ...]) -> int:
    cv2.setNumThreads(1)  # parallelism is per image (thread pools); OpenCV's own pool would oversubscribe
    # libpng/libjpeg warnings about a broken file would interleave with the progress bar; the
    # report already holds each failure with its reason
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    entries = discover(inp, args.recursive, exclude=out)
    if not entries and inp.is_dir() and not args.recursive:
        below = subfolder_images(inp)
        if below:
            raise UsageError(f"--input {inp}: no images at its top level, {below}{'+' if below >= 1000 else ''} in "
                             f"its sub-folders: add --recursive to inspect them")
    pipe = Pipeline.open(args.engine, backend=args.backend, providers=args.providers, device=args.device,
                         threads=args.threads, pixel=args.threshold_pixel, image=args.threshold_image,
                         explain=args.explain, warmup=min(args.batch, 8))
    try:
        return inspect_run(args, inp, out, save, pipe, entries)
    finally:
        pipe.close()


def inspect_run(args: argparse.Namespace, inp: Path, out: Path, save: tuple[str, ...], pipe: Pipeline,
                entries: list[Entry]) -> int:
    th = pipe.thresholds
    model = pipe.model
    notes = pipe.notes
    header = report_safe({  # paths from the command line may hold bytes that are not UTF-8 too
        "input": str(inp.resolve()), "output": str(out), "recursive": bool(args.recursive), "batch": args.batch,
        "workers": args.workers, "model": {**pipe.describe(), "sha256": model_identity(model.sidecar, model.path)},
        "thresholds": {"pixel": th.pixel, "image": th.image, "source": th.source,
                       **({} if th.any else {"note": "no thresholds: scores only, NO VERDICT"})},
        "save": list(save), "explain": args.explain, "format": args.format, "notes": notes,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    previous: list[dict[str, Any]] = []
    if args.resume:
        previous = read_report(out / "report.jsonl")
        old = {}
        try:
            old = json_load(out / "summary.json")
        except (OSError, ValueError):
            if previous:  # its settings cannot be compared: mixing rows of another model or thresholds
                raise UsageError(f"--resume: {out / 'summary.json'} is missing or unreadable, so the report's model "
                                 f"and thresholds cannot be checked against this run's; use --overwrite or a new --output")
        differ = resume_conflicts(old, header) if previous else []
        if differ:
            raise UsageError(f"--resume: {out} holds a report whose {', '.join(differ)} "
                             f"{'differs' if len(differ) == 1 else 'differ'} from this run's; use a new --output "
                             f"or --overwrite")
        # rows with a score are results and stay; failures are tried again (the file may have been
        # fixed, the picture folder freed), and those of inputs no longer there are dropped
        kept = [r for r in previous if r.get("score") is not None and r.get("processing") == "done"]
        if len(kept) < len(previous):
            print(f"resume: {len(previous) - len(kept)} failed row(s) are tried again", file=sys.stderr)
        previous = kept
    print(th.describe(model.thresholds, model.path.with_suffix(".yaml").name), file=sys.stderr)
    if "mask" in save and th.pixel is None:
        print("note: --save mask needs a pixel threshold; masks are not written", file=sys.stderr)
    done = {r["file"] for r in previous}
    todo = [e for e in entries if e.rel not in done]
    if args.resume and previous:
        print(f"resume: {len(done)} inputs already in the report, {len(todo)} to go", file=sys.stderr)
    if args.overwrite:  # only now that the model opened and the inputs are listed: a failure must not cost the old report
        remove_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)
    # the rows kept from a resumed report keep their pictures' names: no new input may take one
    stems = picture_stems((e.rel for e in entries), reserved=kept_stems(previous))
    s = Settings(out, save, args.max_pixels, args.explain, args.format, stems)
    reports = Reports(out, previous, header)
    status = "failed"
    try:
        inspect_folder(pipe, todo, s, reports, args.batch, args.workers,
                       progress=not args.quiet and sys.stderr.isatty())
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary = reports.finish(status, [e.rel for e in entries])
    c = summary["counts"]
    rate = summary["this_run"]["images_per_s"]
    print(f"{c['inspected']} inspected ({c['ng']} NG, {c['ok']} OK, {c['no_verdict']} NO VERDICT), "
          f"{c['failed']} failed; {f'{rate:.1f} images/s' if rate else 'nothing inspected in this run'}; "
          f"report: {report_safe(str(out / 'report.csv'))}", file=sys.stderr)
    return 0


def json_load(path: Path) -> dict[str, Any]:
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a summary")
    return data


if __name__ == "__main__":
    sys.exit(main())

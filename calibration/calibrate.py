"""Choose a model's pixel and image thresholds on held-out images, estimate how they will behave,
and write them into the model's sidecar.

    python -m calibration.calibrate --engine screw.onnx --data ../shared/data/mvtec/screw
        [--pixel-rule best-iou|fpr=X|f1] [--image-rule fpr=X|youden|f1|recall=X] [--folds 5]
        [--report DIR] [--dry-run | --to-new-version] [--force] [--seed 0] [--bootstrap 1000] [--worst 6]
        [--backend onnxruntime|tensorrt|torch] [--providers cpu,cuda] [--device cpu|cuda[:N]] [--threads N]

The model runs through runtime.pipeline exactly as runtime.inspect and the camera run it (backend
by extension, registration included), so the thresholds are in the units of its anomaly_map and a
calibrated image threshold gives the same verdicts there. --data: an MVTec category root (its
test/ and ground_truth/), its test/ folder, or a folder of good/ and <defect>/ folders; a folder
of good parts only selects the normal-only mode (conformal image threshold, recall unknown).

Writes the sidecar's `thresholds` section (core.sidecar.update_sidecar: atomic, the previous file
kept as X.yaml.bak, refused when the model's sha256 is not the recorded one) unless --dry-run, and
a report folder (default <engine stem>_calibration/ beside the engine): calibration.json and the
plots of calibration.report. Thresholds that would mislead the line are refused (nothing written,
calibration.json's `refused` says why) unless --force: a rule no threshold reaches on the data, or
an image threshold that passes every defective part. A published deployment version is never
modified: its sidecar is refused, and --to-new-version calibrates a copy of it into the
deployment's next version (`current` moves to it when it named the version calibrated).
Exit: 0 done, 1 failure while working (model, sidecar, data, non-finite or constant scores,
refused thresholds), 2 usage error (bad rule, --folds, missing --engine or --data).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any, Callable

import cv2
import yaml

from calibration.analyse import CalibrationError, analyse, sidecar_section
from calibration.collect import collect, shift_warnings
from calibration.data import DataError, find_dataset
from calibration.report import summary_lines, write_plots
from calibration.thresholds import parse_rule
from core.deployment import (REPORT, Deployment, DeploymentError, Version, published_version, read_manifest,
                             report_metrics, resolve_model)
from core.device import device_arg
from core.files import json_text, remove_stale_temporaries, sha256, write_json
from core.sidecar import SidecarError, now, read_sidecar, sidecar_path, update_sidecar
from runtime.backends import BACKENDS, BackendError
from runtime.model import ModelError
from runtime.pipeline import Pipeline, model_scale
from runtime.postprocess import OutputError

SCHEMA = 1  # of calibration.json


class UsageError(ValueError):
    """Something typed wrong on the command line (or passed wrong to calibrate()): exit 2."""


# errors that end a calibration with `error: <file>: <reason>` and exit 1
FAILURES = (ModelError, SidecarError, BackendError, OutputError, DataError, CalibrationError, DeploymentError, OSError)


# the least each count may be, and what it counts (a seed of -1 ended in numpy's traceback after
# the model had run over every image)
COUNTS = {"folds": (2, "k-fold chooses on k - 1 folds, measures on the other"),
          "seed": (0, "numpy seeds are >= 0"), "bootstrap": (1, "resamples"), "worst": (0, "parts drawn"),
          "batch": (1, "images per model call"), "threads": (1, "ONNX Runtime threads")}


def check_counts(**values: int | None) -> None:
    """UsageError naming the first count typed wrong (COUNTS), before anything runs; None: unset."""
    for name, value in values.items():
        low, what = COUNTS[name]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise UsageError(f"--{name} {value}: at least {low} ({what})")


def check_writable(engine: Path) -> Path:
    """The sidecar calibration will replace: it must exist, match the model (sha256), and not be
    read-only (its write bits cleared is a "do not touch", even for root, whom the OS lets
    write anyway). Checked before the model runs, so nothing is computed for nothing."""
    side = sidecar_path(engine)
    version = published_version(engine)
    if version is not None:  # the camera's w key refuses the same: a rollback must restore it byte for byte
        raise SidecarError(f"{side}: part of the published version {version.name} of {version.parent}, which is never "
                           f"modified; calibrate into a new version (--engine {version.parent} --to-new-version) or "
                           f"measure only (--dry-run)")
    if not side.is_file():
        raise SidecarError(f"{side}: sidecar missing for {engine.name}; calibrate an exported model "
                           f"(python -m export.onnx writes it) or use --dry-run")
    read_sidecar(engine, verify=True)
    mode = side.stat().st_mode
    if not os.access(side, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise SidecarError(f"{side}: read-only; make it writable (chmod u+w) to let calibration replace its "
                           f"thresholds, or use --dry-run")
    folder = side.resolve().parent  # a linked sidecar: the file it names is replaced, in its own folder
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SidecarError(f"{folder}: folder not writable (the sidecar is replaced atomically through a "
                           f"temporary file beside it)")
    return side


def engine_notes(engine: Path, sidecar: dict[str, Any] | None) -> list[str]:
    """Who else the new thresholds reach or not: files sharing the sidecar get them; engines of
    another stem built from this model keep a frozen copy (export.tensorrt) and do not."""
    notes = []
    shared = [f for f in ((sidecar or {}).get("files") or {}) if f != engine.name]
    if shared:
        notes.append(f"the thresholds also apply to {', '.join(shared)} (same sidecar {sidecar_path(engine).name})")
    for other in sorted(engine.parent.glob("*.yaml")):
        if other == sidecar_path(engine):
            continue
        try:
            data = yaml.safe_load(other.read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        files = data.get("files") if isinstance(data, dict) else None
        for name, entry in (files or {}).items() if isinstance(files, dict) else ():
            src = entry.get("source") if isinstance(entry, dict) else None
            if isinstance(src, dict) and src.get("file") == engine.name:
                notes.append(f"{name} was built from {engine.name} with a sidecar of its own ({other.name}) and keeps "
                             f"its old thresholds: calibrate it (--engine {name}) or rebuild it")
    return notes


def calibrate(engine: str | Path, data: str | Path, pixel_rule: str = "best-iou", image_rule: str = "fpr=0.05",
              folds: int = 5, report: str | Path | None = None, dry_run: bool = False, seed: int = 0,
              resamples: int = 1000, worst: int = 6, batch: int = 8, backend: str | None = None,
              providers: str | None = None, device: str | None = None, threads: int | None = None,
              progress: bool = False, log: Callable[[str], None] | None = None, force: bool = False,
              new_version: bool = False) -> dict[str, Any]:
    """Calibrate `engine` on the held-out images under `data`; see the module docstring.

    Args:
        engine: the model file (.onnx, .trt/.engine/.plan, .pt), its sidecar beside it, or a
            deployment folder (its current version's model).
        data: the held-out images (calibration.data layouts).
        pixel_rule, image_rule: calibration.thresholds rules ('best-iou', 'fpr=0.05', ...).
        folds: k of the stratified k-fold estimate (>= 2; reduced when a class has fewer images).
        report: the report folder (default <engine stem>_calibration/ beside the engine).
        dry_run: compute and report, leave the sidecar alone.
        seed, resamples: of the folds and the bootstrap.
        worst: good and defective parts drawn in worst.png (0: none).
        batch, backend, providers, device, threads: how the model runs (runtime.pipeline).
        progress: a progress bar on stderr; log: where the summary lines go (default stderr).
        force: write thresholds that calibration refuses (a rule no threshold reaches, an image
            threshold that passes every defective part); the sidecar records them as `forced`.
        new_version: `engine` is part of a published deployment version, which is never modified:
            calibrate a copy of it and publish that as the deployment's next version (`current`
            moves to it when it named the version calibrated); the report is its calibration/.
    Returns calibration.json's content (also written to the report folder).
    Raises UsageError (bad rule or folds, missing paths); ModelError, SidecarError (missing,
    stale, read-only, part of a published version), DeploymentError, DataError (missing masks, masks of another size, unreadable images),
    OutputError (non-finite maps), CalibrationError (no good images, constant scores, refused
    thresholds: calibration.json's `refused` says why), OSError.

        body = calibrate("screw.onnx", "../shared/data/mvtec/screw", image_rule="fpr=0.05")
        body["thresholds"], body["folds"]["image_fpr"]["mean"], body["in_sample"]["confusion"]
    """
    say = log or (lambda line: print(line, file=sys.stderr))
    engine, data = Path(engine), Path(data)
    try:
        rules = parse_rule(pixel_rule, "pixel"), parse_rule(image_rule, "image")
    except ValueError as e:
        raise UsageError(str(e)) from e
    check_counts(folds=folds, seed=seed, bootstrap=resamples, worst=worst, batch=batch, threads=threads)
    if new_version and (dry_run or report is not None):
        raise UsageError("--to-new-version writes a new version with its report in its calibration/ folder: "
                         "without --dry-run or --report")
    engine = resolve_model(engine) if engine.is_dir() else engine
    if not engine.is_file():
        raise UsageError(f"--engine {engine}: not found" + (" (a folder)" if engine.is_dir() else ""))
    if not data.is_dir():
        raise UsageError(f"--data {data}: not a folder")
    if new_version:
        def run(model: Path, folder: Path) -> dict[str, Any]:
            return calibrate(model, data, pixel_rule, image_rule, folds, folder, False, seed, resamples, worst, batch,
                             backend, providers, device, threads, progress, say, force)
        return into_new_version(engine, run, say)
    ds = find_dataset(data)
    if not ds.good:  # known before the model runs: say it now
        raise CalibrationError(f"{data}: no good images: the image threshold is chosen on good parts (add good/)")
    if "train" in data.resolve().parts:
        say(f"warning: {data} looks like training data: thresholds must be chosen on held-out images")
    if not dry_run:
        check_writable(engine)
    folder = Path(report) if report is not None else engine.parent / f"{engine.stem}_calibration"
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--report {folder}: exists and is not a folder")
    if folder.resolve().is_relative_to(ds.root.resolve()):  # its plots would be calibration images next time
        raise UsageError(f"--report {folder}: inside the calibration data {ds.root}; choose a folder outside it")
    with Pipeline.open(engine, backend=backend, providers=providers, device=device, threads=threads,
                       warmup=1) as pipe:
        collected = collect(pipe, ds, batch, progress)
        try:
            _, body = analyse(collected, *rules, folds=folds, seed=seed, resamples=resamples)
        except CalibrationError as e:
            raise CalibrationError(f"{data}: {e}") from e
        warnings, stats = shift_warnings(collected, model_scale(pipe.model, "anomaly_scale"))
        model = pipe.model
        described = pipe.describe()
        folder.mkdir(parents=True, exist_ok=True)
        plots = write_plots(pipe, collected, body, folder, worst)
    created = now()
    # the sha256 of the files as opened (the sidecar read and verified then), not as they are now:
    # a model re-exported during the run must not get these thresholds, nor its hash in the report
    opened = ((model.sidecar or {}).get("files") or {})
    engine_sha = (opened.get(engine.name) or {}).get("sha256")
    used = {"backend": described.get("backend"), "file": model.path.name,
            "sha256": (opened.get(model.path.name) or {}).get("sha256") or sha256(model.path)}
    data_info = ds.fingerprint()
    body = {"schema": SCHEMA, "created": created, "engine": {"path": str(engine.resolve()), **used},
            "data": data_info, **body, "shift": {"warning": _shift_line(warnings), **stats}, "plots": plots}
    body["notes"] = body["notes"] + engine_notes(engine, model.sidecar)
    extra = {"data": {k: data_info[k] for k in ("path", "images", "sha256")}, "created": created,
             "calibrated_with": {**{k: used[k] for k in ("backend", "file")}, "opencv": str(cv2.__version__)},
             "report": _report_path(folder / "calibration.json", engine)}
    refused = body["refused"] if not force else []
    if force and body["refused"]:
        extra["forced"] = body["refused"]
    section = json.loads(json_text(sidecar_section(body, extra)))  # NaN -> null, plain types for YAML
    body["sidecar"] = {"path": str(sidecar_path(engine)), "written": False, "section": section}
    try:
        if not dry_run and not refused:
            update_sidecar(engine, thresholds=section, verify=True, backup=True, expect_sha256=engine_sha)
            body["sidecar"].update(written=True, backup=str(sidecar_path(engine)) + ".bak")
            side = sidecar_path(engine).resolve()  # what a kill between a temporary and its rename left
            for written in (side, side.with_name(side.name + ".bak")):
                remove_stale_temporaries(written)
    finally:
        write_json(folder / "calibration.json", body)
    for line in summary_lines(body):
        say(line)
    if body["shift"]["warning"]:
        say(f"warning: {body['shift']['warning']}")
    if force and body["refused"]:
        say(f"warning: written although refused (--force): {'; '.join(body['refused'])}")
    if refused:
        raise CalibrationError(f"{data}: {'; '.join(refused)}; the thresholds are not written (report: "
                               f"{folder / 'calibration.json'}); fix the data or choose another rule, or --force "
                               "writes them anyway")
    say(f"thresholds written to {sidecar_path(engine)} (previous kept as {sidecar_path(engine).name}.bak)"
        if not dry_run else "dry run: the sidecar is unchanged")
    say(f"report: {folder / 'calibration.json'}")
    return body


def into_new_version(engine: Path, run: Callable[[Path, Path], dict[str, Any]],
                     say: Callable[[str], None]) -> dict[str, Any]:
    """Calibrate the published version holding `engine` into the deployment's next version: a
    copy of the version staged (core.deployment), run(staged model, staged report folder), then
    published with a manifest saying where it came from, and `current` switched to it when it
    named the version calibrated. A failure leaves the deployment as it was."""
    where = published_version(engine)
    if where is None:
        raise UsageError(f"--to-new-version: {engine} is not the model of a published deployment version "
                         f"(DEPLOY, DEPLOY/current/X.onnx or DEPLOY/vNNNN/X.onnx)")
    dep = Deployment(where.parent)
    source = Version(where.name, where, read_manifest(where))
    current = dep.current()
    staged = dep.stage(copy_of=source)
    try:
        body = run(staged / engine.name, staged / REPORT)
        manifest = {**source.manifest, "parent": source.name, "created": now(), "calibrated_from": source.name,
                    "heldout": {k: body["data"][k] for k in ("path", "images", "sha256")},
                    "metrics": {"candidate": report_metrics(body), "deployed": None},
                    "gate": {"passed": None, "forced": False, "tolerance": None,
                             "reasons": [f"thresholds calibrated again; the model is {source.name}'s: nothing to gate"]},
                    "steps_s": {}}
        version = dep.publish(staged, manifest)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # the deployment stays exactly as it was
        raise
    finally:
        dep.release()
    if current is not None and current.name == source.name:
        dep.switch(version)
        say(f"published {version.name} (the model of {source.name}, calibrated again); current -> {version.name}, was "
            f"{source.name} (python -m training.retrain --rollback {dep.root} switches back)")
    else:
        say(f"published {version.name} (the model of {source.name}, calibrated again); current stays "
            f"{current.name if current else 'unset'}")
    return body


def _report_path(report: Path, engine: Path) -> str:
    """Where the sidecar says its calibration report is: relative to the sidecar when beside it, so
    that it still holds after a staged version is renamed into place."""
    report, home = report.resolve(), engine.resolve().parent
    return report.relative_to(home).as_posix() if report.is_relative_to(home) else str(report)


def _shift_line(reasons: list[str]) -> str | None:
    if not reasons:
        return None
    return ("the held-out normals look shifted from the training images: " + "; ".join(reasons)
            + "; thresholds chosen on them may not hold on the line")


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m calibration.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", "--model", dest="engine", required=True,
                   help="model file: .onnx, .trt/.engine/.plan or .pt (sidecar X.yaml beside it), or a deployment "
                        "folder (its current model)")
    p.add_argument("--data", required=True, help="held-out images: MVTec category root, its test/ folder, or "
                                                 "good/ + <defect>/ folders (masks in ground_truth/)")
    p.add_argument("--pixel-rule", default="best-iou", help="best-iou (default) | fpr=X | f1")
    p.add_argument("--image-rule", default="fpr=0.05", help="fpr=X (default fpr=0.05) | youden | f1 | recall=X")
    p.add_argument("--folds", type=int, default=5, help="k of the stratified k-fold estimate (default 5)")
    p.add_argument("--report", help="report folder (default <engine stem>_calibration/ beside the engine)")
    p.add_argument("--dry-run", action="store_true", help="compute and report, do not write the sidecar")
    p.add_argument("--to-new-version", action="store_true",
                   help="--engine is a deployment (or a model of one of its versions), whose published versions are "
                        "never modified: calibrate a copy and publish it as the next version (current moves to it)")
    p.add_argument("--force", action="store_true",
                   help="write thresholds calibration refuses (a rule no threshold reaches, or an image threshold "
                        "that passes every defective part); the sidecar records them as forced")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the bootstrap (default 0)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the images (default 1000)")
    p.add_argument("--worst", type=int, default=6, help="good and defective parts drawn in worst.png (default 6)")
    p.add_argument("--batch", type=int, default=8, help="images per model call (default 8)")
    p.add_argument("--backend", choices=BACKENDS, help="override the extension's backend")
    p.add_argument("--providers", help="ONNX Runtime providers in order, e.g. cuda,cpu")
    p.add_argument("--device", type=device_arg, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (off anyway when stderr is not a terminal)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: 2 on usage errors (its message printed), 0 on --help
        return int(e.code or 0)
    try:
        calibrate(args.engine, args.data, args.pixel_rule, args.image_rule, args.folds, args.report, args.dry_run,
                  args.seed, args.bootstrap, args.worst, args.batch, args.backend, args.providers, args.device,
                  args.threads, progress=not args.quiet and sys.stderr.isatty(), force=args.force,
                  new_version=args.to_new_version)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FAILURES as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

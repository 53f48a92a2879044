"""Offline retraining with a quality gate, versioned deployment and rollback, in one command.

    python -m training.retrain --config configs/screw_template.yaml --data NEW_DIR --deploy models/screw
        [--heldout DIR] [--init current|scratch|CHECKPOINT] [--force] [--tolerance 0.02] [--epochs N] [--int8]
    python -m training.retrain --config auto --data GOOD_DIR --deploy models/part [--heldout DIR] [--budget MIN]
    python -m training.retrain --list models/screw
    python -m training.retrain --rollback models/screw

The candidate is built in a staging folder inside the deployment (core.deployment), step by step,
each step being the project's own command run as a child process (what a user would type, and a
crash in one step cannot leave another's state half-changed):
  build      as the config's model family says (families/: model.family, or model.arch for older
             configs): the VAE trains (training.train, warm-started from the deployed checkpoint by
             default: --init; its epochs shown as one bar with the time left on a terminal, as a line
             every few minutes in a log), exports (export.onnx) and checks the graph against PyTorch
             autograd (export.check); the template builds its reference bank as an ONNX graph
             checked against the numpy bank; the discriminative family trains its net and exports
             it checked against PyTorch; then export.tensorrt where TensorRT and a GPU exist (else
             said: ONNX only). --int8: export.quantize cuts the line graph (anomaly_map only) out of
             the checked fp32 graph and quantizes it, calibrated on the training images; that INT8
             graph is the candidate (calibrated and gated itself; the fp32 graph stays beside it).
             --config auto: the automatic set-up (training.auto) surveys the good images, builds and
             scores the registrations and families that fit --budget, and the best by its written
             rule is the candidate (its config in train.yaml, the table in setup.json)
  calibrate  calibration.calibrate on the held-out set: thresholds into the candidate's sidecar (a
             rule no threshold reaches, or a threshold that passes every defect, fails the step)
  baseline   the deployed model calibrated on the same held-out set, without touching it (--dry-run)
  gate       the candidate deploys only if, on that same data, its image recall at the calibrated
             FPR and its AUPRO are not worse than the deployed model's by more than --tolerance
             (--force deploys anyway and records it); a held-out set of good parts only measures
             neither, so the gate rejects: it compared nothing
Then the staging folder is published as the next version vNNNN and `current` is switched to it
atomically. A crash or kill at any step leaves the previous deployment untouched and serving: the
stage is only a hidden folder, removed by the next run. A rejected candidate is kept under
DEPLOY/rejected/ with its reports. Exit: 0 deployed (or listed / rolled back), 1 a step failed or the
gate rejected the candidate, 2 usage errors.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from core.cli import sigterm_interrupts
from core.deployment import Deployment, DeploymentError, report_metrics
from core.files import write_json
from core.steps import StepFailed, run_step
from core.images import is_image_name
from families import BuildRequest, family_of
from training import auto
from training.config import load_config, merge

DEFAULT_TOLERANCE = 0.02
AUTO = "auto"   # --config auto: the automatic set-up (training.auto) chooses what to build
GATE_METRICS = ("recall", "aupro")  # higher is better; compared candidate vs deployed on the same data


def data_section(data: Path) -> dict[str, Any]:
    """How training reads NEW_DIR: an MVTec category (train/good) or a plain folder of good images."""
    if not data.is_dir():  # iterdir() of a file would end in a traceback
        raise ValueError(f"--data {data}: not a folder (an MVTec category or a folder of good images)")
    if (data / "train" / "good").is_dir():
        return {"format": "mvtec", "root": str(data)}
    if any(is_image_name(p) for p in data.iterdir()):
        return {"format": "folder", "root": str(data)}
    raise ValueError(f"--data {data}: neither an MVTec category (train/good) nor a folder of images")


def heldout_folder(data: Path, heldout: Path | None) -> Path:
    """The held-out images: --heldout, else NEW_DIR's own test/ (an MVTec category)."""
    folder = heldout or (data / "test" if (data / "test").is_dir() else None)
    if folder is None or not folder.is_dir():
        raise ValueError("--heldout DIR is needed (good and defective parts, with masks or without, or good parts "
                         f"only): {data} has no test/ folder to take them from")
    return folder


def file_list_digest(folder: Path) -> dict[str, Any]:
    """What data a version was built from: its path, the number of images and a digest of their
    names and sizes (cheap, and enough to tell two data sets apart)."""
    files = sorted(p for p in folder.rglob("*") if is_image_name(p) and p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(folder)}\0{p.stat().st_size}\n".encode())
    return {"path": str(folder.resolve()), "images": len(files), "sha256": h.hexdigest()}


def gate_metrics(calibration_json: Path) -> dict[str, float | None]:
    """The gate's numbers from a calibration report (core.deployment.report_metrics)."""
    return report_metrics(json.loads(calibration_json.read_text(encoding="utf-8")))


def gate(candidate: dict[str, float | None], deployed: dict[str, float | None] | None,
         tolerance: float) -> tuple[bool, list[str]]:
    """(passes, reasons): every gate metric of the candidate >= the deployed one - tolerance. A
    metric the deployed model lacks does not block (nothing to compare); one the candidate lacks
    while the deployed has it does."""
    if deployed is None:
        return True, ["first deployment: nothing to compare with"]
    ok, reasons, compared = True, [], 0
    for k in GATE_METRICS:
        new, old = candidate.get(k), deployed.get(k)
        compared += old is not None
        if old is None:
            reasons.append(f"{k}: the deployed model has none; not compared")
        elif new is None:
            ok = False
            reasons.append(f"{k}: the candidate has none, the deployed model {old:.4f}")
        elif new < old - tolerance:
            ok = False
            reasons.append(f"{k}: {new:.4f} < deployed {old:.4f} - {tolerance:g}")
        else:
            reasons.append(f"{k}: {new:.4f} vs deployed {old:.4f} (tolerance {tolerance:g})")
    if not compared:  # a gate that measured nothing must not wave every candidate through
        ok = False
        reasons.append("nothing compared: the held-out set has no defective parts (normal-only calibration: recall "
                       "and AUPRO are unknown for both models); add defective parts with masks to --heldout, or "
                       "--force to deploy without the gate")
    return ok, reasons


def tensorrt_available() -> str | None:
    """None when an engine can be built here, else why not (one line)."""
    probe = "import tensorrt, sys; from core.tensorrt import cuda_memory; cuda_memory().close()"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["TensorRT unavailable"])[-1][:200]


def build_candidate(args: argparse.Namespace, config: dict[str, Any] | None, data: Path, heldout: Path, stage: Path,
                    dep: Deployment, timings: dict[str, float], notes: list[str]) -> tuple[dict[str, Any], Path]:
    """Build the candidate inside `stage` as its family says (train or bank, export, parity check),
    or, with --config auto (config None), as the automatic set-up chooses (training.auto); then
    its INT8 line graph (--int8) or its TensorRT engine where one can be built. Returns the
    config it was built from and its model file."""
    logs = stage / "logs"

    def run(name: str, module: str, step_args: list[str], **kw: Any) -> None:
        run_step(name, module, step_args, logs, timings, **kw)

    overrides = [a for flag, value in (("--epochs", args.epochs), ("--max-steps", args.max_steps),
                                       ("--device", args.device)) if value is not None for a in (flag, str(value))]
    stem = Path(args.deploy).name or "model"
    if config is None:
        config, model = auto.setup(data, heldout, stage, stem, args.budget, data_section(data), overrides, run)
        notes.append(f"--config auto: {json.loads((stage / 'setup.json').read_text())['winner']} chosen "
                     "(setup.json: what was tried and the rule)")
    else:
        train_cfg = stage / "train.yaml"
        train_cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        family = family_of(config)
        init = None
        if family.warm_start and args.init != "scratch":
            init = current_checkpoint(dep) if args.init == "current" else Path(args.init)
            if args.init == "current" and init is None:
                notes.append("--init current: nothing deployed yet (or no checkpoint in it): trained from scratch")
        model = family.builder()(BuildRequest(train_cfg, stage / f"{stem}.onnx", init, overrides, run, notes))
    if args.int8 and not family_of(config).trains:
        notes.append(f"--int8: the chosen {family_of(config).name} model is a reference bank; nothing to quantize")
    elif args.int8:
        int8 = model.with_name(f"{model.stem}.int8.onnx")
        section = config["data"]
        good = Path(section["root"]) / ("train/good" if section["format"] == "mvtec" else "")
        run_step("quantize", "export.quantize", ["--onnx", str(model), "--calib-data", str(good), "--out", str(int8),
                                                 "--outputs", "anomaly_map", "--quiet"], logs, timings)
        notes.append(f"--int8: the INT8 line graph {int8.name} is deployed ({model.name}, fp32, beside it for --explain)")
        model = int8
    why = "--int8: the INT8 graph is for CPUs (ONNX Runtime)" if args.int8 else tensorrt_available()
    if why is None:
        run_step("tensorrt", "export.tensorrt", ["--onnx", str(model), "--out", str(model.with_suffix(".trt")),
                                                 "--fp16", "--verify", "4"], logs, timings)
    else:
        notes.append(f"ONNX only: no TensorRT engine built here ({why})")
    return config, model


def set_aside(dep: Deployment, stage: Path, why: str) -> Path:
    """Move a staged candidate that is not deployed to DEPLOY/<why>/<UTC time>/ (never a version)."""
    target = dep.root / why / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage.rename(target)
    return target


def current_checkpoint(dep: Deployment) -> Path | None:
    cur = dep.current()
    ckpt = cur.path / "model.pt" if cur is not None else None
    return ckpt if ckpt is not None and ckpt.is_file() else None


def plan(args: argparse.Namespace) -> tuple[dict[str, Any] | None, Path, Path]:
    """(config, data, held-out folder), checked before anything runs: ValueError / FileNotFoundError
    are the user's to fix (exit 2). The config is None for --config auto (the set-up chooses it);
    given good images alone, it holds out a fifth of them first (auto.hold_out: DEPLOY/split)."""
    for flag in ("config", "data"):
        if not (flag == "config" and args.config == AUTO) and not Path(getattr(args, flag)).exists():
            raise FileNotFoundError(f"--{flag} {getattr(args, flag)}: not found")
    data = Path(args.data)
    if Path(args.deploy).exists() and not Path(args.deploy).is_dir():
        raise ValueError(f"--deploy {args.deploy}: exists and is not a folder")
    if args.budget is not None and args.config != AUTO:
        raise ValueError("--budget is the automatic set-up's (--config auto); a config says what to build")
    config = None
    if args.config != AUTO:
        config = merge(load_config(args.config), {"data": data_section(data)})
        family = family_of(config)  # a family no folder declares is the config's mistake: before any work
        if args.int8 and not family.trains:
            raise ValueError(f"--int8: a {family.name} model is a reference bank, not a network to quantize")
    else:
        data_section(data)
        args.budget = auto.DEFAULT_BUDGET if args.budget is None else args.budget
    if args.init not in ("current", "scratch") and not Path(args.init).is_file():
        raise FileNotFoundError(f"--init {args.init}: not a checkpoint file (or use current / scratch)")
    if config is None and not args.heldout and not (data / "test").is_dir():
        given = data
        data, held = auto.hold_out(given, Path(args.deploy) / "split")
        print(f"note: no --heldout and no {given}/test: {sum(1 for _ in (held / 'good').iterdir())} of the good images "
              f"are held out to score the settings and calibrate on ({held}); the thresholds rest on good parts "
              "alone: give --heldout DIR with defective parts for thresholds that rest on labels", flush=True)
        return config, data, held
    return config, data, heldout_folder(data, Path(args.heldout) if args.heldout else None)


def retrain(args: argparse.Namespace, config: dict[str, Any], data: Path, heldout: Path) -> int:
    dep = Deployment(args.deploy)
    deployed = dep.current()  # read first: a broken pointer must fail before hours of training
    stage = dep.stage()
    logs = stage / "logs"
    timings: dict[str, float] = {}
    notes: list[str] = []
    started = time.perf_counter()
    try:
        config, model = build_candidate(args, config, data, heldout, stage, dep, timings, notes)
        # calibration refuses thresholds that pass every defect (or miss their rule): the candidate
        # then fails here, unless --force, which deploys anyway
        run_step("calibrate", "calibration.calibrate", ["--engine", str(model), "--data", str(heldout),
                                                        "--report", str(stage / "calibration"), "--quiet"]
                 + (["--force"] if args.force else []), logs, timings)
        candidate = gate_metrics(stage / "calibration" / "calibration.json")
        baseline = None
        if deployed is not None:
            run_step("baseline", "calibration.calibrate", ["--engine", str(deployed.model), "--data", str(heldout),
                                                           "--report", str(stage / "baseline"), "--dry-run", "--quiet",
                                                           "--force"],  # measured only: its thresholds are not the point
                     logs, timings)
            baseline = gate_metrics(stage / "baseline" / "calibration.json")
        passed, reasons = gate(candidate, baseline, args.tolerance)
        manifest = {"model": model.name, "parent": deployed.name if deployed else None,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "config": str(args.config), "data": file_list_digest(data), "heldout": file_list_digest(heldout),
                    "metrics": {"candidate": candidate, "deployed": baseline},
                    "gate": {"passed": passed, "forced": bool(args.force and not passed), "tolerance": args.tolerance,
                             "reasons": reasons},
                    "steps_s": timings, "notes": notes}
        for reason in reasons:
            print(f"gate: {reason}")
        if not passed and not args.force:
            write_json(stage / "deployment.json", manifest)
            rejected = set_aside(dep, stage, "rejected")
            print(f"error: the candidate is worse than {deployed.name if deployed else 'the deployed model'} "
                  f"beyond --tolerance {args.tolerance:g}; not deployed (kept in {rejected}; --force deploys it)",
                  file=sys.stderr)
            return 1
        manifest["steps_s"]["total"] = round(time.perf_counter() - started, 1)
        version = dep.publish(stage, manifest)
        dep.switch(version)
    except StepFailed as e:
        # the deployment stays exactly as it was; the candidate's logs and reports are kept to read
        kept = set_aside(dep, stage, "failed")
        raise StepFailed(f"{e} (the candidate's files are in {kept}); nothing was deployed") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # the deployment stays exactly as it was
        raise
    finally:
        dep.release()  # the staging lock: another run may stage now
    for note in notes:
        print(f"note: {note}")
    print(f"deployed {version.name}: {version.model} (current -> {version.name}"
          f"{'' if deployed is None else f', was {deployed.name}'}; python -m training.retrain --rollback "
          f"{dep.root} switches back)")
    return 0


def list_versions(root: str) -> int:
    """Print the versions; 1 when `current` is broken (said, with the repair), so a check can alert."""
    dep = Deployment(root)
    if not dep.root.is_dir():
        raise ValueError(f"--list {root}: not a deployment folder")
    why = dep.broken()
    try:
        cur = dep.current()
    except DeploymentError:  # a pointer to no version: every row is listed, none starred
        cur = None
    print(f"{'':2}{'version':<8} {'created':<26} {'model':<18} {'recall':>7} {'aupro':>7}  gate")
    for v in dep.versions():
        m = (v.manifest.get("metrics") or {}).get("candidate") or {}
        g = v.manifest.get("gate") or {}
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"{'*' if cur and cur.name == v.name else ' ':2}{v.name:<8} {str(v.manifest.get('created')):<26} "
              f"{v.manifest['model']:<18} {fmt(m.get('recall')):>7} {fmt(m.get('aupro')):>7}  "
              f"{'forced' if g.get('forced') else 'passed' if g.get('passed') else '-'}"
              f"{'' if v.model.is_file() else '  MODEL MISSING'}")
    if why is not None:
        print(f"error: current is broken: {why}; python -m training.retrain --rollback {dep.root} points it at the "
              "newest complete version", file=sys.stderr)
        return 1
    return 0


def positive_minutes(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of minutes > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.retrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="what to build: a config (configs/*.yaml; its model family: families/), or "
                                    "'auto': the automatic set-up tries the registrations and families that fit "
                                    "--budget and builds the best (training.auto)")
    p.add_argument("--budget", type=positive_minutes, metavar="MIN",
                   help=f"--config auto: minutes for the whole run, folder to deployed version (default "
                        f"{auto.DEFAULT_BUDGET:g}); a candidate that cannot end in it is stopped")
    p.add_argument("--data", help="the new good images: an MVTec category (train/good) or a folder of images")
    p.add_argument("--heldout", help="held-out parts for calibration and the gate (default: DATA/test)")
    p.add_argument("--deploy", help="deployment folder (versions vNNNN and the `current` pointer)")
    p.add_argument("--init", default="current", help="current (the deployed checkpoint), scratch, or a checkpoint path")
    p.add_argument("--force", action="store_true", help="deploy even when the gate rejects the candidate or "
                                                        "calibration refuses its thresholds")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"how much worse (absolute) recall and AUPRO may be (default {DEFAULT_TOLERANCE})")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--max-steps", type=int, help="stop training after this many steps (tests, quick runs)")
    p.add_argument("--device", help="training device: auto, cpu, cuda or cuda:N")
    p.add_argument("--int8", action="store_true",
                   help="deploy the INT8 line graph (anomaly_map only; export.quantize, calibrated on the training "
                        "images), gated on its own calibration")
    p.add_argument("--list", metavar="DEPLOY", help="list the versions of a deployment folder")
    p.add_argument("--rollback", metavar="DEPLOY", help="switch `current` back to the version it replaced")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        if args.list:
            return list_versions(args.list)
        if args.rollback:
            if not Path(args.rollback).is_dir():  # typed wrong: not 'nothing deployed' (exit 1)
                raise ValueError(f"--rollback {args.rollback}: not a deployment folder")
            dep = Deployment(args.rollback)
            if dep.broken() is not None:  # the pointer itself cannot be followed back: repair it
                why, to = dep.repair()
                print(f"repaired: current -> {to.name} (it was broken: {why}); {to.model}")
                return 0
            frm, to = dep.rollback()
            print(f"rolled back: current -> {to.name} (was {frm.name}); {to.model}")
            return 0
        missing = [f"--{k}" for k in ("config", "data", "deploy") if not getattr(args, k)]
        if missing:
            p.error(f"{', '.join(missing)} required (or --list / --rollback)")
        if not (math.isfinite(args.tolerance) and args.tolerance >= 0):  # nan: every candidate would pass
            p.error("--tolerance must be a finite number >= 0")
        config, data, heldout = plan(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DeploymentError, OSError) as e:   # OSError: writing the held-out split (auto.hold_out)
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        with sigterm_interrupts():  # kill PID / a supervisor's stop: the Ctrl-C path, staging removed
            return retrain(args, config, data, heldout)
    except (StepFailed, DeploymentError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was deployed; the previous deployment is unchanged", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

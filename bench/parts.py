"""Every part, every family and registration that applies: one table for the shared MVTec halves.

    python -m bench.parts [--parts screw metal_nut] [--families template discriminative vae]
        [--seeds 0 1 2] [--tolerance T] [--root ../shared/data/mvtec] [--out runs/bench/parts] [--threads N]

Per part (an MVTec category: train/good builds, the shared test half measures):
  template        at 128 px with every registration that applies (training.auto.registrations:
                  none, shift, rotation where a part stands on a background, principal_axis where
                  it is elongated; each with and without lighting normalization where there is a
                  background), the best of them with the set-up's misalignment tolerance
                  (training.auto.TOLERANCE), and at 256 px with the setting ranked first
  trained         every other family (--families) at 128 px with its registration (no tolerance,
                  as the set-up builds them; --tolerance T adds rows with one), one row per
                  seed (--seeds), the family's own settings for a new part (Family.new_part:
                  what the automatic set-up builds), and each seed's model exported again with
                  each of its family's variants (Family.variants, e.g. discriminative+blend; set-up
                  minutes: the seed's build plus the export)
Each model is built in-process by its family's own code, then calibrated on the test half as a
dry run (calibration.calibrate: the runtime's pipeline, registration included): pixel AUROC, best
IoU, AUPRO (each map taken back to the image's frame), image AUROC, recall at the calibrated
FPR <= 5 % on held-out folds (5-fold mean), set-up minutes (the build), ms per image (host
preparation + the model at batch 1, median over the test images, ONNX Runtime on the CPU).
Results go to OUT/<part>/<setting>/result.json as they come (a rerun skips what exists: a long run
can be stopped and resumed); the table (means over seeds, [min, max]) is printed and written to
OUT/parts.json. Exit codes: 0 done, 1 a build or measurement failed, 2 usage.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.calibrate import calibrate
from core.cli import int_at_least
from core.files import write_json
from families import FAMILIES, BuildRequest
from families.template.bank import MAX_TOLERANCE
from runtime.pipeline import Pipeline
from training.auto import (PART_SHARE, TEMPLATE_SIZES, TOLERANCE, Row, choose, other_lighting, plan_row,
                           registrations, survey, variant_row)

DEFAULT_ROOT = "../shared/data/mvtec"
SIZE = 128
METRICS = ("pixel_auroc", "best_iou", "aupro", "image_auroc", "recall", "setup_min", "ms_per_image")
TIMED = 40          # test images timed for ms per image


def build(row: Row, folder: Path, seed: int) -> tuple[Path, float]:
    """The row's model built in `folder` by its family's own code; returns the ONNX file and the
    seconds an interrupted earlier run already spent on it."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = row.config
    model = folder / "model.onnx"
    earlier = 0.0
    if row.variant:     # the seed's model of the same setting, exported again (Family.variants)
        import yaml  # noqa: PLC0415

        (folder / "train.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        source = Path(row.source or "")
        FAMILIES[row.family].variant(row.variant)(BuildRequest(folder / "train.yaml", model, None, [], _in_process),
                                                  source)
        earlier = json.loads((source.parent / "result.json").read_text())["setup_min"] * 60
    elif row.family == "template":
        from families.template.build import build as build_template  # noqa: PLC0415

        m = cfg["model"]
        build_template(cfg["data"]["root"], model, m["size"], m["channels"], m["k"], None,
                       row.registration["method"], row.registration["lighting"], m.get("tolerance", 0))
    elif row.family == "discriminative":
        from families.discriminative.export import export  # noqa: PLC0415
        from families.discriminative.train import settings, train  # noqa: PLC0415

        c = settings(cfg)
        c["train"]["seed"] = seed
        export(train(c, folder, quiet=True)["checkpoint"], model)
    elif row.family == "vae":
        import torch  # noqa: PLC0415

        from export.onnx import export_onnx  # noqa: PLC0415
        from training.checkpoint import load_checkpoint  # noqa: PLC0415
        from training.config import DEFAULTS, merge  # noqa: PLC0415
        from training.train import train as train_vae  # noqa: PLC0415

        c = merge(DEFAULTS, cfg)
        c["train"]["seed"] = seed
        # training.train writes its checkpoint every epoch: a rerun continues an interrupted seed,
        # and the minutes already trained count in its set-up time
        ckpt = folder / "model.pt"
        resume = ckpt.is_file()
        if resume:
            history = load_checkpoint(ckpt).get("history") or []
            earlier = history[-1]["seconds"] if history else 0.0
        export_onnx(train_vae(c, folder, torch.device("cpu"), resume=resume, progress=False), model)
    else:
        raise ValueError(f"bench.parts has no builder for family '{row.family}'")
    return model, earlier


def _in_process(name: str, module: str, args: list[str], **_: Any) -> None:
    """BuildRequest.run for bench: the step's command run in this process."""
    if importlib.import_module(module).main(args) != 0:
        raise RuntimeError(f"{name}: python -m {module} {' '.join(args)} failed")


def ms_per_image(model: Path, test: list[Path], threads: int | None) -> float:
    """Median host preparation + model time of one image at batch 1."""
    with Pipeline.open(model, threads=threads) as pipe:
        times = []
        for path in test[:TIMED]:
            t = time.perf_counter()
            p = pipe.load(path, keep_image=False)
            if p.ok:
                pipe.model(p.input[None], ("anomaly_map",))
                times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times)) if times else float("nan")


def measure(row: Row, part: Path, folder: Path, seed: int, threads: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    model, earlier = build(row, folder, seed)
    setup_min = (time.perf_counter() - started + earlier) / 60
    body = calibrate(model, part / "test", report=folder / "calibration", dry_run=True, force=True, worst=0,
                     threads=threads, log=lambda _: None)
    test = sorted((part / "test").glob("*/*.png"))
    return {"setting": row.name, "family": row.family, "size": row.size, "registration": row.registration,
            "tolerance": row.tolerance, "seed": seed, "pixel_auroc": body["auroc"]["pixel"],
            "best_iou": body["best_iou"]["iou"],
            "aupro": body["aupro"], "image_auroc": body["auroc"]["image"],
            "recall": ((body["folds"] or {}).get("recall") or {}).get("mean"),
            "in_sample_recall": body["in_sample"]["recall"], "setup_min": setup_min,
            "ms_per_image": ms_per_image(model, test, threads),
            "registration_failures": len(body["registration"]["failed"])}


def run_part(part: Path, out: Path, families: list[str], seeds: list[int], threads: int | None,
             tolerance: int = 0) -> list[dict[str, Any]]:
    s = survey(part)
    section = {"format": "mvtec", "root": str(part)}
    results: list[dict[str, Any]] = []

    def one(row: Row, seed: int) -> dict[str, Any]:
        folder = out / part.name / (row.name + (f"-s{seed}" if FAMILIES[row.family].trains else ""))
        done = folder / "result.json"
        if done.is_file():
            r = json.loads(done.read_text())
        else:
            print(f"== {part.name}: {row.name} seed {seed}", flush=True)
            r = measure(row, part, folder, seed, threads)
            write_json(done, r)
        results.append(r)
        row.image_auroc, row.aupro, row.recall, row.status = r["image_auroc"], r["aupro"], r["recall"], "built"
        return r

    regs = registrations(s)
    if s.parts >= PART_SHARE:    # every method with both lightings: the table shows what each buys
        regs += [other_lighting(r) for r in regs]
    rows = [plan_row("template", SIZE, reg, s, section) for reg in regs]
    for row in rows:
        one(row, 0)
    rows.append(plan_row("template", SIZE, choose(rows).registration, s, section, TOLERANCE))
    one(rows[-1], 0)
    best = choose(rows)
    for size in TEMPLATE_SIZES:
        one(plan_row("template", size, best.registration, s, section, best.tolerance), 0)
    for family in families:
        if family != "template":
            # a family without a tolerance (the VAE) plans one row for both
            planned = {r.name: r for r in (plan_row(family, SIZE, best.registration, s, section, t)
                                           for t in sorted({0, tolerance}))}
            for row in planned.values():
                for seed in seeds:
                    one(row, seed)
                    for option in FAMILIES[family].variants:     # the same model exported again
                        v = variant_row(row, option)
                        v.source = str(out / part.name / f"{row.name}-s{seed}" / "model.onnx")
                        one(v, seed)
    return results


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: each metric's mean over seeds and [min, max]."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["setting"], []).append(r)
    rows = []
    for name, rs in by.items():
        row: dict[str, Any] = {"setting": name, "family": rs[0]["family"], "seeds": [r["seed"] for r in rs]}
        for m in METRICS:
            v = np.array([np.nan if r[m] is None else r[m] for r in rs], dtype=np.float64)
            row[m] = {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else None,
                      "min": float(np.nanmin(v)) if np.isfinite(v).any() else None,
                      "max": float(np.nanmax(v)) if np.isfinite(v).any() else None}
        rows.append(row)
    return rows


def print_table(part: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{part}")
    print(f"{'setting':<40} {'seeds':>5} {'pix AUROC':>9} {'best IoU':>8} {'AUPRO':>6} {'img AUROC':>15} "
          f"{'recall':>13} {'set-up min':>10} {'ms/img':>7}")
    for r in rows:
        def c(m: str, pct: bool = False, spread: bool = False) -> str:
            v = r[m]
            if v["mean"] is None:
                return "-"
            f = (lambda x: f"{x:.0%}") if pct else (lambda x: f"{x:.3f}")
            return f"{f(v['mean'])} [{f(v['min'])}, {f(v['max'])}]" if spread and len(r["seeds"]) > 1 else f(v["mean"])
        print(f"{r['setting']:<40} {len(r['seeds']):>5} {c('pixel_auroc'):>9} {c('best_iou'):>8} {c('aupro'):>6} "
              f"{c('image_auroc', spread=True):>15} {c('recall', True, True):>13} {r['setup_min']['mean']:>10.1f} "
              f"{r['ms_per_image']['mean']:>7.1f}")


def add_part_arguments(p: argparse.ArgumentParser) -> None:
    """--parts and --root: the MVTec categories a part bench measures (bench.parts, bench.setup)."""
    p.add_argument("--parts", nargs="+", default=["screw", "metal_nut"], help="MVTec categories under --root")
    p.add_argument("--root", default=DEFAULT_ROOT, help=f"the MVTec categories' folder (default {DEFAULT_ROOT})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.parts", description=__doc__.split("\n\n")[0])
    add_part_arguments(p)
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    p.add_argument("--seeds", nargs="+", type=int_at_least(0), default=[0, 1, 2], help="seeds of the trained families")
    p.add_argument("--out", default="runs/bench/parts", help="results folder (reruns skip what it holds)")
    p.add_argument("--tolerance", type=int, choices=range(1, MAX_TOLERANCE + 1), default=0, metavar="T",
                   help="also the trained families with this misalignment tolerance (rows +tolT)")
    p.add_argument("--threads", type=int_at_least(1), help="ONNX Runtime threads (default: one per core)")
    args = p.parse_args(argv)
    missing = [name for name in args.parts if not (Path(args.root) / name / "train" / "good").is_dir()]
    if missing:
        p.error(f"{', '.join(missing)}: no MVTec category with train/good under --root {args.root}")
    out = Path(args.out)
    table: dict[str, Any] = {}
    try:
        for name in args.parts:
            rows = summarize(run_part(Path(args.root) / name, out, args.families, args.seeds, args.threads,
                                      args.tolerance))
            table[name] = rows
            print_table(name, rows)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    write_json(out / "parts.json", {"parts": table, "command": " ".join(["python -m bench.parts", *(argv or sys.argv[1:])])})
    print(f"\nwrote {out / 'parts.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

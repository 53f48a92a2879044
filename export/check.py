"""Parity report: the exported ONNX graph (ONNX Runtime, CPU) against PyTorch autograd.

    python -m export.check --onnx screw.onnx --checkpoint runs/screw/model.pt
        [--batch 1 3] [--images DIR] [--tol 1e-4] [--seed 0] [--json report.json]

The reference is `training.inference.reference_outputs` (the autograd path evaluation and
calibration use) with the settings stored in the ONNX metadata. For every output and batch size
it reports max |err|, the output's range, and the elements whose error exceeds tol x range.

Such outliers are legitimate only at a ReLU kink: a pre-activation within fp32 noise of zero
takes the other side in one backend, its mask flips and a gradient jumps. So for the outputs the
backward's masks make discontinuous (gradients, attention, alpha, and anomaly_map when it is the
attention or the fusion; the reconstruction maps are continuous) each outlier is re-checked
against autograd evaluated at the ONNX graph's own `activations` (the reference run with the
target layer's output replaced by them): if the ONNX value matches that, the difference is the
forward's fp32 noise flipping a mask, and it is counted as a kink outlier (reported, never
hidden). The re-check is autograd, not the export module, so a wrong explicit backward cannot
explain itself away. Any other outlier, any outlier in a continuous output, and any NaN or inf on
either side fails. A line graph (export.onnx --outputs) is compared on every output it has; one
without `activations` cannot be re-run from them, so none of its outliers is excused.
Exit codes: 0 parity holds, 1 parity fails or the files disagree, 2 usage.
"""
from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core import ort
from core.cli import require
from core.files import write_json
from core.images import IMAGE_EXTENSIONS, ImageError, is_image_name
from core.prepare import InputSpec, load
from core.sidecar import SidecarError, read_sidecar, sidecar_path
from export.graph import ExportError
from export.onnx import fp16_storable, read_metadata
from training.checkpoint import load_model_hashed
from training.inference import reference_outputs
from training.models import VAE

DEFAULT_TOL = 1e-4
# A graph with fp16-stored weights is compared with autograd on the checkpoint's weights rounded
# the same way (`rounded_to_fp16`): mu, activations and the reconstruction maps then agree to
# ~1e-6 of their range; gradients and attention to ~1e-4 and ~5e-4 (measured on the demo and
# screw models), because constants the exporter folds from several weights are rounded once,
# after folding. What the rounding itself moves (against the fp32 checkpoint) is reported apart.
FP16_WEIGHTS_TOL = 1e-3


class CheckError(RuntimeError):
    """The check cannot run (files disagree, unreadable input); the message names the file."""


@dataclass
class OutputReport:
    batch: int
    name: str
    shape: list[int]
    max_abs_err: float
    range: float
    tol: float
    outliers: int  # elements with |err| > tol
    kink_outliers: int  # of those, explained by a ReLU mask flip (see module doc)
    elements: int

    @property
    def ok(self) -> bool:
        return self.outliers == self.kink_outliers


@dataclass
class CheckResult:
    onnx: str
    checkpoint: str
    rel_tol: float
    settings: dict[str, Any]
    reports: list[OutputReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)

    def to_json(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "checkpoint": self.checkpoint, "rel_tol": self.rel_tol, "ok": self.ok,
                "settings": self.settings, "notes": self.notes,
                "outputs": [dict(asdict(r), ok=r.ok) for r in self.reports]}


# outputs a flipped ReLU mask in the backward can make jump; the others are continuous functions
# of the input, where fp32 noise never exceeds the tolerance
MASK_DEPENDENT = ("gradients", "attention", "alpha")
# anomaly maps built from the attention (its ReLU and the backward's masks); the reconstruction
# maps (recon_error, recon_error_blur, ssim_error) are continuous
MASK_DEPENDENT_MAPS = ("attention", "fusion")


def mask_dependent(anomaly_map: str | None) -> tuple[str, ...]:
    """The outputs whose outliers may be ReLU-kink ones, for a graph with this anomaly map kind."""
    return MASK_DEPENDENT + (("anomaly_map",) if anomaly_map in MASK_DEPENDENT_MAPS else ())


def output_scale(ref: np.ndarray) -> tuple[float, float]:
    """(range, scale) of a reference output's finite values: errors are measured against its
    range, or against its magnitude when it is constant (e.g. all-zero attention). Finite only: an
    inf would make the tolerance inf and let every error pass."""
    finite = ref[np.isfinite(ref)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    return span, span if span > 0 else max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-30)


def compare(ours: dict[str, np.ndarray], reference: dict[str, torch.Tensor], rel_tol: float, batch: int,
            recheck: dict[str, torch.Tensor] | None = None, anomaly_map: str | None = None) -> list[OutputReport]:
    """Per-output errors of `ours` against `reference`; `recheck` (autograd at our activations)
    marks outliers of mask-dependent outputs (see `mask_dependent`; `anomaly_map` is the graph's
    map kind) as ReLU-kink ones where ours agrees with it."""
    if set(ours) != set(reference):
        raise CheckError(f"outputs differ: graph has {sorted(ours)}, reference has {sorted(reference)}")
    excusable = mask_dependent(anomaly_map)
    reports = []
    for name, ref_t in reference.items():
        ref = ref_t.detach().cpu().numpy().astype(np.float64)
        got = ours[name].astype(np.float64)
        if got.shape != ref.shape:
            raise CheckError(f"output {name}: shape {list(got.shape)}, reference {list(ref.shape)}")
        err = np.abs(got - ref)
        span, scale = output_scale(ref)
        tol = rel_tol * scale
        bad = ~(err <= tol)  # not `err > tol`: NaN compares false both ways and must fail (inf - inf too)
        kink = 0
        if bad.any() and recheck is not None and name in recheck and name in excusable:
            alt = recheck[name].detach().cpu().numpy().astype(np.float64)
            kink = int((bad & (np.abs(got - alt) <= tol)).sum())
        reports.append(OutputReport(batch, name, list(ref.shape), float(err.max()) if err.size else 0.0, span,
                                    tol, int(bad.sum()), kink, int(ref.size)))
    return reports


def load_images(folder: str | Path, spec: InputSpec, limit: int) -> np.ndarray:
    """uint8 [n <= limit, H, W, C] from a folder (recursive, sorted), through the host-side
    preparation the runtime uses (core.prepare: colour, registration, resize); unreadable files are
    skipped (and counted in the error when none is left)."""
    files = sorted(p for p in Path(folder).rglob("*") if is_image_name(p))
    images, bad = [], 0
    for p in files:
        if len(images) == limit:
            break
        try:
            images.append(load(p, spec, keep_image=False).input)
        except ImageError:
            bad += 1
    if not images:
        raise ImageError(f"{folder}: no usable images ({bad} unreadable; suffixes {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return np.stack(images)


def rounded_to_fp16(model: VAE) -> VAE:
    """A copy whose weights are rounded to fp16 and back exactly where `export.onnx.fp16_weights`
    stores them as fp16: the function an fp16-weights graph computes."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in [*rounded.parameters(), *rounded.buffers()]:
            if t.is_floating_point() and fp16_storable(t.detach().cpu().numpy()):
                t.copy_(t.half().float())
    return rounded


def rounding_effect(model: VAE, rounded: VAE, meta: dict[str, Any], n: int, seed: int) -> float:
    """max |anomaly_map(fp16-rounded) - anomaly_map(fp32)| / range on `n` random images: what
    storing the weights as fp16 costs the scores."""
    img = torch.from_numpy(np.random.default_rng(seed).integers(
        0, 256, (n, meta["input_height"], meta["input_width"], meta["input_channels"]), dtype=np.uint8))
    args = (meta["layer"], meta["score"], meta["anomaly_map"], meta["blur_sigma"])
    full = reference_outputs(model, img, *args)["anomaly_map"].numpy().astype(np.float64)
    half = reference_outputs(rounded, img, *args)["anomaly_map"].numpy().astype(np.float64)
    return float(np.abs(half - full).max() / output_scale(full)[1])


def reference_at(model: VAE, image: torch.Tensor, acts: np.ndarray, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The autograd reference with the target layer's output replaced by `acts` (another backend's
    activations): what that backend should output given its own forward noise up to the target."""
    sub = torch.from_numpy(np.ascontiguousarray(acts))
    # a forward hook that returns a tensor replaces the layer's output; it is registered before the
    # reference's own capture hook, which therefore records (and differentiates w.r.t.) `sub`
    handle = model.resolve_layer(meta["layer"]).register_forward_hook(lambda _m, _i, _o: sub.requires_grad_())
    try:
        return reference_outputs(model, image, meta["layer"], meta["score"], meta["anomaly_map"],
                                 meta["blur_sigma"], meta["per_dim"], meta["recon"])
    finally:
        handle.remove()


def check_parity(onnx_path: str | Path, model: VAE, meta: dict[str, Any], batches: tuple[int, ...] = (1, 3),
                 rel_tol: float = DEFAULT_TOL, images: str | Path | None = None, seed: int = 0,
                 session: Any = None, registration: dict[str, Any] | None = None) -> list[OutputReport]:
    """Run ONNX Runtime and the autograd reference on the same uint8 images (random with `seed`, or
    from `images`, prepared as the runtime prepares them, with the model's `registration`, and
    repeated when the folder holds fewer) for each batch size; the per-output reports."""
    h, w, c = meta["input_height"], meta["input_width"], meta["input_channels"]
    rng = np.random.default_rng(seed)
    spec = InputSpec.from_mapping({"height": h, "width": w, "channels": c}, registration)
    pool = load_images(images, spec, max(batches)) if images else None
    inputs = [np.take(pool, np.arange(n) % len(pool), axis=0) if pool is not None
              else rng.integers(0, 256, (n, h, w, c), dtype=np.uint8) for n in batches]
    try:
        session = session or ort.session(onnx_path, device="cpu")
        outputs = [ort.run(session, img) for img in inputs]
    except ort.OrtError as e:
        raise CheckError(str(e)) from e
    except ort.ort_errors() as e:
        raise CheckError(f"{onnx_path}: inference failed ({e.__class__.__name__}: {str(e).strip()[:300]})") from e
    reports: list[OutputReport] = []
    # the autograd reference (two passes per batch) is the slow part on a large model: a bar with
    # the time left on a terminal, nothing in logs and pipes
    for n, img, ours in tqdm(list(zip(batches, inputs, outputs)), desc="parity (autograd reference)", unit="batch",
                             disable=not sys.stderr.isatty(), leave=False):
        timg = torch.from_numpy(img)
        full = reference_outputs(model, timg, meta["layer"], meta["score"], meta["anomaly_map"], meta["blur_sigma"],
                                 meta["per_dim"], meta["recon"])
        ref = {k: full[k] for k in meta["outputs"]}  # a line graph has only some
        # a graph without its activations cannot be re-run from them: its outliers stay unexcused
        recheck = reference_at(model, timg, ours["activations"], meta) if "activations" in ours else None
        reports.extend(compare(ours, ref, rel_tol, n, recheck, meta["anomaly_map"]))
    return reports


def check(onnx_path: str | Path, checkpoint: str | Path, batches: tuple[int, ...] = (1, 3),
          rel_tol: float | None = None, images: str | Path | None = None, seed: int = 0) -> CheckResult:
    """The full check: files agree (checkpoint sha256 in the metadata, sidecar if present), then parity."""
    onnx_path, checkpoint = Path(onnx_path), Path(checkpoint)
    for p in (onnx_path, checkpoint):
        if not p.is_file():
            raise CheckError(f"{p}: not found")
    notes = []
    if sidecar_path(onnx_path).is_file():
        read_sidecar(onnx_path, verify=True)  # raises SidecarError on a sha256 mismatch
        notes.append(f"sidecar {sidecar_path(onnx_path).name}: sha256 verified")
    else:
        notes.append(f"no sidecar {sidecar_path(onnx_path).name} beside the model (runtimes will refuse it)")
    try:
        meta = read_metadata(onnx_path)
    except ExportError as e:
        raise CheckError(str(e)) from e
    if meta["precision"] != "fp32":
        raise CheckError(f"{onnx_path}: a {meta['precision']} graph (export.quantize) is not held to autograd's "
                         "1e-4; its map error against its fp32 source is in its sidecar (quantization.map_error)")
    model, config, digest = load_model_hashed(checkpoint)
    if digest != meta["checkpoint_sha256"]:
        raise CheckError(f"{checkpoint}: not the checkpoint {onnx_path.name} was exported from "
                         f"(sha256 differs from its metadata {meta['checkpoint_sha256'][:16]}...)")
    if rel_tol is None:
        rel_tol = FP16_WEIGHTS_TOL if meta["weights"] == "fp16" else DEFAULT_TOL
    reference = model
    if meta["weights"] == "fp16":
        reference = rounded_to_fp16(model)
        notes.append(f"fp16 weights: compared with the checkpoint's weights rounded to fp16 at {rel_tol:g} x range; "
                     f"the rounding moves anomaly_map by {rounding_effect(model, reference, meta, max(batches), seed):.1e}"
                     " x range from the fp32 checkpoint")
    settings = {k: meta[k] for k in ("layer", "score", "anomaly_map", "blur_sigma", "per_dim", "recon", "weights",
                                     "opset")}
    result = CheckResult(str(onnx_path), str(checkpoint), rel_tol, settings, notes=notes)
    result.reports = check_parity(onnx_path, reference, meta, batches, rel_tol, images, seed,
                                  registration=config.get("registration"))
    return result


def format_report(result: CheckResult) -> str:
    s = result.settings
    lines = [f"export.check {result.onnx} vs autograd on {result.checkpoint}",
             f"layer {s['layer']}, score {s['score']}, anomaly_map {s['anomaly_map']}, weights {s['weights']}, "
             f"opset {s['opset']}; tolerance {result.rel_tol:g} x each output's range",
             f"{'batch':>5}  {'output':<12} {'shape':<20} {'max|err|':>10} {'range':>10} {'err/range':>10} "
             f"{'outliers':>8} {'kink':>5}  ok"]
    for r in result.reports:
        rel = r.max_abs_err / r.range if r.range > 0 else float("nan")
        lines.append(f"{r.batch:>5}  {r.name:<12} {str(r.shape):<20} {r.max_abs_err:>10.3g} {r.range:>10.3g} "
                     f"{rel:>10.2e} {r.outliers:>8} {r.kink_outliers:>5}  {'yes' if r.ok else 'NO'}")
    kinks = sum(r.kink_outliers for r in result.reports)
    lines += [f"note: {n}" for n in result.notes]
    lines.append(f"{'PASS' if result.ok else 'FAIL'}: {sum(r.ok for r in result.reports)}/{len(result.reports)} "
                 f"outputs within tolerance; {kinks} ReLU-kink outlier element(s) counted above")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="exported model (.onnx from export.onnx)")
    p.add_argument("--checkpoint", required=True, help="the checkpoint it was exported from")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 3], help="batch sizes to check (default 1 3)")
    p.add_argument("--images", help="folder of images to use instead of random uint8 images (the first "
                                    "max(--batch) of them, sorted, repeated when fewer)")
    p.add_argument("--tol", type=float, help=f"relative tolerance (x range; default {DEFAULT_TOL:g}, "
                                             f"{FP16_WEIGHTS_TOL:g} for fp16 weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random images")
    p.add_argument("--json", help="also write the report as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    require(p, onnx=args.onnx, checkpoint=args.checkpoint, images=args.images)
    if any(b < 1 for b in args.batch):
        p.error("--batch sizes must be >= 1")
    if args.tol is not None and not args.tol > 0:
        p.error("--tol must be > 0")
    try:
        result = check(args.onnx, args.checkpoint, tuple(args.batch), args.tol, args.images, args.seed)
    except (CheckError, SidecarError, ImageError, ExportError, FileNotFoundError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(format_report(result))
    if args.json:
        try:
            write_json(args.json, result.to_json())
        except OSError as e:
            print(f"error: {args.json}: cannot write the report ({e.strerror or e})", file=sys.stderr)
            return 1
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

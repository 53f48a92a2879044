"""Export a trained VAE to ONNX with the latent code, activations, their gradients and the maps.

    python -m export.onnx --checkpoint runs/screw/model.pt --out screw.onnx [--layer NAME]
        [--score sum_mu|difference] [--per-dim] [--recon] [--outputs anomaly_map[,attention,...]]
        [--opset N] [--fp16-weights]

Writes screw.onnx atomically and the sidecar screw.yaml beside it. --outputs exports a line graph:
only the named outputs of the contract, and only what computes them (anomaly_map alone of a
reconstruction map: encoder and decoder, no backward). The graph is
`export.graph.ExportModule` traced by the TorchScript exporter (no autograd inside: the backward
is explicit ops), input `image` uint8 [N, H, W, C] with a dynamic N, every other dimension static.
Exit codes: 0 written, 1 failure (unreadable checkpoint, unsupported layer, export error), 2 usage.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from core.cli import require
from core.files import atomic_write
from core.sidecar import (
    NO_REGISTRATION,
    SidecarError,
    check_sidecar_free,
    write_sidecar,
)
from export.graph import (
    BASE_OUTPUTS,
    OUTPUT_DOCS,
    ExportError,
    ExportModule,
    build_export_module,
    line_outputs,
    output_shapes,
)
from training.attention import SCORES

DEFAULT_OPSET = 17
# 13: Split/Squeeze/Unsqueeze/Resize semantics the exporter relies on; 20: the newest opset
# every TensorRT 10.x parses (10.0 supports 9-20), so any file written here builds everywhere.
OPSET_RANGE = (13, 20)
METADATA_SCHEMA = "1"
# what `metadata` writes; readers index every one of them
METADATA_KEYS = ("schema", "family", "arch", "latent", "layer", "score", "anomaly_map", "blur_sigma", "per_dim",
                 "recon", "input_name", "input_height", "input_width", "input_channels", "color", "mean", "std",
                 "outputs", "weights", "checkpoint_sha256")
FAMILIES = {"resnet18": "resnet_vae", "mnist": "conv_vae", "ucsd": "conv_vae"}
# fp16 storage only for large tensors: they are the file size; small ones (biases, BN) keep fp32
FP16_MIN_ELEMENTS = 1024


def _static_output_shapes(model: onnx.ModelProto, shapes: dict[str, list[int | str]]) -> None:
    """Declare every output dimension except the batch as a number (the exporter leaves some symbolic)."""
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        want = shapes[out.name]
        if len(dims) != len(want):
            raise ExportError(f"output {out.name}: exported rank {len(dims)}, expected {want}")
        for d, w in zip(dims, want):
            if isinstance(w, str):
                d.dim_param = w
            else:
                d.dim_value = w
        out.doc_string = OUTPUT_DOCS[out.name]


def simplify(model: onnx.ModelProto, max_elements: int = 1 << 21) -> int:
    """Fold what the TorchScript exporter leaves computable at export time, so that shape inference
    (and the static-shape check for TensorRT) sees every non-batch dimension as a number:
      * Identity of a constant (the exporter's de-duplicated initializers) -> its consumers read the
        constant directly;
      * a node whose inputs are all constants and whose outputs are small (e.g. the pads that
        F.pad builds with ConstantOfShape/Concat/Slice, or the constant fc-head cotangent of
        sum_mu, ones @ W_mu @ W_fc) -> evaluated once (onnx.reference) into an initializer.
    Outputs over max_elements (8 MB of fp32) are never materialized, so no weight is duplicated;
    constants nothing reads any more are dropped.
    Returns the number of nodes removed."""
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    values: dict[str, np.ndarray] = {}  # small constants known so far (Constant outputs, folded nodes)
    alias: dict[str, str] = {}
    kept, removed = [], 0

    def is_const(name: str) -> bool:
        return name in values or name in inits

    def value(name: str) -> np.ndarray:
        return values[name] if name in values else numpy_helper.to_array(inits[name])

    for node in g.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
        ins = [n for n in node.input if n]
        if node.op_type == "Constant" and not node.domain:
            values[node.output[0]] = np.asarray(ReferenceEvaluator(node).run(None, {})[0])
            kept.append(node)
            continue
        if node.op_type == "Identity" and is_const(node.input[0]) and node.output[0] not in graph_outputs:
            alias[node.output[0]] = node.input[0]
            removed += 1
            continue
        if (ins and all(is_const(n) for n in ins) and not node.domain
                and not set(node.output) & graph_outputs and not node.op_type.startswith("Random")):
            res = [np.asarray(r) for r in ReferenceEvaluator(node).run(None, {n: value(n) for n in ins})]
            if all(r.size <= max_elements for r in res):
                values.update(zip(node.output, res))
                removed += 1
                continue
        kept.append(node)
    used = {n for node in kept for n in node.input} | graph_outputs
    for name in list(values):  # folded values that something still reads become initializers
        if name in used and not any(name in n.output for n in kept):
            g.initializer.append(numpy_helper.from_array(values[name], name))
    live = [n for n in kept if n.op_type != "Constant" or n.output[0] in used]
    removed += len(kept) - len(live)
    del g.node[:]
    g.node.extend(live)
    dead = [i for i in g.initializer if i.name not in used]
    for i in dead:
        g.initializer.remove(i)
    return removed


def fp16_storable(w: np.ndarray, min_elements: int = FP16_MIN_ELEMENTS) -> bool:
    """Whether `fp16_weights` stores this float tensor as fp16: large enough to matter, and no
    value that fp16 would turn into inf. export.check rounds the reference's weights by the same rule."""
    return w.size >= min_elements and bool(np.abs(w).max() <= np.finfo(np.float16).max)


def fp16_weights(model: onnx.ModelProto, min_elements: int = FP16_MIN_ELEMENTS) -> int:
    """Store large float initializers as float16, each followed by a Cast back to float32 under the
    original name (consumers unchanged; ONNX Runtime folds the casts at load, TensorRT too).
    Halves the file; outputs then differ from fp32 by weight rounding (~1e-3 relative).
    Returns the number of converted tensors."""
    casts = []
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or math.prod(init.dims) < min_elements:
            continue
        w = numpy_helper.to_array(init)
        if not fp16_storable(w, min_elements):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(w.astype(np.float16), f"{name}__fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT,
                                           name=f"/fp16_weights/Cast_{len(casts)}"))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(casts)


def metadata(module: ExportModule, settings: dict[str, Any], weights: str) -> dict[str, str]:
    """What the ONNX file says about itself (metadata_props; strings only)."""
    pre = module.model.preprocess
    arch = settings["model"].get("arch", "resnet18")
    return {
        "schema": METADATA_SCHEMA, "family": FAMILIES.get(arch, arch), "arch": arch,
        "latent": str(module.model.latent), "layer": module.layer, "score": module.score,
        "anomaly_map": module.amap.kind, "blur_sigma": repr(float(settings["blur_sigma"])),
        "per_dim": str(module.per_dim).lower(), "recon": str(module.with_recon).lower(),
        "input_name": "image", "input_height": str(module.height), "input_width": str(module.width),
        "input_channels": str(module.channels), "color": "gray" if module.channels == 1 else "rgb",
        "mean": repr(float(pre.mean.flatten()[0])), "std": repr(float(pre.std.flatten()[0])),
        "outputs": ",".join(module.output_names), "weights": weights,
        "checkpoint_sha256": settings["checkpoint_sha256"], "precision": "fp32",
    }


def load_onnx(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """onnx.load with a file that is not ONNX (protobuf's DecodeError and friends) as one
    ExportError line naming it."""
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError, onnx's own: not an ONNX file either way
        raise ExportError(f"{path}: not a readable ONNX file ({e.__class__.__name__})") from e


def onnx_opset(model: onnx.ModelProto) -> int | None:
    """The default-domain opset a graph imports (None when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The export settings stored in an ONNX file, typed (ints, floats, bools, list of outputs)."""
    m = load_onnx(path, load_external_data=False)
    raw = {p.key: p.value for p in m.metadata_props}
    if raw.get("schema") != METADATA_SCHEMA:
        raise ExportError(f"{path}: not exported by export.onnx (metadata schema {raw.get('schema')!r})")
    missing = [k for k in METADATA_KEYS if k not in raw]
    if missing:
        raise ExportError(f"{path}: metadata lacks {', '.join(missing)} (re-export with python -m export.onnx)")
    out: dict[str, Any] = dict(raw)
    try:
        for k in ("latent", "input_height", "input_width", "input_channels"):
            out[k] = int(raw[k])
        for k in ("blur_sigma", "mean", "std"):
            out[k] = float(raw[k])
    except ValueError as e:
        raise ExportError(f"{path}: unreadable metadata ({e})") from None
    for k in ("per_dim", "recon"):
        out[k] = raw[k] == "true"
    out["outputs"] = raw["outputs"].split(",")
    out["precision"] = raw.get("precision", "fp32")  # files exported before export.quantize lack it
    out["opset"] = onnx_opset(m)
    return out


def relative_to(path: str | Path, folder: str | Path) -> str:
    """`path` as seen from `folder` (a sidecar names files relative to itself: the deployment
    folder can move as a whole); absolute when no relative path exists (another drive)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:
        return str(Path(path).resolve())


def sidecar_info(module: ExportModule, settings: dict[str, Any], opset: int, weights: str,
                 seconds: float, folder: str | Path = ".") -> dict[str, Any]:
    meta = metadata(module, settings, weights)
    return {
        "model": {"family": meta["family"], "arch": meta["arch"], "latent": module.model.latent,
                  "layer": module.layer, "score": module.score, "anomaly_map": module.amap.kind,
                  "blur_sigma": float(settings["blur_sigma"]), "per_dim": module.per_dim,
                  "recon": module.with_recon, "checkpoint": relative_to(settings["checkpoint"], folder),
                  "checkpoint_sha256": settings["checkpoint_sha256"],
                  **{k: settings[k] for k in ("attention_scale", "anomaly_scale") if settings.get(k)}},
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "height": module.height,
                  "width": module.width, "channels": module.channels, "color": meta["color"]},
        "outputs": list(module.output_names),
        "precision": "fp32",
        "output_shapes": output_shapes(module),
        "files": {},  # the .onnx entry is added by write_sidecar from the file itself
        "thresholds": {},
        "registration": settings.get("registration") or dict(NO_REGISTRATION),
        "preprocessing": {
            "host": {"read": "core.images.read_image (16-bit scaled, alpha dropped, color converted)",
                     "prepare": "core.prepare.prepare: registration (the section above), then the model's size "
                                "(INTER_AREA shrinking, INTER_LINEAR enlarging)",
                     "size": [module.height, module.width]},
            "graph": {"cast": "uint8 -> float32 / 255", "mean": float(meta["mean"]), "std": float(meta["std"]),
                      "layout": "NHWC -> NCHW"}},
        "export": {"opset": opset, "weights": weights, "seconds": round(seconds, 2)},
    }


def trace_to_onnx(module: torch.nn.Module, input_hwc: tuple[int, int, int], names: list[str], path: str | Path,
                  opset: int = DEFAULT_OPSET, finish: Any = None) -> None:
    """Trace `module` (uint8 image [N, H, W, C] -> tuple of `names`) to an ONNX file at `path`
    (not atomic: callers wrap it): TorchScript exporter, dynamic batch, `simplify`, then
    `finish(model)` for metadata, then the ONNX checker. Shared by export_onnx and bench.export."""
    # batch 2, not 1: a size-1 batch invites the tracer to specialize shapes to 1
    dummy = torch.zeros(2, *input_hwc, dtype=torch.uint8)
    with warnings.catch_warnings():  # the legacy exporter announces its deprecation on every call
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=names, do_constant_folding=True,
                          # PRESERVE (the module is in eval mode) skips the exporter's Conv+BN
                          # folding: the backward's ConvTranspose uses the unfolded conv weights,
                          # so folding would store both copies (ORT and TensorRT fold BN at load).
                          training=torch.onnx.TrainingMode.PRESERVE,
                          dynamic_axes={n: {0: "N"} for n in ["image", *names]})
    model = onnx.load(str(path))
    simplify(model)
    if finish is not None:
        finish(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_onnx(checkpoint: str | Path, out: str | Path, layer: str | None = None, score: str | None = None,
                per_dim: bool = False, recon: bool | None = None, opset: int = DEFAULT_OPSET,
                fp16: bool = False, outputs: list[str] | None = None) -> dict[str, Any]:
    """Export, check and write `out` (.onnx) and its sidecar atomically; `outputs`: a line graph
    of only those (export.graph.line_outputs). Returns {onnx, sidecar, bytes, seconds, outputs, settings}."""
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ExportError(f"opset {opset} is outside {OPSET_RANGE[0]}..{OPSET_RANGE[1]} "
                          f"(TensorRT 10 parses opsets up to 20)")
    out = Path(out)
    check_sidecar_free(out)
    started = time.perf_counter()
    module, settings = build_export_module(checkpoint, layer, score, per_dim, recon, outputs=outputs)
    names = list(module.output_names)
    weights = "fp16" if fp16 else "fp32"

    def finish(model: onnx.ModelProto) -> None:
        _static_output_shapes(model, output_shapes(module))
        model.graph.input[0].doc_string = (f"uint8 [N, {module.height}, {module.width}, {module.channels}] "
                                           f"(NHWC, {'gray' if module.channels == 1 else 'RGB'}) at the model's size")
        model.doc_string = ("vae-inspect: one-class VAE with gradient-based latent attention "
                            "(Liu et al., CVPR 2020); outputs documented per output")
        if fp16:
            fp16_weights(model)
        for k, v in metadata(module, settings, weights).items():
            p = model.metadata_props.add()
            p.key, p.value = k, v

    def write(tmp: str) -> None:
        trace_to_onnx(module, (module.height, module.width, module.channels), names, tmp, opset, finish)

    atomic_write(out, write, suffix=".onnx")
    seconds = time.perf_counter() - started
    sidecar = write_sidecar(out, sidecar_info(module, settings, opset, weights, seconds, out.parent))
    return {"onnx": out, "sidecar": sidecar, "bytes": out.stat().st_size, "seconds": seconds,
            "outputs": names, "settings": settings}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="trained checkpoint (.pt from training.train)")
    p.add_argument("--out", required=True, help="output .onnx (the sidecar .yaml is written beside it)")
    p.add_argument("--layer", help="target layer (default: the checkpoint's inference.layer)")
    p.add_argument("--score", choices=SCORES, help="latent score (default: the checkpoint's inference.score)")
    p.add_argument("--per-dim", action="store_true", help="also output alpha [N, D, K] (per-dimension maps)")
    p.add_argument("--recon", action="store_true", default=None,
                   help="put the decoder in the graph (recon_error) even when the anomaly map does not need it")
    p.add_argument("--outputs", help="a line graph: only these outputs, comma-separated (e.g. anomaly_map or "
                                     "anomaly_map,attention), and only what computes them; default: all of "
                                     f"{', '.join(BASE_OUTPUTS)} (+ recon_error, alpha as asked)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {OPSET_RANGE[0]}..{OPSET_RANGE[1]} (default {DEFAULT_OPSET})")
    p.add_argument("--fp16-weights", action="store_true", help="store large weights as fp16 (half the file)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    require(p, checkpoint=args.checkpoint)
    if Path(args.out).suffix != ".onnx":
        p.error(f"--out must end with .onnx, not '{args.out}'")
    if not OPSET_RANGE[0] <= args.opset <= OPSET_RANGE[1]:
        p.error(f"--opset must be in {OPSET_RANGE[0]}..{OPSET_RANGE[1]} (TensorRT 10 parses up to 20)")
    outputs = None
    if args.outputs is not None:
        try:
            outputs = line_outputs([n.strip() for n in args.outputs.split(",") if n.strip()], args.per_dim, args.recon)
        except ExportError as e:
            p.error(f"--outputs: {e}")
    try:
        r = export_onnx(args.checkpoint, args.out, args.layer, args.score, args.per_dim, args.recon,
                        args.opset, args.fp16_weights, outputs)
    except (FileNotFoundError, ValueError, SidecarError, RuntimeError, onnx.checker.ValidationError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}", file=sys.stderr)
        return 1
    if not args.quiet:
        s = r["settings"]
        print(f"wrote {r['onnx']} ({r['bytes'] / 1e6:.1f} MB, {'fp16' if args.fp16_weights else 'fp32'} weights, "
              f"opset {args.opset}, {r['seconds']:.1f} s) and {r['sidecar']}\n"
              f"layer {s['layer']}, score {s['score']}, anomaly_map {s['anomaly_map']}; outputs: {', '.join(r['outputs'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DEFAULT_OPSET", "OPSET_RANGE", "export_onnx", "fp16_weights", "load_onnx", "metadata", "onnx_opset",
           "read_metadata", "simplify", "trace_to_onnx", "main"]

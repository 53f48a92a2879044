"""Static INT8 quantization of an exported graph, for edge CPUs without a GPU.

    python -m export.quantize --onnx X.onnx --calib-data DIR --out X.int8.onnx [--outputs anomaly_map]
        [--max-images 320] [--method minmax|percentile|entropy] [--no-per-channel] [--reduce-range]
        [--keep-fp32 PREFIX ...] [--verify-data DIR] [--quiet]

ONNX Runtime's own static quantization (onnxruntime.quantization.quantize_static: QDQ format,
uint8 activations, int8 weights per output channel) calibrated on good parts prepared exactly as
the runtime prepares them: core.prepare with the source sidecar's input size and fitted
registration; an image whose registration fails is skipped, since the runtime never runs the
model on it. Before quantizing, `quant_pre_process` folds BatchNorm into the convolutions, and
every transposed convolution the decoders use (output exactly stride x input) is rewritten as one
convolution on its input whose channel blocks are the output phases, interleaved by DepthToSpace
(`conv_transpose_as_conv`): the same sums, but ONNX Runtime has an INT8 kernel for Conv and none
for ConvTranspose, which it ran in fp32 after dequantizing its weights on every call (half the
INT8 graph's time). Quantized: Conv, Gemm, MatMul, and Relu (folded into the range of the
convolution before it). Left in fp32 (`KEEP_FP32`): the anomaly map's own arithmetic (the
reconstruction error and its blur: a few single-channel ops, the values thresholds compare;
quantized, the blur also ran slower) and the graph's preprocessing.

--outputs anomaly_map cuts the line graph out of a full one first (onnx.utils.Extractor: the
nodes no asked-for output needs are dropped, the same graph export.onnx --outputs writes), which is
how training.retrain --int8 deploys its INT8 line graph from the fp32 graph it has checked.

The sidecar X.int8.yaml records `precision: int8`, the source graph and its sha256, the
calibration images (folder, count, a sha256 over their names and bytes) and the map's error
against the fp32 source on the verification images (the calibration images unless --verify-data).
It starts with no thresholds: an INT8 model's scores shift, so it is calibrated itself
(calibration.calibrate), never given the fp32 model's thresholds. Needs `onnx` (the train extra);
the runtime opens the result like any .onnx, without PyTorch.
Exit codes: 0 written, 1 failure while working (source model or sidecar, no usable calibration
image, quantization), 2 usage (paths typed wrong, a calibration folder without any image).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import onnx.utils
from onnx import helper, numpy_helper

from core import ort
from core.cli import require
from core.files import atomic_write, sha256
from core.images import ImageError, is_image_name
from core.prepare import InputSpec, load
from core.sidecar import SidecarError, check_sidecar_free, precision, read_sidecar, sidecar_path, write_sidecar
from export.onnx import relative_to

# MinMax ranges from more parts moved image scores less (largest change on the screw test half,
# x the map's range, 64 images against all 320: 2.5e-2 / 1.7e-2 at 15 epochs, 1.8e-2 / 1.1e-2 at
# 55; image AUROC against fp32 +0.021 / +0.009 and -0.006 / -0.002): every training image of the
# screw set. A range costs a min and a max per tensor and image: memory stays small
DEFAULT_MAX_IMAGES = 320
# --method -> onnxruntime.quantization.CalibrationMethod's member
METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
# node-name prefixes left in fp32: the map thresholds compare (cheap single-channel arithmetic,
# where 8-bit steps would move scores directly) and the uint8 -> float preprocessing
KEEP_FP32 = ("/amap/", "/preprocess/")
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Relu")


class QuantizeError(RuntimeError):
    """The quantization cannot be done; one line naming the file and the reason."""


@dataclass
class Calibration:
    """Prepared calibration images and what identifies them."""
    images: list[np.ndarray]     # uint8 [H, W, C] each, as the runtime feeds the model
    folder: Path
    sha256: str                  # of the used images' relative names and bytes, in order
    skipped: dict[str, int]      # unreadable, registration failed


def calibration_images(folder: str | Path, spec: InputSpec, limit: int | None = None) -> Calibration:
    """The first `limit` (None: all) usable images of `folder` (recursive, sorted) through core.prepare.
    QuantizeError naming the folder when none is usable."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if is_image_name(p) and p.is_file())
    images: list[np.ndarray] = []
    skipped = {"unreadable": 0, "registration_failed": 0}
    digest = hashlib.sha256()
    for path in files:
        if len(images) == limit:
            break
        try:
            prepared = load(path, spec, keep_image=False)
        except ImageError:
            skipped["unreadable"] += 1
            continue
        if not prepared.ok:  # the runtime never runs the model on it
            skipped["registration_failed"] += 1
            continue
        images.append(prepared.input)
        digest.update(f"{path.relative_to(folder)}\0{sha256(path)}\n".encode())
    if not images:
        raise QuantizeError(f"{folder}: no usable calibration image ({len(files)} image files: "
                            f"{skipped['unreadable']} unreadable, {skipped['registration_failed']} failed registration)")
    return Calibration(images, folder, digest.hexdigest(), skipped)


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def phase_taps(kernel: int, stride: int, pad: int) -> list[tuple[list[int], int]]:
    """For a transposed convolution whose output is `stride` x its input: per output phase a
    (outputs o = stride * m + a), the kernel taps that reach it in cross-correlation order and the
    offset of the input it reads first.

    y[o] = sum_k x[i] w[k] over o = stride * i - pad + k; for o = stride * m + a the taps are
    k = k0 + stride * t with k0 = (a + pad) mod stride, reading x[m + c - t], c = (a + pad - k0) / stride."""
    phases = []
    for a in range(stride):
        k0 = (a + pad) % stride
        taps = list(range(k0, kernel, stride))
        c = (a + pad - k0) // stride
        phases.append((taps[::-1], c - len(taps) + 1))
    return phases


def phase_kernel(w: np.ndarray, stride: int, pad: int) -> tuple[np.ndarray, list[int]] | None:
    """A ConvTranspose weight [Cin, Cout, k, k] (output exactly `stride` x the input) as one
    convolution's weight [stride * stride * Cout, Cin, t, t], t the most taps a phase has: phase
    (a, b)'s taps in channel block a * stride + b (DCR order), each phase's window starting at its
    own first input offset. Returns it with the first offsets per phase; None when one is positive
    (the window would start after the output's own position: no padding reaches it)."""
    phases = phase_taps(w.shape[2], stride, pad)
    firsts = [first for _, first in phases]
    if max(firsts) > 0:
        return None
    t = max(len(taps) for taps, _ in phases)
    kernel = np.zeros((stride, stride, w.shape[1], w.shape[0], t, t), w.dtype)
    for a, (rows, _) in enumerate(phases):
        for b, (cols, _) in enumerate(phases):
            kernel[a, b, :, :, :len(rows), :len(cols)] = w[:, :, rows][:, :, :, cols].transpose(1, 0, 2, 3)
    return kernel.reshape(-1, w.shape[0], t, t), firsts


def conv_transpose_as_conv(model: onnx.ModelProto) -> int:
    """Rewrite each 2-D ConvTranspose with constant weights, square kernel k, stride s, symmetric
    padding p, k - 2p = s (the output exactly s x the input), group 1 and no dilation, as one Conv
    on its input whose s * s channel blocks are the output phases (`phase_kernel`: the decoders'
    k4 s2 p1 is a 2x2 kernel, the ConvTranspose's own multiply-adds), evaluated at every window
    start a phase needs; each phase takes its block at its own offset (Slice, moved as 8-bit data),
    and DepthToSpace interleaves them: the same sums. One convolution, not one per phase: four
    outputs would each be rounded to their own 8-bit range, and again, interleaved, to the next
    layer's. A Relu that alone reads the ConvTranspose moves before the interleaving (they
    commute): Conv + Relu is one INT8 kernel whose range starts at 0. Others are left as they are.
    Returns the count."""
    g = model.graph
    weights = {i.name: i for i in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in g.output}
    moved: set[str] = set()  # the Relus now applied before the interleaving
    nodes: list[onnx.NodeProto] = []
    done = 0
    for node in g.node:
        if node.name and node.name in moved:
            continue
        k, s = _attribute(node, "kernel_shape", []), _attribute(node, "strides", [1, 1])
        pads = _attribute(node, "pads", [0, 0, 0, 0])
        plain = (node.op_type == "ConvTranspose" and node.input[1] in weights and len(k) == 2 and len(set(k)) == 1
                 and len(set(s)) == 1 and len(set(pads)) == 1 and _attribute(node, "group", 1) == 1
                 and set(_attribute(node, "dilations", [1, 1])) == {1}
                 and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
                 and not any(_attribute(node, "output_padding", [])) and not _attribute(node, "output_shape", [])
                 and k[0] - 2 * pads[0] == s[0] and (len(node.input) < 3 or not node.input[2] or node.input[2] in weights))
        found = phase_kernel(numpy_helper.to_array(weights[node.input[1]]), s[0], pads[0]) if plain else None
        if found is None:
            nodes.append(node)
            continue
        kernel, firsts = found
        stride, cout, lo, t = s[0], kernel.shape[0] // (s[0] * s[0]), min(firsts), kernel.shape[2]
        base = node.name or node.output[0]
        inputs = [node.input[0], f"{base}/phases/W"]
        g.initializer.append(numpy_helper.from_array(kernel, inputs[1]))
        if len(node.input) > 2 and node.input[2]:  # the bias, once per phase block
            g.initializer.append(numpy_helper.from_array(
                np.tile(numpy_helper.to_array(weights[node.input[2]]), stride * stride), f"{base}/phases/B"))
            inputs.append(f"{base}/phases/B")
        after = readers.get(node.output[0], [])
        relu = after[0] if (len(after) == 1 and after[0].op_type == "Relu" and after[0].name
                            and node.output[0] not in outputs) else None
        # window starts lo .. H - 1 (the last phase starts at offset 0 at most): H - lo positions
        nodes.append(helper.make_node("Conv", inputs, [f"{base}/phases"], name=f"{base}/Conv", kernel_shape=[t, t],
                                      pads=[-lo, -lo, t - 1, t - 1]))
        last = f"{base}/phases"
        if relu is not None:
            nodes.append(helper.make_node("Relu", [last], [f"{base}/phases_relu"], name=f"{base}/Relu"))
            last = f"{base}/phases_relu"
            moved.add(relu.name)
        parts = []
        for a, fa in enumerate(firsts):
            for b, fb in enumerate(firsts):
                block, name = a * stride + b, f"{base}/phase{a}{b}"
                # channels of its block; rows and columns from its first offset, H of them (ends
                # counted from the end: the shape is not needed; 0 from the end is 'to the end')
                start = [block * cout, fa - lo, fb - lo]
                stop = [(block + 1) * cout, fa or np.iinfo(np.int64).max, fb or np.iinfo(np.int64).max]
                for suffix, values in (("starts", start), ("ends", stop), ("axes", [1, 2, 3])):
                    g.initializer.append(numpy_helper.from_array(np.array(values, np.int64), f"{name}/{suffix}"))
                nodes.append(helper.make_node("Slice", [last, f"{name}/starts", f"{name}/ends", f"{name}/axes"],
                                              [f"{name}/Y"], name=f"{name}/Slice"))
                parts.append(f"{name}/Y")
        nodes.append(helper.make_node("Concat", parts, [f"{base}/interleave"], name=f"{base}/Concat", axis=1))
        nodes.append(helper.make_node("DepthToSpace", [f"{base}/interleave"], list((relu or node).output),
                                      name=f"{base}/DepthToSpace", blocksize=stride, mode="DCR"))
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    used = {n for node in g.node for n in node.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    return done


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over prepared images, one per call."""

    def __init__(self, name: str, images: list[np.ndarray]) -> None:
        self.name, self.images = name, images
        self.it: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.it, None)
        return None if x is None else {self.name: x[None]}


def map_error(fp32: Path, int8: Path, images: list[np.ndarray]) -> dict[str, float | int]:
    """The INT8 anomaly map against the fp32 source's on `images` (one at a time): max and mean
    |error| over the fp32 maps' range, and the largest change of an image score (the map's max)
    in the same unit. QuantizeError for a non-finite INT8 map."""
    a, b = ort.session(fp32, device="cpu"), ort.session(int8, device="cpu")
    ref = np.concatenate([a.run(["anomaly_map"], {"image": x[None]})[0] for x in images]).astype(np.float64)
    got = np.concatenate([b.run(["anomaly_map"], {"image": x[None]})[0] for x in images]).astype(np.float64)
    if not np.isfinite(got).all():
        raise QuantizeError(f"{int8}: the INT8 anomaly map has non-finite values")
    span = float(ref.max() - ref.min()) or 1.0
    err = np.abs(got - ref)
    scores = np.abs(got.reshape(len(got), -1).max(1) - ref.reshape(len(ref), -1).max(1))
    return {"images": len(images), "range": span, "max_over_range": float(err.max() / span),
            "mean_over_range": float(err.mean() / span), "score_max_over_range": float(scores.max() / span)}


def quantize(onnx_path: str | Path, calib_data: str | Path, out: str | Path, max_images: int = DEFAULT_MAX_IMAGES,
             method: str = "minmax", per_channel: bool = True, reduce_range: bool = False,
             keep_fp32: tuple[str, ...] = KEEP_FP32, verify_data: str | Path | None = None,
             outputs: list[str] | None = None) -> dict[str, Any]:
    """Quantize `onnx_path` (an fp32 graph with its sidecar) to `out` and write out's sidecar;
    `outputs`: only these of the source's (a line graph cut from a full one: the nodes nothing
    asked for are dropped, as export.onnx --outputs would not have exported them).
    Returns {onnx, sidecar, bytes, seconds, calibration, map_error}. Raises
    QuantizeError / SidecarError (one line naming the file)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    started = time.perf_counter()
    src, out = Path(onnx_path), Path(out)
    if src.resolve() == out.resolve():
        raise QuantizeError(f"{out}: the INT8 model must not replace its fp32 source")
    sidecar = read_sidecar(src, verify=True)
    if precision(sidecar) != "fp32":
        raise QuantizeError(f"{src}: already {precision(sidecar)}; quantize the fp32 graph it came from")
    names = [n for n in sidecar["outputs"] if outputs is None or n in outputs]  # the contract's order
    if outputs is not None and set(outputs) - set(names):
        raise QuantizeError(f"{src}: has no output {', '.join(sorted(set(outputs) - set(names)))} (it has "
                            f"{', '.join(sidecar['outputs'])})")
    if "anomaly_map" not in names:
        raise QuantizeError(f"{src}: the INT8 graph needs the anomaly_map output, to calibrate and compare it")
    check_sidecar_free(out)
    spec = InputSpec.from_mapping(sidecar["input"], sidecar.get("registration"), f"{sidecar_path(src)}")
    calib = calibration_images(calib_data, spec, max_images)
    check = calibration_images(verify_data, spec) if verify_data else calib
    source = onnx.load(str(src))
    with tempfile.TemporaryDirectory(prefix=".quantize_", dir=out.parent) as work:
        line, pre, convs, quantized = (Path(work) / n for n in ("line.onnx", "pre.onnx", "convs.onnx", "int8.onnx"))
        cut = onnx.utils.Extractor(source).extract_model([sidecar["input"].get("name", "image")], names)
        onnx.save(cut, str(line))
        quant_pre_process(str(line), str(pre))  # shapes, and BatchNorm folded into the convolutions
        model = onnx.load(str(pre))
        rewritten = conv_transpose_as_conv(model)
        onnx.save(model, str(convs))
        kept = [n.name for n in model.graph.node if n.name.startswith(tuple(keep_fp32))]
        quantize_static(str(convs), str(quantized), _Reader(sidecar["input"].get("name", "image"), calib.images),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=per_channel,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=kept, calibrate_method=getattr(CalibrationMethod, METHODS[method]))
        result = onnx.load(str(quantized))
        # the source's own description (export.onnx.read_metadata reads it), now of an INT8 graph
        meta = {p.key: p.value for p in source.metadata_props} | {
            "weights": "int8", "precision": "int8", "outputs": ",".join(names),
            "recon": str("recon_error" in names).lower(), "per_dim": str("alpha" in names).lower()}
        del result.metadata_props[:]
        onnx.helper.set_model_props(result, meta)
        onnx.checker.check_model(result)
        error = map_error(src, quantized, check.images)
        atomic_write(out, lambda tmp: onnx.save(result, tmp), suffix=".onnx")
    seconds = time.perf_counter() - started
    info = {k: copy.deepcopy(v) for k, v in sidecar.items()
            if k not in ("schema", "files", "thresholds", "created", "versions", "quantization")}
    checkpoint = sidecar["model"].get("checkpoint")
    if checkpoint:  # relative to the sidecar's folder
        info["model"]["checkpoint"] = relative_to(src.parent / checkpoint, out.parent)
    info["precision"] = "int8"
    info["outputs"] = names
    info["output_shapes"] = {k: v for k, v in (sidecar.get("output_shapes") or {}).items() if k in names}
    info["model"].update(recon="recon_error" in names, per_dim="alpha" in names)
    info["export"] = {**(info.get("export") or {}), "weights": "int8", "seconds": round(seconds, 2)}
    info["quantization"] = {
        "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "activations": "uint8",
        "weights": "int8", "per_channel": per_channel, "reduce_range": reduce_range, "method": method,
        "ops": list(QUANTIZED_OPS), "kept_fp32": list(keep_fp32), "conv_transpose_as_conv": rewritten,
        "source": {"file": relative_to(src, out.parent), "sha256": sidecar["files"][src.name]["sha256"]},
        "calibration": {"folder": str(calib.folder.resolve()), "images": len(calib.images), "skipped": calib.skipped,
                        "sha256": calib.sha256},
        "map_error": {**error, "data": str(check.folder.resolve())}}
    info["thresholds"] = {}  # never the fp32 model's: the INT8 scores shift, it is calibrated itself
    written = write_sidecar(out, info)
    return {"onnx": out, "sidecar": written, "bytes": out.stat().st_size, "seconds": seconds, "calibration": calib,
            "map_error": error}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.quantize", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="the fp32 graph (from export.onnx, its sidecar beside it)")
    p.add_argument("--calib-data", required=True,
                   help="good parts to calibrate on (a folder, searched recursively; e.g. the training images)")
    p.add_argument("--out", required=True, help="the INT8 graph (.onnx; its sidecar .yaml is written beside it)")
    p.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                   help=f"calibrate on at most this many images, the first in sorted order (default {DEFAULT_MAX_IMAGES})")
    p.add_argument("--method", choices=list(METHODS), default="minmax",
                   help="activation range calibration (default minmax: a min and max per tensor and image; the "
                        "histogram methods keep every intermediate tensor of every image in memory)")
    p.add_argument("--no-per-channel", dest="per_channel", action="store_false",
                   help="one weight scale per tensor instead of one per output channel")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: for x86 CPUs without VNNI, whose uint8 x int8 products can saturate")
    p.add_argument("--keep-fp32", nargs="*", default=list(KEEP_FP32), metavar="PREFIX",
                   help=f"node-name prefixes left in fp32 (default {' '.join(KEEP_FP32)})")
    p.add_argument("--outputs", help="only these outputs of the source, comma-separated (e.g. anomaly_map: the line "
                                     "graph of a full one, the nodes nothing asked for dropped); default: all of them")
    p.add_argument("--verify-data", help="images to measure the map error against fp32 on, all of them (default: the "
                                         "calibration images)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    require(p, onnx=args.onnx, calib_data=args.calib_data, verify_data=args.verify_data)
    if Path(args.out).suffix != ".onnx":
        p.error(f"--out must end with .onnx, not '{args.out}'")
    if args.max_images < 1:
        p.error("--max-images must be >= 1")
    for flag, folder in (("--calib-data", args.calib_data), ("--verify-data", args.verify_data)):
        if folder is not None and not any(is_image_name(f) for f in Path(folder).rglob("*")):
            p.error(f"{flag} {folder}: no image files in it (a folder of good parts is expected)")
    try:
        r = quantize(args.onnx, args.calib_data, args.out, args.max_images, args.method, args.per_channel,
                     args.reduce_range, tuple(args.keep_fp32), args.verify_data,
                     [n.strip() for n in args.outputs.split(",") if n.strip()] if args.outputs else None)
    except (QuantizeError, SidecarError, ValueError, OSError, onnx.checker.ValidationError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}", file=sys.stderr)
        return 1
    if not args.quiet:
        c, e = r["calibration"], r["map_error"]
        print(f"wrote {r['onnx']} ({r['bytes'] / 1e6:.1f} MB, int8, {r['seconds']:.1f} s) and {r['sidecar']}\n"
              f"calibrated on {len(c.images)} images of {c.folder} (skipped: {c.skipped['unreadable']} unreadable, "
              f"{c.skipped['registration_failed']} failed registration); anomaly_map vs fp32 on {e['images']} images: "
              f"max {e['max_over_range']:.2e}, mean {e['mean_over_range']:.2e} x range, image score "
              f"{e['score_max_over_range']:.2e} x range\n"
              f"no thresholds: calibrate it (python -m calibration.calibrate --engine {r['onnx']} --data DIR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["KEEP_FP32", "QuantizeError", "calibration_images", "conv_transpose_as_conv", "map_error", "phase_kernel", "phase_taps",
           "quantize", "main"]

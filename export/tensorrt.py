"""Build a TensorRT 10 engine from an exported ONNX graph.

(Over 400 lines on purpose: the graph check, the build and --verify are one command whose
parts share the ONNX reading and the sidecar rules; the engine runner itself is core.tensorrt.)

    python -m export.tensorrt --onnx screw.onnx --out screw.trt [--fp16] [--int8 --calib-data DIR]
        [--max-batch 8] [--opt-batch 1] [--workspace-gb 2] [--timing-cache FILE] [--verify N]
    python -m export.tensorrt --onnx screw.onnx --check-only      (no TensorRT needed)

Before TensorRT is imported, the graph is checked against what TensorRT 10's ONNX parser supports
(operator list and restrictions of onnx-tensorrt docs/operators.md; opsets 9..20, the range of
TensorRT 10.0, the oldest 10.x) and for static shapes except the batch. Then: Builder +
OnnxParser (every parser error printed), one optimization profile for the batch (min 1, opt,
max), FP16 with the attention's reductions and the score's cotangent (exp/div and the chain
through the logvar soft clamp) kept in fp32, a timing cache reused across builds, INT8 with an
entropy calibrator over a folder of images at a calibration profile of its own batch. The INT8
path is TensorRT's implicit quantization, deprecated since TensorRT 10.1; the replacement is
explicit Q/DQ quantization of the forward encoder only (not implemented). Written for the
TensorRT 10 API only (11 removes BuilderFlag.FP16/INT8 and int8_calibrator): other majors are
refused. The engine is written atomically and recorded in the sidecar (X.yaml beside X.trt;
shared with X.onnx when the stems match). TensorRT is imported lazily: without it, one
actionable line and exit 1.
Exit codes: 0 built (or check passed, or --verify within tolerance), 1 failure, 2 usage.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import shape_inference

from core import ort
from core.cli import require
from core.files import atomic_write
from core.prepare import InputSpec
from core.sidecar import (
    SidecarError,
    check_sidecar_free,
    file_entry,
    read_sidecar,
    sidecar_path,
    update_sidecar,
    write_sidecar,
)
from core.tensorrt import (
    CudaMemory,
    Engine,
    TensorRTError,
    api_mismatch,
    cuda_memory,
    import_tensorrt,
)
from export.check import load_images, output_scale
from export.onnx import load_onnx, onnx_opset, read_metadata, relative_to

# TensorRT 10.0's ONNX parser accepts opsets 9..20 (later 10.x accept more; 20 builds on all).
TRT_OPSET_RANGE = (9, 20)
# Operators marked supported ("Y") in onnx-tensorrt docs/operators.md for TensorRT 10.x.
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos
Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum
Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# Ops supported only in late 10.x parsers: refused, so an engine builds on every TensorRT 10.
TRT_LATE_OPS = frozenset({"Reciprocal", "Gelu", "GroupNormalization", "Mish", "RMSNormalization",
                          "RotaryEmbedding", "Attention", "TensorScatter", "DeformConv"})
RESIZE_COORD_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# ONNX node-name scopes (ExportModule's submodules) whose layers stay fp32 under --fp16/--int8:
# the score's cotangent (exp/div, the logvar soft clamp's 1 - (logvar/L)^2), the attention's
# GAP + channel sum and the anomaly map, where fp16 loses the small raw values thresholds are set
# on. Every reduce layer is kept fp32 as well.
FP32_SCOPES = ("/attention/", "/score_grad/", "/amap/")
# --verify's default bound on anomaly_map's max |err| / range against ONNX Runtime (fp32, CPU):
# TF32 and FP16 kernels round at ~1e-3, INT8 by its calibration. Starting points, not measured
# on hardware here: pass --verify-tol for a line's own tolerance.
VERIFY_TOL = {"fp32": 1e-2, "fp16": 5e-2, "int8": 2e-1, "int8+fp16": 2e-1}


@dataclass
class GraphReport:
    opset: int | None
    ops: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def check_graph(model: onnx.ModelProto | str | Path) -> GraphReport:
    """Can TensorRT 10 parse this graph with static shapes except the batch? Problems as lines."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    g = model.graph
    opset = onnx_opset(model)
    report = GraphReport(opset)
    if opset is None or not TRT_OPSET_RANGE[0] <= opset <= TRT_OPSET_RANGE[1]:
        report.problems.append(f"opset {opset} is outside TensorRT 10's {TRT_OPSET_RANGE[0]}..{TRT_OPSET_RANGE[1]}")
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    uint8_inputs = {i.name for i in g.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    for node in g.node:
        report.ops[node.op_type] = report.ops.get(node.op_type, 0) + 1
        where = f"{node.op_type} '{node.name}'"
        if node.domain not in ("", "ai.onnx"):
            report.problems.append(f"{where}: custom domain '{node.domain}' needs a TensorRT plugin")
        elif node.op_type not in TRT_SUPPORTED_OPS:
            report.problems.append(f"{where}: not supported by TensorRT's ONNX parser")
        elif node.op_type in TRT_LATE_OPS:
            report.problems.append(f"{where}: only parsed by late TensorRT 10.x releases")
        if node.op_type == "Resize":
            mode = _attr(node, "mode", "nearest")
            coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
            if mode not in ("nearest", "linear"):
                report.problems.append(f"{where}: mode '{mode}' (TensorRT: nearest, linear)")
            if coord not in RESIZE_COORD_MODES:
                report.problems.append(f"{where}: coordinate_transformation_mode '{coord}'")
            if mode == "nearest" and _attr(node, "nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST_MODES:
                report.problems.append(f"{where}: nearest_mode '{_attr(node, 'nearest_mode', '')}'")
            if _attr(node, "antialias", 0):
                report.problems.append(f"{where}: antialiasing is not supported")
        if (node.op_type.startswith("Reduce") or node.op_type in ("Squeeze", "Unsqueeze")) and len(node.input) > 1 \
                and node.input[1] and node.input[1] not in constants:
            report.problems.append(f"{where}: axes must be a build-time constant")
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            report.problems.append(f"{where}: the Indices output is not supported")
        for name in node.input:
            if name in uint8_inputs and node.op_type != "Cast":
                report.problems.append(f"{where}: reads uint8 input '{name}' (TensorRT: uint8 only into a Cast)")
    for out in g.output:
        if out.type.tensor_type.elem_type == onnx.TensorProto.UINT8:
            report.problems.append(f"output {out.name}: uint8 outputs are not supported here")
    report.problems.extend(_dynamic_dims(model))
    return report


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _dynamic_dims(model: onnx.ModelProto) -> list[str]:
    """Every tensor's dimensions after ONNX shape inference (with constant propagation): only the
    first (batch) may be symbolic, inputs and outputs must declare all the others."""
    problems = []
    g = model.graph
    for vi in list(g.input) + list(g.output):
        dims = _dims(vi)
        if not dims or any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
            problems.append(f"{'input' if vi in g.input else 'output'} {vi.name}: shape {dims} is not static except the batch")
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 - the inference error text is the useful part
        return problems + [f"ONNX shape inference failed: {str(e).splitlines()[0]}"]
    dynamic = [f"{vi.name} {_dims(vi)}" for vi in inferred.graph.value_info
               if vi.type.HasField("tensor_type") and any(not isinstance(d, int) for d in _dims(vi)[1:])]
    if dynamic:
        problems.append(f"{len(dynamic)} intermediate tensor(s) with a non-static non-batch dimension, "
                        f"e.g. {', '.join(dynamic[:3])}")
    return problems


def make_calibrator(trt: Any, images: np.ndarray, batch: int, cache: Path | None, memory: CudaMemory) -> Any:
    """An IInt8EntropyCalibrator2 feeding `images` in batches of `batch` (<= len(images)) from one
    CUDA buffer (core.tensorrt's memory, as the runner's)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batch = batch
            self.index = 0
            self.host = memory.host((self.batch, *images.shape[1:]), np.dtype(np.uint8))
            self.device = memory.device(self.host.nbytes)

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + self.batch > len(images):
                return None
            self.host[:] = images[self.index:self.index + self.batch]
            memory.to_device(self.device, self.host)
            memory.synchronize()
            self.index += self.batch
            return [self.device] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                atomic_write(cache, lambda tmp: Path(tmp).write_bytes(bytes(data)))

    return EntropyCalibrator()


def keep_fp32(trt: Any, network: Any) -> int:
    """Pin the precision-sensitive layers (see FP32_SCOPES) to fp32; returns how many."""
    floats = {trt.float32, trt.float16}
    kept = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not (layer.type == trt.LayerType.REDUCE or any(s in layer.name for s in FP32_SCOPES)):
            continue
        outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outs:  # shape arithmetic (int tensors) has no precision to pin
            continue
        layer.precision = trt.float32
        for j in outs:
            layer.set_output_type(j, trt.float32)
        kept += 1
    return kept


def build_engine(onnx_path: str | Path, out: str | Path, fp16: bool = False, int8: bool = False,
                 calib_data: str | Path | None = None, calib_batch: int = 8, calib_cache: str | Path | None = None,
                 max_batch: int = 8, opt_batch: int = 1, workspace_gb: float = 2.0,
                 timing_cache: str | Path | None = None, verbose: bool = False) -> dict[str, Any]:
    """Check the graph, build and write the engine atomically, record it in the sidecar."""
    onnx_path, out = Path(onnx_path), Path(out)
    sidecar = read_sidecar(onnx_path, verify=True)  # the ONNX must be the one its sidecar describes
    # resolved: `screw.onnx` and `$PWD/screw.trt` share screw.yaml, and a second sidecar written
    # there would drop the .onnx entry
    shared = out.resolve().with_suffix("") == onnx_path.resolve().with_suffix("")
    if not shared:
        check_sidecar_free(out)  # before the build: a frozen copy must not take another model's sidecar
    meta = read_metadata(onnx_path)
    report = check_graph(onnx_path)
    if not report.ok:
        raise TensorRTError(f"{onnx_path}: TensorRT 10 cannot build it: " + "; ".join(report.problems))
    shape = (meta["input_height"], meta["input_width"], meta["input_channels"])
    # read before TensorRT is involved: a wrong folder fails in a second, not after the parse; the
    # calibration images are prepared as inspection prepares them (registration included)
    spec = InputSpec.from_mapping(sidecar["input"], sidecar.get("registration"), str(sidecar_path(onnx_path)))
    images = load_images(calib_data, spec, limit=512) if int8 else None  # type: ignore[arg-type]
    trt = import_tensorrt()
    memory = cuda_memory()  # the GPU the engine is built for (and the INT8 calibration buffer)
    started = time.perf_counter()
    cache_path = Path(timing_cache) if timing_cache else None
    try:
        engine, config, precision, kept = _build(trt, onnx_path, shape, fp16, images, calib_batch,
                                                 Path(calib_cache) if calib_cache else None, max_batch, opt_batch,
                                                 workspace_gb, cache_path, verbose, memory)
        timing = bytes(memoryview(config.get_timing_cache().serialize())) if cache_path is not None else b""
    except (AttributeError, TypeError) as e:
        raise api_mismatch(e) from e
    finally:
        memory.close()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(memoryview(engine))

    atomic_write(out, write, suffix=out.suffix)
    if cache_path is not None:
        atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(timing))
    seconds = time.perf_counter() - started
    info = {"format": "tensorrt", "precision": precision, "trt": str(trt.__version__), "max_batch": max_batch,
            "opt_batch": opt_batch, "fp32_layers": kept, "device": memory.device_name,
            "source": {"file": onnx_path.name, "sha256": sidecar["files"][onnx_path.name]["sha256"]},
            "seconds": round(seconds, 1)}
    if shared:
        update_sidecar(onnx_path, files={out.name: file_entry(out, **info)})
        sidecar_file = onnx_path.with_suffix(".yaml")
    else:
        # a frozen copy: thresholds calibrated later into the ONNX's sidecar do not reach it
        derived = {k: v for k, v in sidecar.items() if k not in ("files", "schema", "created", "versions")}
        derived["files"] = {out.name: info}
        ckpt = derived.get("model", {}).get("checkpoint")
        if ckpt and not Path(ckpt).is_absolute():  # sidecar paths are relative to the sidecar
            derived["model"] = dict(derived["model"], checkpoint=relative_to(onnx_path.parent / ckpt, out.parent))
        sidecar_file = write_sidecar(out, derived)
    return {"engine": out, "sidecar": sidecar_file, "bytes": out.stat().st_size, "seconds": seconds,
            "precision": precision, "fp32_layers": kept, "graph": report}


def _build(trt: Any, onnx_path: Path, shape: tuple[int, int, int], fp16: bool, images: np.ndarray | None,
           calib_batch: int, calib_cache: Path | None, max_batch: int, opt_batch: int, workspace_gb: float,
           timing_cache: Path | None, verbose: bool, memory: CudaMemory) -> tuple[Any, Any, str, int]:
    """The TensorRT calls of build_engine: (serialized engine, builder config, precision, layers
    pinned to fp32). INT8 when `images` are given."""
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: always explicit batch, no flag needed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for e in errors:
            print(f"onnx parser: {e}", file=sys.stderr)
        raise TensorRTError(f"{onnx_path}: the ONNX parser failed ({len(errors)} error(s), printed above)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, *shape), (opt_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    precision, kept = "fp32", 0
    if fp16 or images is not None:
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        kept = keep_fp32(trt, network)
        # obey, not prefer: a silently fp16 attention would break the thresholds' meaning
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        precision = "fp16"
    if images is not None:
        batch = min(calib_batch, len(images))
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_calibrator(trt, images, batch, calib_cache, memory)
        # calibration runs at its profile's OPT shape: the batch get_batch feeds, not --opt-batch
        calib = builder.create_optimization_profile()
        calib.set_shape("image", (batch, *shape), (batch, *shape), (batch, *shape))
        config.set_calibration_profile(calib)
        precision = "int8+fp16" if fp16 else "int8"
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise TensorRTError(f"{onnx_path}: TensorRT could not build the engine (its messages are above)")
    return engine, config, precision, kept


def verify_engine(engine_path: str | Path, onnx_path: str | Path, n: int, tol: float,
                  seed: int = 0) -> tuple[list[str], bool]:
    """Compare the engine with ONNX Runtime (CPU) on n random images: one line per output
    (max |err| / range) and whether it passes: every output present and finite where ONNX Runtime's
    is, and anomaly_map (what thresholds apply to) within tol x its range. The other outputs are
    informational: their tolerances under TF32/FP16/INT8 depend on the GPU."""
    meta = read_metadata(onnx_path)
    img = np.random.default_rng(seed).integers(
        0, 256, (n, meta["input_height"], meta["input_width"], meta["input_channels"]), dtype=np.uint8)
    # core.tensorrt.Engine is the one engine runner (buffers, shapes, stream) the runtime's backend
    # adapts: verifying through it checks what the line will run
    ref = ort.run(ort.session(onnx_path, device="cpu"), img)
    try:
        engine = Engine(engine_path)
        try:
            got = engine.run(img)
        finally:
            engine.close()
    except (AttributeError, TypeError) as e:
        raise api_mismatch(e) from e
    except TensorRTError:
        raise
    except RuntimeError as e:  # the runner's and CUDA's
        raise TensorRTError(str(e).splitlines()[0] if str(e) else f"{engine_path}: {e.__class__.__name__}") from e
    missing = [name for name in ref if name not in got]
    if missing:
        raise TensorRTError(f"{engine_path}: engine has no output {', '.join(missing)} (the ONNX has "
                            f"{', '.join(ref)}); rebuild it from {Path(onnx_path).name}")
    lines, ok = [], True
    for name, r in ref.items():
        g = got[name]
        if g.shape != r.shape:
            lines.append(f"{name:<12} shape {list(g.shape)}, ONNX Runtime {list(r.shape)}  FAIL")
            ok = False
            continue
        err = np.abs(g.astype(np.float64) - r)
        rel = float(err.max()) / output_scale(r)[1] if err.size else 0.0
        finite = bool(np.isfinite(g[np.isfinite(r)]).all())
        passed = finite and (name != "anomaly_map" or rel <= tol)  # `rel <= tol` is False for NaN
        ok &= passed
        lines.append(f"{name:<12} max|err| {float(err.max()) if err.size else 0.0:.3g}  err/range {rel:.2e}"
                     + ("" if finite else "  non-finite") + ("" if passed else "  FAIL"))
    return lines, ok


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="exported model (.onnx with its .yaml sidecar)")
    p.add_argument("--out", help="engine file (.trt); required unless --check-only")
    p.add_argument("--check-only", action="store_true", help="only check ops and shapes (no TensorRT needed)")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels (attention reductions stay fp32)")
    p.add_argument("--int8", action="store_true",
                   help="INT8 with entropy calibration (needs --calib-data); implicit quantization, deprecated "
                        "since TensorRT 10.1 (the fix is explicit Q/DQ of the forward encoder, not implemented)")
    p.add_argument("--calib-data", help="folder of calibration images (normal parts, as at inspection)")
    p.add_argument("--calib-batch", type=int, default=8, help="calibration batch size (default 8)")
    p.add_argument("--calib-cache", help="calibration cache file (read if present, written after)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the engine accepts (default 8)")
    p.add_argument("--opt-batch", type=int, default=1, help="batch the kernels are tuned for (default 1)")
    p.add_argument("--workspace-gb", type=float, default=2.0, help="builder workspace in GiB (default 2)")
    p.add_argument("--timing-cache", help="timing cache file (read if present, updated after the build)")
    p.add_argument("--verify", type=int, default=0, metavar="N",
                   help="after building, compare the engine with ONNX Runtime on N random images; exit 1 "
                        "when an output is missing or non-finite or anomaly_map is off by more than --verify-tol")
    p.add_argument("--verify-tol", type=float, metavar="TOL",
                   help="anomaly_map's max |err| / range for --verify (default by precision: "
                        + ", ".join(f"{k} {v:g}" for k, v in VERIFY_TOL.items()) + ")")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    require(p, onnx=args.onnx, calib_data=args.calib_data)
    if not args.check_only and not args.out:
        p.error("--out is required (or use --check-only)")
    if args.out and Path(args.out).suffix not in (".trt", ".engine", ".plan"):
        p.error(f"--out must end with .trt (or .engine/.plan), not '{args.out}'")
    if args.int8 and not args.calib_data:
        p.error("--int8 needs --calib-data DIR (images of normal parts)")
    if args.calib_data and not args.int8:
        p.error("--calib-data is only used with --int8")
    if args.max_batch < 1 or not 1 <= args.opt_batch <= args.max_batch:
        p.error("need 1 <= --opt-batch <= --max-batch")
    if args.workspace_gb <= 0 or args.calib_batch < 1 or args.verify < 0:
        p.error("--workspace-gb and --calib-batch must be > 0, --verify >= 0")
    if args.verify_tol is not None and not (args.verify and args.verify_tol > 0):
        p.error("--verify-tol must be > 0 and goes with --verify N")
    try:
        if args.check_only:
            if not Path(args.onnx).is_file():
                raise TensorRTError(f"{args.onnx}: not found")
            report = check_graph(args.onnx)
            ops = ", ".join(f"{k} {v}" for k, v in sorted(report.ops.items()))
            print(f"{args.onnx}: opset {report.opset}; ops: {ops}")
            for line in report.problems:
                print(f"problem: {line}")
            print("TensorRT 10 check: " + ("ok (all ops supported, static shapes except the batch)"
                                           if report.ok else f"{len(report.problems)} problem(s)"))
            return 0 if report.ok else 1
        r = build_engine(args.onnx, args.out, args.fp16, args.int8, args.calib_data, args.calib_batch,
                         args.calib_cache, args.max_batch, args.opt_batch, args.workspace_gb, args.timing_cache,
                         args.verbose)
        print(f"wrote {r['engine']} ({r['bytes'] / 1e6:.1f} MB, {r['precision']}, {r['fp32_layers']} layers "
              f"pinned to fp32, batch 1..{args.max_batch}, {r['seconds']:.0f} s) and {r['sidecar']}")
        if args.verify:
            tol = args.verify_tol or VERIFY_TOL[r["precision"]]
            lines, ok = verify_engine(args.out, args.onnx, args.verify, tol)
            for line in lines:
                print(f"verify: {line}")
            if not ok:
                raise TensorRTError(f"{args.out}: verification against {args.onnx} under ONNX Runtime failed "
                                    f"(FAIL lines above; anomaly_map tolerance {tol:g} x range)")
    # ValueError covers ExportError (not an ONNX file, metadata) and ImageError (calibration folder)
    except (TensorRTError, SidecarError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

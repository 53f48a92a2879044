"""ONNX Runtime sessions, built one way for every caller (the runtime's backend, export.check,
export.tensorrt --verify and the benchmarks), so a parity check runs what deployment runs.

Session options aim at latency: full graph optimization, sequential execution (the graph is one
chain; parallel execution only adds scheduling overhead), one inter-op thread, intra-op threads =
`threads` (default: ONNX Runtime's, one per physical core), and no spin-waiting between ops unless
`spin`: spinning threads take the cores that decode and post-process beside them (and other
tenants'); on the 2-core CI machine, turning spinning off raised folder inspection from 5.5 to
7.7-9.5 images/s at batch 8 and the bare backend from 6.5-8.4 to 9.9-10.7 (docs/benchmarks.md).

Providers are tried in the order TensorRT EP, CUDA EP, CPU EP (whichever this build has);
`providers` overrides the list; the device (core.device) narrows it: `cpu` is the CPU provider
only, `cuda:N` the GPU of the CUDA and TensorRT providers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from core.device import parse_device

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
           "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


class OrtError(RuntimeError):
    """ONNX Runtime cannot give the session asked for; one line naming the model and the fix."""


def resolve_providers(requested: Sequence[str] | str | None, available: Sequence[str]) -> list[str]:
    """The provider list to use: `requested` (names or aliases tensorrt/trt/cuda/cpu, comma list
    allowed) checked against `available`, or the preferred order filtered by availability."""
    if requested is None or requested == "" or requested == []:
        chosen = [p for p in PREFERRED if p in available]
        return chosen or list(available)
    if isinstance(requested, str):
        requested = [r for r in requested.split(",") if r.strip()]
    chosen = []
    for r in requested:
        name = ALIASES.get(r.strip().lower(), r.strip())
        if name not in available:
            raise OrtError(f"ONNX Runtime provider '{r}' is not available in this build "
                           f"(available: {', '.join(available)}); install onnxruntime-gpu "
                           f"for CUDA/TensorRT or pick one of those")
        chosen.append(name)
    return chosen


def ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's exception types (Fail, InvalidArgument, EPFail...: plain Exceptions, and the
    set varies between versions) plus RuntimeError, which pybind11 raises for other C++ errors."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state  # noqa: PLC0415

    found = [o for o in vars(state).values() if isinstance(o, type) and issubclass(o, Exception)]
    return (RuntimeError, *found)


def provider_options(name: str, device_id: int = 0) -> dict[str, Any]:
    """Per-provider options: the TensorRT EP caches its engines under the user cache, never beside
    the model (the model folder may be read-only and is never modified)."""
    if name == "TensorrtExecutionProvider":
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vae-inspect" / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        return {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True}
    if name == "CUDAExecutionProvider":
        # Shapes are static except the batch: an exhaustive search pays off once per shape.
        return {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"}
    return {}


def session(path: str | Path, providers: Sequence[str] | str | None = None, device: str | None = None,
            threads: int | None = None, spin: bool = False) -> Any:
    """An onnxruntime.InferenceSession for `path` with this project's options.

    Raises OrtError (one line naming the file) when ONNX Runtime is missing, a provider or the
    device cannot be had, or the model does not load; ValueError for a device typo.
    """
    try:
        import onnxruntime as ort  # noqa: PLC0415 - a declared dependency; imported where used
    except ImportError as e:  # pragma: no cover
        raise OrtError("ONNX Runtime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from e
    dev = parse_device(device)
    available = ort.get_available_providers()
    if dev.kind == "cuda" and not GPU_PROVIDERS & set(available):
        raise OrtError(f"--device {dev}: this ONNX Runtime build has no CUDA or TensorRT provider "
                       f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu")
    chosen = resolve_providers(providers or ("cpu" if dev.kind == "cpu" else None), available)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    try:
        return ort.InferenceSession(str(path), sess_options=so,
                                    providers=[(p, provider_options(p, dev.gpu)) for p in chosen])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise OrtError(f"{path}: ONNX Runtime cannot load the model ({str(e)[:300]})") from e


def run(sess: Any, image: Any) -> dict[str, Any]:
    """All outputs of a session by name for one input batch."""
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: image})))

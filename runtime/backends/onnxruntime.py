"""ONNX Runtime backend for `.onnx` models.

Providers are tried in the order TensorRT EP, CUDA EP, CPU EP (whichever this onnxruntime build
has); `providers` overrides the list. Session options aim at latency: full graph optimization,
sequential execution (the graph is one chain; parallel execution only adds scheduling overhead),
one inter-op thread, intra-op threads = `threads` (default: ONNX Runtime's, i.e. one per
physical core), and no spin-waiting between ops unless `spin` (see below).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.backends import BackendError, BackendUnavailable, inference_failed

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
           "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


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
            raise BackendUnavailable(f"ONNX Runtime provider '{r}' is not available in this build "
                                     f"(available: {', '.join(available)}); install onnxruntime-gpu "
                                     f"for CUDA/TensorRT or pick one of those")
        chosen.append(name)
    return chosen


def ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's exception types (Fail, InvalidArgument, EPFail...: plain Exceptions, and the
    set varies between versions) plus RuntimeError, which pybind11 raises for other C++ errors."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    found = [o for o in vars(state).values() if isinstance(o, type) and issubclass(o, Exception)]
    return (RuntimeError, *found)


def device_choice(device: str | None) -> tuple[str | None, int]:
    """`--device` for ONNX Runtime: (providers it implies, GPU index). 'cpu' means the CPU
    provider only; 'cuda' / 'cuda:N' picks the GPU of the CUDA and TensorRT providers."""
    if device is None or device in ("", "auto"):
        return None, 0
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return "cpu", 0
    if kind == "cuda" and (not index or index.isdigit()):
        return None, int(index or 0)
    raise ValueError(f"--device {device!r}: choose cpu, cuda or cuda:N")


def provider_options(name: str, model_path: Path, device_id: int = 0) -> dict[str, Any]:
    """Per-provider options: the TensorRT EP caches its engines beside the user cache, not beside
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


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: Sequence[str] | str | None = None,
                 threads: int | None = None, spin: bool = False, device: str | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise BackendUnavailable("ONNX Runtime is not installed: pip install onnxruntime "
                                     "(or onnxruntime-gpu)") from e
        self.path = Path(path)
        implied, device_id = device_choice(device)
        available = ort.get_available_providers()
        if device and device.startswith("cuda") and not {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(available):
            raise BackendUnavailable(f"--device {device}: this ONNX Runtime build has no CUDA or TensorRT provider "
                                     f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu")
        chosen = resolve_providers(providers or implied, available)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if threads:
            so.intra_op_num_threads = int(threads)
        # Idle intra-op threads spin by default; here they would steal the cores that decode and
        # post-process beside them (and other tenants'): on the 2-core CI machine, turning spinning
        # off raised folder inspection from 5.5 to 7.7-9.5 images/s at batch 8 and the bare backend
        # from 6.5-8.4 to 9.9-10.7 (docs/benchmarks.md, "Inspection"). spin=True for dedicated cores.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.log_severity_level = 3  # warnings about unused initializers etc. are noise here
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=so,
                providers=[(p, provider_options(p, self.path, device_id)) for p in chosen])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendError(f"{self.path}: ONNX Runtime cannot load the model ({str(e)[:300]})") from e
        self.errors = ort_errors()
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{self.path}: expected one input 'image', found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        batch = inputs[0].shape[0]
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.input_shape = tuple(inputs[0].shape[1:])  # (H, W, C) as the graph declares them
        self.providers = self.session.get_providers()
        self.version = ort.__version__
        self.threads = threads

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        n = len(image)
        if self.max_batch is not None and n < self.max_batch:
            # a graph exported with a fixed batch takes exactly that many images (a folder's last
            # batch is usually short): pad with copies of the last image and drop their outputs
            image = np.concatenate([image, np.repeat(image[-1:], self.max_batch - n, axis=0)])
        try:
            outs = self.session.run(None, {self.input_name: np.ascontiguousarray(image)})
        except self.errors as e:
            raise inference_failed(self.path, e) from e
        return {name: out[:n] for name, out in zip(self.output_names, outs)}

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "providers": list(self.providers), "threads": self.threads,
                "onnxruntime": self.version}

"""TensorRT 10 backend for serialized engines (`.trt`, `.engine`, `.plan`).

TensorRT 10 API only (name-based I/O): the engine is deserialized once, one execution context
runs every batch, `set_input_shape` is called only when the batch size changes, device buffers
(torch.cuda) and pinned host buffers are allocated once for the profile's largest batch and their
addresses bound once with `set_tensor_address`; `execute_async_v3` runs on one CUDA stream, with
the host<->device copies queued on the same stream and one synchronize per batch.

`EngineRunner` holds all buffer and shape logic and talks to the engine and context only through
the TensorRT methods named above, so tests drive it with a fake engine on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from runtime.backends import BackendError, BackendUnavailable, inference_failed

@dataclass(frozen=True)
class IOTensor:
    name: str
    is_input: bool
    shape: tuple[int, ...]  # the engine's shape, -1 where dynamic
    dtype: np.dtype


def describe_io(engine: Any, is_input: Callable[[Any], bool], nptype: Callable[[Any], Any]) -> list[IOTensor]:
    """The engine's I/O tensors in engine order (num_io_tensors, get_tensor_name/mode/shape/dtype)."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out.append(IOTensor(name, bool(is_input(engine.get_tensor_mode(name))),
                            tuple(int(d) for d in engine.get_tensor_shape(name)),
                            np.dtype(nptype(engine.get_tensor_dtype(name)))))
    return out


def batch_range(engine: Any, tensor: IOTensor, profile: int = 0) -> tuple[int, int]:
    """(min, max) batch of the input: fixed when static, else optimization profile 0's range."""
    if tensor.shape[0] > 0:
        return tensor.shape[0], tensor.shape[0]
    lo, _opt, hi = engine.get_tensor_profile_shape(tensor.name, profile)
    return int(lo[0]), int(hi[0])


def buffer_shape(tensor: IOTensor, batch: int, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The shape of `tensor` at a given batch. Only the batch may be dynamic (the export contract:
    static H, W, C); anything else is refused up front rather than failing inside TensorRT."""
    dims = list(tensor.shape)
    if dims[0] < 0:
        dims[0] = batch
    if any(d < 0 for d in dims[1:]):
        raise RuntimeError(f"TensorRT engine tensor '{tensor.name}' has dynamic non-batch dims {tensor.shape}; "
                           f"the export contract allows only a dynamic batch (rebuild with python -m export.tensorrt)")
    return tuple(dims)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class EngineRunner:
    """Buffers, shapes and execution for one engine + one context.

    allocate(shape, torch_dtype, where) -> torch.Tensor, where in {"device", "host"}: the real
    backend gives CUDA tensors and pinned CPU tensors; tests give CPU tensors.
    stream: an object with `.cuda_stream` (int handle) and `synchronize()`.
    """

    def __init__(self, engine: Any, context: Any, tensors: list[IOTensor], max_batch: int, min_batch: int,
                 allocate: Callable[[tuple[int, ...], torch.dtype, str], torch.Tensor], stream: Any) -> None:
        inputs = [t for t in tensors if t.is_input]
        if len(inputs) != 1:
            raise RuntimeError(f"TensorRT engine: expected one input 'image', found {[t.name for t in inputs]}")
        self.engine, self.context, self.stream = engine, context, stream
        self.input = inputs[0]
        self.outputs = [t for t in tensors if not t.is_input]
        self.max_batch, self.min_batch = int(max_batch), int(min_batch)
        self.device: dict[str, torch.Tensor] = {}
        self.host: dict[str, torch.Tensor] = {}
        # Allocated once for the largest batch: a smaller batch uses the leading rows of the same
        # buffers (row-major, batch first), so the bound addresses never change.
        for t in tensors:
            shape = buffer_shape(t, self.max_batch)
            self.device[t.name] = allocate(shape, _torch_dtype(t.dtype), "device")
            self.host[t.name] = allocate(shape, _torch_dtype(t.dtype), "host")
            if not context.set_tensor_address(t.name, int(self.device[t.name].data_ptr())):
                raise RuntimeError(f"TensorRT: set_tensor_address failed for '{t.name}'")
        self._bound_batch: int | None = None

    def _set_batch(self, n: int) -> None:
        if n == self._bound_batch:
            return
        shape = buffer_shape(self.input, n)
        if not self.context.set_input_shape(self.input.name, shape):
            raise RuntimeError(f"TensorRT: set_input_shape({self.input.name}, {shape}) rejected "
                               f"(profile batch range {self.min_batch}..{self.max_batch})")
        for t in self.outputs:
            got = tuple(int(d) for d in self.context.get_tensor_shape(t.name))
            if got != buffer_shape(t, n):
                raise RuntimeError(f"TensorRT: output '{t.name}' has shape {got} at batch {n}, "
                                   f"expected {buffer_shape(t, n)}")
        self._bound_batch = n

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Run any number of images in chunks of at most max_batch; returns fresh arrays (the
        buffers are reused by the next call)."""
        n_total = int(image.shape[0])
        if n_total == 0:
            raise ValueError("empty batch")
        parts: dict[str, list[np.ndarray]] = {t.name: [] for t in self.outputs}
        for lo in range(0, n_total, self.max_batch):
            chunk = image[lo:lo + self.max_batch]
            n = int(chunk.shape[0])
            pad = max(0, self.min_batch - n)  # a profile with min > n: pad, then drop the padding
            rows = n + pad
            self._set_batch(rows)
            host_in = self.host[self.input.name][:rows]
            host_in.numpy()[:n] = chunk.astype(self.input.dtype, copy=False)
            if pad:
                host_in.numpy()[n:] = 0
            self.device[self.input.name][:rows].copy_(host_in, non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT: execute_async_v3 failed (see the TensorRT log above)")
            for t in self.outputs:
                self.host[t.name][:rows].copy_(self.device[t.name][:rows], non_blocking=True)
            self.stream.synchronize()
            for t in self.outputs:
                parts[t.name].append(self.host[t.name][:n].numpy().copy())
        return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}


def import_tensorrt() -> Any:
    """The tensorrt module (TensorRT 10.x), or BackendUnavailable with export.tensorrt's one-line fix
    (one definition of the lazy import and the version rule for the builder and the runtime)."""
    from export.tensorrt import TensorRTError
    from export.tensorrt import import_tensorrt as _import

    try:
        return _import()
    except TensorRTError as e:
        raise BackendUnavailable(str(e)) from None


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, path: str | Path, device: str | int | None = None) -> None:
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT backend needs a CUDA GPU and none is visible "
                                     "(torch.cuda.is_available() is False); run the .onnx model with "
                                     "--backend onnxruntime instead")
        self.path = Path(path)
        dev = torch.device("cuda" if device in (None, "auto", "cuda") else
                           (f"cuda:{device}" if isinstance(device, int) else device))
        if dev.type != "cuda":
            raise BackendUnavailable(f"TensorRT backend runs on a CUDA device, not '{device}'")
        torch.cuda.set_device(dev)
        try:  # the engine's and the runner's failures become one BackendError line naming the file
            self._load(trt, dev)
        except BackendError:
            raise
        except (RuntimeError, OSError) as e:
            raise BackendError(f"{self.path}: cannot load the TensorRT engine ({e.__class__.__name__}: "
                               f"{(str(e).strip().splitlines() or [''])[0][:300]})") from e

    def _load(self, trt: Any, dev: torch.device) -> None:
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise BackendError(f"{self.path}: TensorRT could not deserialize the engine (built by another "
                               f"TensorRT version or for another GPU?); rebuild it with python -m export.tensorrt")
        self.engine = engine
        self.context = engine.create_execution_context()
        tensors = describe_io(engine, lambda m: m == trt.TensorIOMode.INPUT, trt.nptype)
        inp = next((t for t in tensors if t.is_input), None)
        if inp is None:
            raise BackendError(f"{self.path}: the engine has no input tensor; not an engine of this project")
        lo, hi = batch_range(engine, inp)
        self.stream = torch.cuda.Stream(device=dev)

        def allocate(shape: tuple[int, ...], dtype: torch.dtype, where: str) -> torch.Tensor:
            if where == "device":
                return torch.empty(shape, dtype=dtype, device=dev)
            return torch.empty(shape, dtype=dtype, pin_memory=True)

        self.runner = EngineRunner(engine, self.context, tensors, hi, lo, allocate, self.stream)
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape[1:])  # (H, W, C) as the engine declares them
        self.output_names = tuple(t.name for t in self.runner.outputs)
        self.max_batch = hi
        self.device = dev
        self.trt_version = trt.__version__

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        # The runner's copies are queued on the current stream: make it the engine's stream so that
        # copy-in, execute_async_v3 and copy-out are ordered without extra synchronization.
        try:
            with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
                return self.runner.run(image)
        except RuntimeError as e:  # the runner's and torch.cuda's (copies, out of memory)
            raise inference_failed(self.path, e) from e

    def close(self) -> None:
        self.runner = None  # type: ignore[assignment]
        self.context = None
        self.engine = None

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "device": torch.cuda.get_device_name(self.device),
                "tensorrt": self.trt_version, "max_batch": self.max_batch}

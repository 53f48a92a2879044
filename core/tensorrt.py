"""TensorRT 10 at run time, without PyTorch: the lazy import, the engine runner and its CUDA memory.

One engine runner for the project: the runtime's TensorRT backend adapts `Engine` to the backend
interface, and export.tensorrt --verify runs a freshly built engine through the very same code.

TensorRT 10 API only (name-based I/O): the engine is deserialized once, one execution context
runs every batch, `set_input_shape` is called only when the batch size changes, device buffers and
pinned host buffers are allocated once for the profile's largest batch and bound once with
`set_tensor_address`; `execute_async_v3` runs on one CUDA stream with the host<->device copies
queued on the same stream and one synchronize per batch.

CUDA memory comes from cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`), which is
what NVIDIA's own TensorRT samples use, so an edge box with TensorRT and no PyTorch runs engines;
where only PyTorch is there, its CUDA allocator is used instead. `EngineRunner` touches the engine,
the context and the memory only through the methods named above, so tests drive it with fakes on
the CPU.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

INSTALL_HINT = ("on the machine with the NVIDIA GPU run `pip install tensorrt==10.* cuda-python` (TensorRT 10, "
                "CUDA 12), or deploy the .onnx with ONNX Runtime instead")


class TensorRTError(RuntimeError):
    """TensorRT (or the CUDA memory it needs) is missing or unusable; one line that says what to do."""


def import_tensorrt() -> Any:
    """The tensorrt module (10.x), or TensorRTError with the one line that says what to do."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - lazy: most machines (and CI) have no TensorRT
    except ImportError as e:
        raise TensorRTError(f"TensorRT is not installed ({e}); {INSTALL_HINT}") from None
    version = str(getattr(trt, "__version__", "unknown"))
    if version.split(".")[0] != "10":
        # 11 removes BuilderFlag.FP16/INT8 and int8_calibrator; before 10, set_input_shape and
        # execute_async_v3 do not exist
        raise TensorRTError(f"TensorRT {version} found; this needs TensorRT 10 (the builder and runner are "
                            f"written for the 10.x API): `pip install tensorrt==10.*`")
    return trt


def api_mismatch(error: Exception) -> TensorRTError:
    """The one line for an AttributeError/TypeError out of the tensorrt module: an API this code
    does not know (a patched or mislabelled install), not a bug to show as a traceback."""
    detail = str(error).splitlines()[0] if str(error) else ""
    return TensorRTError(f"the installed TensorRT does not have the TensorRT 10 API this code uses "
                         f"({error.__class__.__name__}{': ' + detail if detail else ''}); "
                         f"install TensorRT 10: `pip install tensorrt==10.*`")


# ----------------------------------------------------------------------------- CUDA memory

class CudaMemory(Protocol):
    """What the runner needs from CUDA: pinned host arrays, device pointers, async copies on one
    stream. `stream` is the integer handle execute_async_v3 takes."""
    stream: int
    device_name: str

    def host(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...
    def device(self, nbytes: int) -> int: ...
    def to_device(self, dst: int, src: np.ndarray) -> None: ...
    def to_host(self, dst: np.ndarray, src: int) -> None: ...
    def synchronize(self) -> None: ...
    def close(self) -> None: ...


class CudaPythonMemory:
    """cuda-python's runtime API (torch-free): cudaMallocHost / cudaMalloc / cudaMemcpyAsync."""

    def __init__(self, gpu: int = 0) -> None:
        try:
            from cuda.bindings import runtime as cudart  # noqa: PLC0415 - cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # noqa: PLC0415 - older cuda-python; ImportError goes to the caller
        self.rt = cudart
        self._call(cudart.cudaSetDevice(gpu))
        self.stream = int(self._call(cudart.cudaStreamCreate()))
        props = self._call(cudart.cudaGetDeviceProperties(gpu))
        self.device_name = bytes(props.name).split(b"\0")[0].decode(errors="replace") or f"cuda:{gpu}"
        self._host: list[int] = []
        self._device: list[int] = []

    def _call(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {int(err)} ({getattr(err, 'name', err)})")
        return rest[0] if len(rest) == 1 else (rest or None)

    def host(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        ptr = int(self._call(self.rt.cudaMallocHost(n)))
        self._host.append(ptr)
        return np.frombuffer((ctypes.c_byte * n).from_address(ptr), dtype=dtype).reshape(shape)

    def device(self, nbytes: int) -> int:
        ptr = int(self._call(self.rt.cudaMalloc(nbytes)))
        self._device.append(ptr)
        return ptr

    def to_device(self, dst: int, src: np.ndarray) -> None:
        self._call(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def to_host(self, dst: np.ndarray, src: int) -> None:
        self._call(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def synchronize(self) -> None:
        self._call(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for ptr in self._device:
            self.rt.cudaFree(ptr)
        for ptr in self._host:
            self.rt.cudaFreeHost(ptr)
        self._device, self._host = [], []
        if self.stream:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = 0


class TorchCudaMemory:
    """PyTorch's CUDA allocator, for a machine that has PyTorch but not cuda-python."""

    def __init__(self, gpu: int = 0) -> None:
        import torch  # noqa: PLC0415 - only where cuda-python is missing

        if not torch.cuda.is_available():
            raise TensorRTError("TensorRT needs a CUDA GPU and none is visible; run the .onnx model with "
                                "--backend onnxruntime instead")
        self.torch = torch
        self.dev = torch.device("cuda", gpu)
        torch.cuda.set_device(self.dev)
        self._stream = torch.cuda.Stream(device=self.dev)
        self.stream = int(self._stream.cuda_stream)
        self.device_name = torch.cuda.get_device_name(self.dev)
        self._keep: list[Any] = []
        self._device: dict[int, Any] = {}

    def host(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        t = self.torch.from_numpy(np.empty(0, dtype=dtype))
        pinned = self.torch.empty(shape, dtype=t.dtype, pin_memory=True)
        self._keep.append(pinned)
        return pinned.numpy()

    def device(self, nbytes: int) -> int:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.dev)
        self._device[int(t.data_ptr())] = t
        return int(t.data_ptr())

    def _bytes(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(a.reshape(-1).view(np.uint8))

    def to_device(self, dst: int, src: np.ndarray) -> None:
        with self.torch.cuda.stream(self._stream):
            self._device[dst][:src.nbytes].copy_(self._bytes(src), non_blocking=True)

    def to_host(self, dst: np.ndarray, src: int) -> None:
        with self.torch.cuda.stream(self._stream):
            self._bytes(dst).copy_(self._device[src][:dst.nbytes], non_blocking=True)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        self._keep, self._device = [], {}


def cuda_memory(gpu: int = 0) -> CudaMemory:
    """cuda-python's memory (torch-free), else PyTorch's, else TensorRTError with the fix."""
    try:
        return CudaPythonMemory(gpu)
    except ImportError:
        pass
    except RuntimeError as e:
        raise TensorRTError(f"CUDA is not usable for TensorRT on GPU {gpu} ({e}); run the .onnx model with "
                            "--backend onnxruntime instead") from None
    try:
        return TorchCudaMemory(gpu)
    except ImportError:
        raise TensorRTError("TensorRT needs CUDA memory from cuda-python: `pip install cuda-python` "
                            "(or PyTorch with CUDA)") from None


# ----------------------------------------------------------------------------- the runner

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


def buffer_shape(tensor: IOTensor, batch: int) -> tuple[int, ...]:
    """The shape of `tensor` at a given batch. Only the batch may be dynamic (the export contract:
    static H, W, C); anything else is refused up front rather than failing inside TensorRT."""
    dims = list(tensor.shape)
    if dims[0] < 0:
        dims[0] = batch
    if any(d < 0 for d in dims[1:]):
        raise RuntimeError(f"TensorRT engine tensor '{tensor.name}' has dynamic non-batch dims {tensor.shape}; "
                           f"the export contract allows only a dynamic batch (rebuild with python -m export.tensorrt)")
    return tuple(dims)


class EngineRunner:
    """Buffers, shapes and execution for one engine + one context on one CudaMemory."""

    def __init__(self, engine: Any, context: Any, tensors: list[IOTensor], max_batch: int, min_batch: int,
                 memory: CudaMemory) -> None:
        inputs = [t for t in tensors if t.is_input]
        if len(inputs) != 1:
            raise RuntimeError(f"TensorRT engine: expected one input 'image', found {[t.name for t in inputs]}")
        self.engine, self.context, self.memory = engine, context, memory
        self.input = inputs[0]
        self.outputs = [t for t in tensors if not t.is_input]
        self.max_batch, self.min_batch = int(max_batch), int(min_batch)
        self.device: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        # Allocated once for the largest batch: a smaller batch uses the leading rows of the same
        # buffers (row-major, batch first), so the bound addresses never change.
        for t in tensors:
            shape = buffer_shape(t, self.max_batch)
            self.host[t.name] = memory.host(shape, t.dtype)
            self.device[t.name] = memory.device(self.host[t.name].nbytes)
            if not context.set_tensor_address(t.name, self.device[t.name]):
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
            host_in[:n] = chunk.astype(self.input.dtype, copy=False)
            host_in[n:] = 0
            self.memory.to_device(self.device[self.input.name], host_in)
            if not self.context.execute_async_v3(self.memory.stream):
                raise RuntimeError("TensorRT: execute_async_v3 failed (see the TensorRT log above)")
            for t in self.outputs:
                self.memory.to_host(self.host[t.name][:rows], self.device[t.name])
            self.memory.synchronize()
            for t in self.outputs:
                parts[t.name].append(self.host[t.name][:n].copy())
        return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}


class Engine:
    """A serialized engine file, deserialized once, with its runner on one GPU.

        engine = Engine("screw.trt")          # TensorRTError: no TensorRT / CUDA / bad file
        outputs = engine.run(images)          # uint8 [N, H, W, C] -> {name: array}
    """

    def __init__(self, path: str | Path, gpu: int = 0) -> None:
        self.path = Path(path)
        trt = import_tensorrt()
        self.memory = cuda_memory(gpu)
        try:
            self.logger = trt.Logger(trt.Logger.WARNING)
            self.runtime = trt.Runtime(self.logger)
            engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if engine is None:
                raise TensorRTError(f"{self.path}: TensorRT could not deserialize the engine (built by another "
                                    f"TensorRT version or for another GPU?); rebuild it with python -m export.tensorrt")
            self.engine = engine
            self.context = engine.create_execution_context()
            tensors = describe_io(engine, lambda m: m == trt.TensorIOMode.INPUT, trt.nptype)
            inp = next((t for t in tensors if t.is_input), None)
            if inp is None:
                raise TensorRTError(f"{self.path}: the engine has no input tensor; not an engine of this project")
            lo, hi = batch_range(engine, inp)
            self.runner = EngineRunner(engine, self.context, tensors, hi, lo, self.memory)
        except (AttributeError, TypeError) as e:
            self.memory.close()
            raise api_mismatch(e) from e
        except (RuntimeError, OSError) as e:
            self.memory.close()
            if isinstance(e, TensorRTError):
                raise
            raise TensorRTError(f"{self.path}: cannot load the TensorRT engine ({e.__class__.__name__}: "
                                f"{(str(e).strip().splitlines() or [''])[0][:300]})") from e
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape[1:])  # (H, W, C) as the engine declares them
        self.output_names = tuple(t.name for t in self.runner.outputs)
        self.min_batch, self.max_batch = lo, hi
        self.version = str(trt.__version__)

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.run(image)

    def close(self) -> None:
        self.runner = None  # type: ignore[assignment]
        self.context = None
        self.engine = None
        self.memory.close()

"""TensorRT without TensorRT or a GPU: core.tensorrt's runner (buffers, shapes, stream) against a
fake engine and fake CUDA memory, and the runtime backend's promised one-line errors."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from core import tensorrt as rt
from runtime.backends import BackendError, BackendUnavailable
from runtime.backends.tensorrt import TensorRTBackend

H, W, C = 6, 5, 1


class FakeEngine:
    """The TensorRT 10 ICudaEngine methods the runner uses; batch dynamic in profile [lo, hi]."""

    def __init__(self, lo: int = 1, opt: int = 4, hi: int = 8, static_batch: int | None = None) -> None:
        b = static_batch or -1
        self.tensors = {
            "image": ("in", (b, H, W, C), np.uint8),
            "anomaly_map": ("out", (b, 1, H, W), np.float32),
            "mu": ("out", (b, 3), np.float32),
        }
        self.profile = ((lo, H, W, C), (opt, H, W, C), (hi, H, W, C))
        self.profile_calls = 0

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_mode(self, name: str) -> str:
        return self.tensors[name][0]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def get_tensor_dtype(self, name: str) -> type:
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        assert name == "image" and profile == 0
        self.profile_calls += 1
        return self.profile


class FakeContext:
    """Computes anomaly_map = image / 255 and mu = per-image mean, 3 times, reading and writing
    the bound buffers through their addresses, like TensorRT does."""

    def __init__(self, engine: FakeEngine, registry: dict[int, np.ndarray]) -> None:
        self.engine, self.registry = engine, registry
        self.addresses: dict[str, int] = {}
        self.batch: int | None = None
        self.shape_calls: list[tuple[int, ...]] = []
        self.executions = 0

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        assert name not in self.addresses, "addresses are bound once"
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape_calls.append(tuple(shape))
        lo, hi = self.engine.profile[0][0], self.engine.profile[2][0]
        if not lo <= shape[0] <= hi:
            return False
        self.batch = shape[0]
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.batch if d == -1 else d for d in self.engine.tensors[name][1])

    def _view(self, name: str) -> np.ndarray:
        shape = self.get_tensor_shape(name)
        dtype = self.engine.tensors[name][2]
        flat = self.registry[self.addresses[name]].view(dtype)
        return flat[:int(np.prod(shape))].reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert stream_handle == FakeMemory.stream
        self.executions += 1
        img = self._view("image").astype(np.float32)
        self._view("anomaly_map")[:] = img.transpose(0, 3, 1, 2) / 255.0
        self._view("mu")[:] = img.mean(axis=(1, 2, 3))[:, None]
        return True


class FakeMemory:
    """core.tensorrt.CudaMemory on the CPU: 'device' buffers are byte arrays found by address,
    as the fake context finds them; copies and allocations are recorded."""
    stream = 1234
    device_name = "fake GPU"

    def __init__(self) -> None:
        self.registry: dict[int, np.ndarray] = {}
        self.allocations: list[tuple] = []
        self.syncs = 0
        self.closed = False

    def host(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        self.allocations.append((tuple(shape), np.dtype(dtype), "host"))
        return np.zeros(shape, dtype)

    def device(self, nbytes: int) -> int:
        buf = np.zeros(nbytes, np.uint8)
        self.registry[buf.ctypes.data] = buf
        self.allocations.append((nbytes, np.dtype(np.uint8), "device"))
        return buf.ctypes.data

    def to_device(self, dst: int, src: np.ndarray) -> None:
        self.registry[dst][:src.nbytes] = np.ascontiguousarray(src).reshape(-1).view(np.uint8)

    def to_host(self, dst: np.ndarray, src: int) -> None:
        dst.reshape(-1).view(np.uint8)[:] = self.registry[src][:dst.nbytes]

    def synchronize(self) -> None:
        self.syncs += 1

    def close(self) -> None:
        self.closed = True


def make_runner(**engine_kw: int) -> tuple[rt.EngineRunner, FakeContext, list, FakeMemory]:
    engine = FakeEngine(**engine_kw)
    memory = FakeMemory()
    ctx = FakeContext(engine, memory.registry)
    tensors = rt.describe_io(engine, lambda m: m == "in", lambda d: d)
    lo, hi = rt.batch_range(engine, next(t for t in tensors if t.is_input))
    return rt.EngineRunner(engine, ctx, tensors, hi, lo, memory), ctx, memory.allocations, memory


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, C), dtype=np.uint8)


def expected(x: np.ndarray) -> dict[str, np.ndarray]:
    f = x.astype(np.float32)
    return {"anomaly_map": f.transpose(0, 3, 1, 2) / 255.0,
            "mu": np.repeat(f.mean(axis=(1, 2, 3))[:, None], 3, axis=1)}


def test_buffers_allocated_once_for_max_batch_and_shapes_set_on_change() -> None:
    runner, ctx, allocations, stream = make_runner()
    # one device + one host buffer per tensor, at the profile's max batch (8)
    assert len(allocations) == 6
    assert {a[2] for a in allocations} == {"device", "host"}
    assert all(a[0][0] == 8 for a in allocations if a[2] == "host")
    assert sorted(a[0] for a in allocations if a[2] == "device") == sorted(
        int(np.prod(a[0])) * a[1].itemsize for a in allocations if a[2] == "host")
    assert set(ctx.addresses) == {"image", "anomaly_map", "mu"}
    for n in (3, 3, 8, 5):
        x = images(n, seed=n)
        out = runner.run(x)
        for k, v in expected(x).items():
            assert out[k].shape == v.shape
            np.testing.assert_allclose(out[k], v, rtol=1e-6)
    assert len(allocations) == 6  # reused, never reallocated
    assert ctx.shape_calls == [(3, H, W, C), (8, H, W, C), (5, H, W, C)]  # not repeated for the 2nd 3
    assert stream.syncs == ctx.executions == 4


def test_larger_batches_run_in_chunks_and_results_are_copies() -> None:
    runner, ctx, _, _ = make_runner()
    x = images(19)
    out = runner.run(x)
    np.testing.assert_allclose(out["anomaly_map"], expected(x)["anomaly_map"], rtol=1e-6)
    assert ctx.executions == 3 and ctx.shape_calls == [(8, H, W, C), (3, H, W, C)]
    keep = out["mu"].copy()
    runner.run(images(8, seed=5))  # overwrites the buffers...
    np.testing.assert_array_equal(out["mu"], keep)  # ...not what the caller holds


def test_profile_minimum_pads_and_drops_padding() -> None:
    runner, ctx, _, _ = make_runner(lo=4, opt=4, hi=4)
    x = images(2)
    out = runner.run(x)
    assert out["mu"].shape == (2, 3) and ctx.shape_calls == [(4, H, W, C)]
    np.testing.assert_allclose(out["mu"], expected(x)["mu"], rtol=1e-6)


def test_static_batch_engine_uses_its_fixed_batch() -> None:
    engine = FakeEngine(static_batch=2)
    tensors = rt.describe_io(engine, lambda m: m == "in", lambda d: d)
    assert rt.batch_range(engine, tensors[0]) == (2, 2)
    assert engine.profile_calls == 0


def test_dynamic_non_batch_dims_are_refused() -> None:
    t = rt.IOTensor("image", True, (-1, -1, W, C), np.dtype(np.uint8))
    with pytest.raises(RuntimeError, match="only a dynamic batch"):
        rt.buffer_shape(t, 4)


def test_rejected_input_shape_is_reported() -> None:
    runner, ctx, _, _ = make_runner()
    runner.max_batch = 16  # pretend a wrong profile reading: the context refuses batch 9..16
    with pytest.raises(RuntimeError, match="set_input_shape"):
        runner.run(images(12))


def test_missing_tensorrt_gives_one_line_actionable_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailable) as e:
        TensorRTBackend(tmp_path / "m.trt")
    msg = str(e.value)
    assert "\n" not in msg and "pip install tensorrt" in msg and "onnx" in msg.lower()


def test_old_tensorrt_missing_cuda_and_cpu_device(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(BackendUnavailable, match="needs TensorRT 10"):
        TensorRTBackend(tmp_path / "m.trt")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    try:  # the real cuda-python (torch's CUDA build brings it) on a machine without a GPU or driver
        import cuda.bindings.runtime  # noqa: F401
    except ImportError:
        pass
    else:
        with pytest.raises(BackendUnavailable, match="CUDA is not usable for TensorRT on GPU 0") as e:
            TensorRTBackend(tmp_path / "m.trt")
        assert "\n" not in str(e.value)
    # neither cuda-python nor PyTorch can give CUDA memory: one line naming what to install
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "torch"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailable, match="pip install cuda-python") as e:
        TensorRTBackend(tmp_path / "m.trt")
    assert "\n" not in str(e.value)
    with pytest.raises(BackendUnavailable, match="not '--device cpu'"):
        TensorRTBackend(tmp_path / "m.trt", device="cpu")


def fake_runtime(monkeypatch: pytest.MonkeyPatch, engine: object) -> FakeMemory:
    """A TensorRT 10 module whose Runtime deserializes to `engine`, and fake CUDA memory."""
    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> object:
            return engine

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    fake = types.SimpleNamespace(__version__="10.3.0", Logger=Logger, Runtime=Runtime,
                                 TensorIOMode=types.SimpleNamespace(INPUT="in"), nptype=lambda d: d)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    memory = FakeMemory()
    monkeypatch.setattr(rt, "cuda_memory", lambda gpu=0: memory)
    return memory


def test_an_engine_tensorrt_cannot_load_is_one_backend_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    memory = fake_runtime(monkeypatch, None)  # TensorRT 10: None for a foreign engine
    engine = tmp_path / "m.trt"
    engine.write_bytes(b"an engine of another TensorRT")
    with pytest.raises(BackendError, match="m.trt: TensorRT could not deserialize"):
        TensorRTBackend(engine)
    assert memory.closed
    with pytest.raises(BackendError, match="gone.trt: cannot load the TensorRT engine") as e:
        TensorRTBackend(tmp_path / "gone.trt")
    assert "\n" not in str(e.value)


def test_backend_runs_an_engine_through_the_runner(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """open -> run -> close through core.tensorrt.Engine, the runner export.tensorrt --verify uses too."""
    fake_engine = FakeEngine()
    memory = fake_runtime(monkeypatch, fake_engine)

    def create_execution_context() -> FakeContext:
        return FakeContext(fake_engine, memory.registry)

    fake_engine.create_execution_context = create_execution_context  # type: ignore[attr-defined]
    (tmp_path / "m.trt").write_bytes(b"engine")
    backend = TensorRTBackend(tmp_path / "m.trt")
    assert backend.input_shape == (H, W, C) and backend.max_batch == 8
    assert backend.output_names == ("anomaly_map", "mu")
    x = images(3)
    np.testing.assert_allclose(backend.run(x)["anomaly_map"], expected(x)["anomaly_map"], rtol=1e-6)
    assert backend.describe()["device"] == "fake GPU"
    backend.close()
    assert memory.closed

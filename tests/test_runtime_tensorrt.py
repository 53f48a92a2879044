"""TensorRT backend without TensorRT: buffer/shape logic against a fake engine, and the promised
one-line errors when the package or a GPU is missing."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from runtime.backends import BackendError, BackendUnavailable
from runtime.backends import tensorrt as rt

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

    def __init__(self, engine: FakeEngine, registry: dict[int, torch.Tensor]) -> None:
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

    def _view(self, name: str) -> torch.Tensor:
        shape = self.get_tensor_shape(name)
        flat = self.registry[self.addresses[name]].view(-1)
        return flat[:int(np.prod(shape))].view(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert stream_handle == 1234
        self.executions += 1
        img = self._view("image").float()
        self._view("anomaly_map").copy_(img.permute(0, 3, 1, 2) / 255.0)
        self._view("mu").copy_(img.mean(dim=(1, 2, 3))[:, None].expand(-1, 3))
        return True


class FakeStream:
    cuda_stream = 1234

    def __init__(self) -> None:
        self.syncs = 0

    def synchronize(self) -> None:
        self.syncs += 1


def make_runner(**engine_kw: int) -> tuple[rt.EngineRunner, FakeContext, list, FakeStream]:
    engine = FakeEngine(**engine_kw)
    registry: dict[int, torch.Tensor] = {}
    allocations: list[tuple] = []

    def allocate(shape: tuple[int, ...], dtype: torch.dtype, where: str) -> torch.Tensor:
        t = torch.zeros(shape, dtype=dtype)
        registry[t.data_ptr()] = t
        allocations.append((shape, dtype, where))
        return t

    ctx = FakeContext(engine, registry)
    tensors = rt.describe_io(engine, lambda m: m == "in", lambda d: d)
    lo, hi = rt.batch_range(engine, next(t for t in tensors if t.is_input))
    stream = FakeStream()
    return rt.EngineRunner(engine, ctx, tensors, hi, lo, allocate, stream), ctx, allocations, stream


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
    assert all(a[0][0] == 8 for a in allocations)
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
        rt.TensorRTBackend(tmp_path / "m.trt")
    msg = str(e.value)
    assert "\n" not in msg and "pip install tensorrt" in msg and "onnx" in msg.lower()


def test_old_tensorrt_and_missing_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(BackendUnavailable, match="needs TensorRT 10"):
        rt.TensorRTBackend(tmp_path / "m.trt")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU") as e:
        rt.TensorRTBackend(tmp_path / "m.trt")
    assert "\n" not in str(e.value)


def test_an_engine_tensorrt_cannot_load_is_one_backend_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> None:  # TensorRT 10: None for a foreign engine
            return None

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    fake = types.SimpleNamespace(__version__="10.3.0", Logger=Logger, Runtime=Runtime)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    engine = tmp_path / "m.trt"
    engine.write_bytes(b"an engine of another TensorRT")
    with pytest.raises(BackendError, match="m.trt: TensorRT could not deserialize"):
        rt.TensorRTBackend(engine)
    with pytest.raises(BackendError, match="gone.trt: cannot load the TensorRT engine") as e:
        rt.TensorRTBackend(tmp_path / "gone.trt")
    assert "\n" not in str(e.value)

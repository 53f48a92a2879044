"""export.tensorrt without TensorRT: the graph check (ops on TensorRT 10's ONNX list, static shapes
except the batch), the missing-module error, CLI usage, and the build flow against a stand-in
`tensorrt` module that records how the TensorRT 10 API is called."""
from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import export.tensorrt as et
from core import ort
from test_runtime_tensorrt import FakeMemory
from export.onnx import export_onnx
from core.sidecar import SidecarError, read_sidecar
from test_export_graph import make_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trt")
    ckpt = make_checkpoint(root / "digit.pt", "mnist", anomaly_map="fusion", score="difference")
    return export_onnx(ckpt, root / "digit.onnx", score="difference", per_dim=True)["onnx"]


@pytest.fixture(autouse=True)
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeMemory:
    """CUDA memory for the builder (device name, INT8 calibration buffer) without a GPU."""
    memory = FakeMemory()
    monkeypatch.setattr(et, "cuda_memory", lambda gpu=0: memory)
    return memory


@pytest.fixture
def model_dir(onnx_file: Path, tmp_path: Path) -> Path:
    """A private copy of the exported model + sidecar (tests write engines beside it)."""
    for suffix in (".onnx", ".yaml"):
        shutil.copy(onnx_file.with_suffix(suffix), tmp_path / f"digit{suffix}")
    return tmp_path


def fake_tensorrt(version: str = "10.3.0", parse_ok: bool = True, build_ok: bool = True,
                  fp16_flag: bool = True) -> types.ModuleType:
    """Just enough of the TensorRT 10 Python API for build_engine, recording every call;
    fp16_flag=False drops BuilderFlag.FP16 as TensorRT 11 does."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16, trt.int32, trt.int64, trt.uint8, trt.bool = (
        "float32", "float16", "int32", "int64", "uint8", "bool")
    trt.record = rec = {"flags": set(), "layers": []}

    class Logger:
        WARNING, VERBOSE = "warning", "verbose"

        def __init__(self, severity: str) -> None:
            rec["log"] = severity

    class Tensor:
        def __init__(self, dtype: str) -> None:
            self.dtype = dtype

    class Layer:
        def __init__(self, name: str, kind: str, dtype: str) -> None:
            self.name, self.type, self.precision, self.output_types = name, kind, None, {}
            self._outs = [Tensor(dtype)]
            self.num_outputs = 1

        def get_output(self, j: int) -> Tensor:
            return self._outs[j]

        def set_output_type(self, j: int, dtype: str) -> None:
            self.output_types[j] = dtype

    class Network:
        def __init__(self) -> None:
            self.layers: list[Layer] = []

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            if not parse_ok:
                self.errors = ["In node 7 with name: /Foo and operator: Foo (parseNode): UNSUPPORTED_NODE"]
                return False
            for node in onnx.load(path).graph.node:  # one layer per node, named after it, as the parser does
                kind = "REDUCE" if node.op_type.startswith("Reduce") else "OTHER"
                dtype = "int64" if node.op_type in ("Shape", "Gather", "Concat", "Unsqueeze") else "float32"
                self.network.layers.append(Layer(node.name, kind, dtype))
            rec["layers"] = self.network.layers
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class Profile:
        shape: tuple = ()

        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            self.shape = (name, lo, opt, hi)

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            rec["cache_in"] = data

        def serialize(self) -> bytes:
            return b"timing-cache"

    class Config:
        int8_calibrator = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            rec["workspace"] = (pool, size)

        def add_optimization_profile(self, p: Profile) -> None:
            rec.setdefault("profiles", []).append(p.shape)

        def set_flag(self, flag: str) -> None:
            rec["flags"].add(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            self.cache = TimingCache(data)
            return self.cache

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> None:
            rec["ignore_mismatch"] = ignore_mismatch

        def get_timing_cache(self) -> TimingCache:
            return self.cache

        def set_calibration_profile(self, p: Profile) -> None:
            rec["calibration_profile"] = p.shape

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            rec["network_flags"] = flags
            return Network()

        def create_builder_config(self) -> Config:
            rec["config"] = Config()
            return rec["config"]

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            return b"ENGINE" if build_ok else None

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    for cls in (Logger, OnnxParser, Builder, IInt8EntropyCalibrator2):
        setattr(trt, cls.__name__, cls)
    trt.LayerType = types.SimpleNamespace(REDUCE="REDUCE")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY",
                                            **({"FP16": "FP16"} if fp16_flag else {}))
    return trt


# --- the graph check (no TensorRT involved) -------------------------------------------------

def test_exported_graph_passes_the_tensorrt_check(onnx_file: Path, capsys: pytest.CaptureFixture) -> None:
    report = et.check_graph(onnx_file)
    assert report.ok, report.problems
    assert report.opset == 17 and set(report.ops) <= et.TRT_SUPPORTED_OPS
    assert {"ConvTranspose", "Resize", "ReduceMean"} <= set(report.ops)  # the backward and attention are there
    assert et.main(["--onnx", str(onnx_file), "--check-only"]) == 0
    assert "TensorRT 10 check: ok" in capsys.readouterr().out


def _model(nodes: list, inputs: list, outputs: list, opset: int = 17, inits: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_check_flags_what_tensorrt_cannot_parse(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    img = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 8, 8, 1])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])
    bad = _model([helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2], name="tr"),
                  helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT, name="cast"),
                  helper.make_node("Reciprocal", ["f"], ["r"], name="rec"),
                  helper.make_node("Hardmax", ["r"], ["h"], name="hm"),
                  helper.make_node("MaxUnpool", ["h", "h"], ["u"], name="unpool"),
                  helper.make_node("Resize", ["u", "", "", "sizes"], ["y"], mode="cubic", antialias=1, name="rs"),
                  helper.make_node("Foo", ["y"], ["z"], domain="my.ops", name="custom")],
                 [img], [out], inits=[helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 1, 8, 8])])
    problems = "\n".join(et.check_graph(bad).problems)
    assert "Transpose 'tr': reads uint8 input 'image'" in problems
    assert "Reciprocal 'rec': only parsed by late TensorRT 10.x releases" in problems
    assert "MaxUnpool 'unpool': not supported" in problems
    assert "Resize 'rs': mode 'cubic'" in problems and "antialiasing" in problems
    assert "custom domain 'my.ops'" in problems
    assert "Hardmax" not in problems

    dyn = _model([helper.make_node("Relu", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", 4, 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", 4, 4])], opset=21)
    problems = "\n".join(et.check_graph(dyn).problems)
    assert "opset 21 is outside" in problems
    assert "input x: shape ['N', 'C', 4, 4] is not static except the batch" in problems
    assert "output y" in problems
    path = tmp_path / "dyn.onnx"
    onnx.save(dyn, path)
    assert et.main(["--onnx", str(path), "--check-only"]) == 1
    assert "problem(s)" in capsys.readouterr().out

    axes = _model([helper.make_node("ReduceSum", ["x", "ax"], ["y"], name="rs")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
                   helper.make_tensor_value_info("ax", TensorProto.INT64, [1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    assert any("axes must be a build-time constant" in p for p in et.check_graph(axes).problems)


# --- TensorRT missing or too old -----------------------------------------------------------

def test_missing_tensorrt_is_one_actionable_line(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert et.main(["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "digit.trt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT is not installed") and "pip install tensorrt" in err
    assert err.count("\n") == 1 and not (model_dir / "digit.trt").exists()


def test_help_and_module_entry_point(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        et.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "--timing-cache" in out and "--calib-data" in out
    assert "deprecated since TensorRT 10.1" in out and "explicit Q/DQ" in out  # the INT8 path
    r = subprocess.run([sys.executable, "-m", "export.tensorrt", "--onnx", str(model_dir / "digit.onnx"),
                        "--out", str(model_dir / "d.trt")], cwd=REPO, capture_output=True, text=True)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "TensorRT is not installed" in r.stderr


def test_old_tensorrt_is_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("8.6.1"))
    assert et.main(["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "digit.trt")]) == 1
    assert "TensorRT 8.6.1 found; this needs TensorRT 10" in capsys.readouterr().err


def test_newer_major_is_refused(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    """TensorRT 11 removes BuilderFlag.FP16/INT8 and int8_calibrator: refused before any call."""
    trt = fake_tensorrt("11.0.0", fp16_flag=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    assert et.main(["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "digit.trt"), "--fp16"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT 11.0.0 found; this needs TensorRT 10") and err.count("\n") == 1
    assert "pip install tensorrt==10.*" in err and "config" not in trt.record


def test_an_api_mismatch_is_one_line(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    """A module that says 10.x but lacks its API (AttributeError), or calls it differently (TypeError)."""
    argv = ["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "digit.trt"), "--fp16"]
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(fp16_flag=False))
    assert et.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the installed TensorRT does not have the TensorRT 10 API this code uses "
                          "(AttributeError: ") and err.count("\n") == 1
    trt = fake_tensorrt()
    trt.Builder.create_network = lambda self: None  # type: ignore[attr-defined]  # no flags argument
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    assert et.main(argv) == 1
    err = capsys.readouterr().err
    assert "(TypeError: " in err and err.count("\n") == 1
    assert not (model_dir / "digit.trt").exists()


@pytest.mark.parametrize("argv", [
    [], ["--onnx", "m.onnx"], ["--onnx", "m.onnx", "--out", "m.onnx"],
    ["--onnx", "m.onnx", "--out", "m.trt", "--int8"], ["--onnx", "m.onnx", "--out", "m.trt", "--calib-data", "d"],
    ["--onnx", "m.onnx", "--out", "m.trt", "--opt-batch", "9"], ["--onnx", "m.onnx", "--out", "m.trt", "--max-batch", "0"],
    ["--onnx", "m.onnx", "--out", "m.trt", "--workspace-gb", "0"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        et.main(argv)
    assert e.value.code == 2


# --- the build flow, against the stand-in module ---------------------------------------------

def test_fp16_build_records_engine_in_the_shared_sidecar(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    trt = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    onnx_path, engine, cache = model_dir / "digit.onnx", model_dir / "digit.trt", model_dir / "timing.cache"
    argv = ["--onnx", str(onnx_path), "--out", str(engine), "--fp16", "--max-batch", "4", "--opt-batch", "2",
            "--workspace-gb", "1", "--timing-cache", str(cache)]
    assert et.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    rec = trt.record
    assert engine.read_bytes() == b"ENGINE" and cache.read_bytes() == b"timing-cache"
    assert rec["network_flags"] == 0 and rec["workspace"] == ("WORKSPACE", 1 << 30)
    assert rec["profiles"] == [("image", (1, 28, 28, 1), (2, 28, 28, 1), (4, 28, 28, 1))]
    assert {"FP16", "OBEY"} <= rec["flags"] and "INT8" not in rec["flags"] and rec["ignore_mismatch"] is False
    pinned = {l.name for l in rec["layers"] if l.precision == "float32"}
    assert pinned and all(l.output_types == {0: "float32"} for l in rec["layers"] if l.name in pinned)
    assert {l.name for l in rec["layers"] if l.type == "REDUCE"} <= pinned
    assert any(n.startswith("/attention/") for n in pinned) and any(n.startswith("/score_grad/") for n in pinned)
    assert not any(l.precision for l in rec["layers"] if l.get_output(0).dtype == "int64")  # shape math untouched
    reduce = {l.name for l in rec["layers"] if l.type == "REDUCE"}
    assert all(n in reduce or n.startswith(et.FP32_SCOPES) for n in pinned)  # convs, matmuls stay fp16
    side = read_sidecar(engine)  # verifies the engine's sha256 against the shared digit.yaml
    entry = side["files"]["digit.trt"]
    assert entry["precision"] == "fp16" and entry["trt"] == "10.3.0" and entry["max_batch"] == 4
    assert entry["source"]["sha256"] == side["files"]["digit.onnx"]["sha256"]
    read_sidecar(onnx_path)  # the ONNX entry is untouched
    assert et.main(argv) == 0 and rec["cache_in"] == b"timing-cache"  # the timing cache is reused


def test_engine_with_another_stem_gets_its_own_sidecar(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    engine = model_dir / "engines" / "digit_fp32.trt"
    r = et.build_engine(model_dir / "digit.onnx", engine, max_batch=2)
    assert r["precision"] == "fp32" and r["sidecar"] == engine.with_suffix(".yaml")
    side = read_sidecar(engine)
    shared = read_sidecar(model_dir / "digit.onnx")
    assert list(side["files"]) == ["digit_fp32.trt"] and side["outputs"] == shared["outputs"]
    same = {k: v for k, v in shared["model"].items() if k != "checkpoint"}  # the path is re-based, see below
    assert {k: side["model"][k] for k in same} == same
    assert side["files"]["digit_fp32.trt"]["source"]["file"] == "digit.onnx"


def test_parser_and_build_failures(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    argv = ["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "digit.trt")]
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(parse_ok=False))
    assert et.main(argv) == 1
    err = capsys.readouterr().err
    assert "onnx parser: In node 7 with name: /Foo" in err and "ONNX parser failed (1 error(s)" in err
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(build_ok=False))
    assert et.main(argv) == 1
    assert "could not build the engine" in capsys.readouterr().err
    assert not (model_dir / "digit.trt").exists()
    assert sorted(p.name for p in model_dir.iterdir()) == ["digit.onnx", "digit.yaml"]


def test_onnx_must_match_its_sidecar_before_building(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    with open(model_dir / "digit.onnx", "ab") as f:
        f.write(b"\0")
    assert et.main(["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "digit.trt")]) == 1
    assert "does not match its sidecar" in capsys.readouterr().err


def _write_images(folder: Path, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):  # other sizes and color: the host-side preprocessing brings them to 28x28 gray
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    (folder / "broken.png").write_bytes(b"not a png")


def test_int8_build_calibrates_over_a_folder(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trt = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    seen = {}

    def calibrator(trt_mod, images, batch, cache, memory):  # the real one needs CUDA buffers
        seen.update(images=images, batch=batch, cache=cache)
        return "calibrator"

    monkeypatch.setattr(et, "make_calibrator", calibrator)
    _write_images(model_dir / "calib", 5)
    assert et.main(["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "digit.trt"), "--int8",
                    "--calib-data", str(model_dir / "calib"), "--calib-batch", "2",
                    "--calib-cache", str(model_dir / "calib.cache")]) == 0
    assert seen["images"].shape == (5, 28, 28, 1) and seen["images"].dtype == np.uint8 and seen["batch"] == 2
    assert seen["cache"] == model_dir / "calib.cache"
    # calibration runs at its profile's OPT shape: the calibration batch, not --opt-batch (1)
    assert trt.record["calibration_profile"] == ("image", (2, 28, 28, 1), (2, 28, 28, 1), (2, 28, 28, 1))
    assert trt.record["profiles"] == [("image", (1, 28, 28, 1), (1, 28, 28, 1), (8, 28, 28, 1))]
    assert "INT8" in trt.record["flags"]
    assert trt.record["config"].int8_calibrator == "calibrator"
    assert read_sidecar(model_dir / "digit.trt")["files"]["digit.trt"]["precision"] == "int8"


def test_calibration_batch_is_at_most_the_number_of_images(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    trt = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(et, "make_calibrator", lambda trt_mod, images, batch, cache, memory: "calibrator")
    _write_images(model_dir / "calib", 3)
    argv = ["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "digit.trt"), "--int8",
            "--calib-data", str(model_dir / "calib")]
    assert et.main(argv) == 0
    assert trt.record["calibration_profile"][1:] == ((3, 28, 28, 1),) * 3
    (model_dir / "empty").mkdir()
    argv[-1] = str(model_dir / "empty")
    assert et.main(argv) == 1
    err = capsys.readouterr().err
    assert "empty: no usable images" in err and err.count("\n") == 1


def test_checkpoint_path_is_relative_to_each_sidecar(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    shared = read_sidecar(model_dir / "digit.onnx")
    engine = model_dir / "engines" / "fp32" / "digit_fp32.trt"
    et.build_engine(model_dir / "digit.onnx", engine)
    ckpt = read_sidecar(engine)["model"]["checkpoint"]
    assert (engine.parent / ckpt).resolve() == (model_dir / shared["model"]["checkpoint"]).resolve()


def test_same_stem_is_compared_on_resolved_paths(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--onnx digit.onnx --out $PWD/digit.trt` is one stem: one sidecar with both entries, not a
    second sidecar written over digit.yaml without the .onnx entry."""
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    monkeypatch.chdir(model_dir)
    r = et.build_engine(Path("digit.onnx"), model_dir / "digit.trt")
    assert r["sidecar"].resolve() == (model_dir / "digit.yaml").resolve()
    side = read_sidecar(model_dir / "digit.onnx")  # still opens: its entry and sha256 are there
    assert set(side["files"]) == {"digit.onnx", "digit.trt"}
    read_sidecar(model_dir / "digit.trt")


def test_check_only_on_a_file_that_is_not_onnx(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.onnx").write_text("these are not protobuf bytes \x00\xff")
    assert et.main(["--onnx", str(tmp_path / "notes.onnx"), "--check-only"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'notes.onnx'}: not a readable ONNX file") and err.count("\n") == 1


def test_logvar_clamp_backward_is_in_the_fp32_scope(onnx_file: Path) -> None:
    """The chain through logvar = L tanh(raw / L), 1 - (logvar / L)^2, cancels in fp16 near the
    clamp: every node reading logvar is in '/score_grad/', which the build pins to fp32."""
    readers = [n.name for n in onnx.load(str(onnx_file)).graph.node if "logvar" in n.input]
    assert readers and all(n.startswith("/score_grad/") for n in readers), readers


class FakeEngine:
    """core.tensorrt.Engine's interface, answering with ONNX Runtime's outputs (altered by
    `change`), for --verify without a GPU."""

    change: Any = None
    onnx_path: Path

    def __init__(self, path: str | Path) -> None:
        self.session = ort.session(self.onnx_path, device="cpu")

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        out = ort.run(self.session, image)
        return type(self).change(out) if type(self).change else out

    def close(self) -> None:
        pass


@pytest.mark.parametrize("change,rc,message", [
    (None, 0, None),
    (lambda out: dict(out, anomaly_map=out["anomaly_map"] * 1.5), 1, "verification against"),
    (lambda out: dict(out, mu=out["mu"] * np.nan), 1, "verification against"),
    (lambda out: {k: v for k, v in out.items() if k != "alpha"}, 1, "engine has no output alpha"),
])
def test_verify_exits_1_when_the_engine_disagrees(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture, change: Any, rc: int,
                                                  message: str | None) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    monkeypatch.setattr(FakeEngine, "onnx_path", model_dir / "digit.onnx", raising=False)
    monkeypatch.setattr(FakeEngine, "change", staticmethod(change) if change else None)
    monkeypatch.setattr(et, "Engine", FakeEngine)
    assert et.main(["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "digit.trt"),
                    "--verify", "2"]) == rc
    out, err = capsys.readouterr()
    assert "verify: anomaly_map" in out or message == "engine has no output alpha"
    if message is None:
        assert err == ""
    else:
        assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_a_frozen_copy_never_takes_another_models_sidecar(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    # other.onnx has its own sidecar (thresholds and all): an engine named other.trt built from
    # digit.onnx would overwrite it, so the build is refused before anything is written
    for suffix in (".onnx", ".yaml"):
        shutil.copy(model_dir / f"digit{suffix}", model_dir / f"other{suffix}")
    text = (model_dir / "other.yaml").read_text().replace("digit.onnx", "other.onnx")
    (model_dir / "other.yaml").write_text(text)
    before = (model_dir / "other.yaml").read_bytes()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    with pytest.raises(SidecarError, match="other.yaml: already the sidecar of other.onnx"):
        et.build_engine(model_dir / "digit.onnx", model_dir / "other.trt")
    assert not (model_dir / "other.trt").exists() and (model_dir / "other.yaml").read_bytes() == before
    assert et.main(["--onnx", str(model_dir / "digit.onnx"), "--out", str(model_dir / "other.trt")]) == 1
    assert "choose another name" in capsys.readouterr().err


def test_int8_calibrator_feeds_batches_through_cuda_memory() -> None:
    """The calibrator copies each batch into one device buffer (core.tensorrt's memory, the runner's)
    and hands TensorRT its address; None once fewer than a batch are left."""
    trt = types.SimpleNamespace(IInt8EntropyCalibrator2=type("Base", (), {"__init__": lambda self: None}))
    memory = FakeMemory()
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3, 1), dtype=np.uint8)
    cal = et.make_calibrator(trt, images, 2, None, memory)
    assert cal.get_batch_size() == 2
    for i in range(2):
        (ptr,) = cal.get_batch(["image"])
        np.testing.assert_array_equal(memory.registry[ptr].reshape(2, 4, 3, 1), images[2 * i:2 * i + 2])
    assert cal.get_batch(["image"]) is None and memory.syncs == 2

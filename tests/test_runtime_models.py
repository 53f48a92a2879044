"""Models for the runtime tests.

stub: a tiny stand-in for an exported model (contract output names, a hand-written sidecar) for
  fast tests that need exact, predictable maps: anomaly_map = attention = brightness in [0, 1].
mnist_export: the real thing, a one-class MNIST VAE trained for a few steps and exported by
  export.onnx (graph + sidecar), shared by every test of a session (built once, ~10 s).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import runtime.model as rm
from core.prepare import InputSpec
from core.ort import OrtError, provider_options, resolve_providers
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.backends import BackendError, BackendUnavailable

NAMES = ("mu", "logvar", "activations", "gradients", "attention", "anomaly_map")


class StubOutputs(NamedTuple):
    mu: torch.Tensor
    logvar: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor
    attention: torch.Tensor
    anomaly_map: torch.Tensor


class Stub(nn.Module):
    def forward(self, image: torch.Tensor) -> StubOutputs:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        m = x.mean(1, keepdim=True)
        mu = torch.stack([m.mean((1, 2, 3)), m.amax((1, 2, 3))], 1)
        acts = nn.functional.avg_pool2d(m, 4)
        return StubOutputs(mu, torch.zeros_like(mu), acts, torch.ones_like(acts), m, m)


def make_stub_model(folder: Path, size: int = 16, channels: int = 1,
                    thresholds: dict[str, Any] | None = None, name: str = "stub", dynamic: bool = True) -> Path:
    """folder/name.onnx + folder/name.yaml (schema of design.md; sha not checked by the stub reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    x = torch.zeros(2, size, size, channels, dtype=torch.uint8)
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices: fine for a stub
        warnings.simplefilter("ignore")
        torch.onnx.export(Stub(), (x,), str(path), input_names=["image"], output_names=list(NAMES),
                          dynamic_axes={"image": {0: "N"}, **{n: {0: "N"} for n in NAMES}} if dynamic else None,
                          opset_version=17,
                          dynamo=False)
    side = {"schema": 1, "model": {"family": "stub", "layer": "pool", "score": "sum_mu", "anomaly_map": "attention"},
            "input": {"height": size, "width": size, "channels": channels, "color": "gray" if channels == 1 else "rgb"},
            "outputs": list(NAMES), "files": {path.name: {"sha256": "stub"}},
            "thresholds": thresholds if thresholds is not None else {"pixel": 0.5, "image": 0.5}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(side))
    return path


def plain_read_sidecar(model_path: Path, verify: bool = True) -> dict[str, Any]:
    p = Path(model_path).with_suffix(".yaml")
    if not p.exists():
        raise rm.ModelError(f"{p}: sidecar missing")
    return yaml.safe_load(p.read_text())


@pytest.fixture
def stub_sidecars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read the stub's hand-written sidecar without export.sidecar's sha checks."""
    monkeypatch.setattr(rm, "read_sidecar", plain_read_sidecar)


REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"


def build_mnist_export(base: Path) -> Path:
    """Train 20 steps on MNIST digit 1 and export; reused when already built under `base`."""
    onnx_path = base / "mnist.onnx"
    if onnx_path.exists() and onnx_path.with_suffix(".yaml").exists():
        return onnx_path
    if not (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found under {MNIST}")
    from export.onnx import export_onnx
    from training.config import load_config, merge
    from training.train import train

    cfg = merge(load_config(REPO / "configs" / "mnist_one_class.yaml"),
                {"data": {"root": str(MNIST)}, "train": {"epochs": 1}})
    ckpt = train(cfg, base, torch.device("cpu"), max_steps=20, progress=False)
    export_onnx(ckpt, onnx_path)
    return onnx_path


@pytest.fixture(scope="session")
def mnist_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real exported model: base/mnist.onnx + mnist.yaml + model.pt (do not modify: copy first)."""
    base = tmp_path_factory.getbasetemp() / "mnist_export"
    base.mkdir(exist_ok=True)
    return build_mnist_export(base)


@pytest.fixture(scope="module")
def stub_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stub_model(tmp_path_factory.mktemp("stub"))


def test_provider_order_and_override() -> None:
    avail = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "AzureExecutionProvider"]
    assert resolve_providers(None, avail) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers("cuda,cpu", avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider"], avail) == ["CPUExecutionProvider"]
    with pytest.raises(OrtError, match="not available"):
        resolve_providers("cuda", ["CPUExecutionProvider"])


def test_device_grammar_for_onnxruntime(stub_model: Path) -> None:
    from core.device import Device, parse_device

    assert parse_device(None) == Device("auto") and parse_device("cpu") == Device("cpu")
    assert parse_device("cuda") == Device("cuda") and parse_device("cuda:1") == Device("cuda", 1)
    assert parse_device("cuda:1").gpu == 1 and parse_device("cuda").gpu == 0
    for bad in ("gpu", "cuda:x", "cpu:1", "auto:0"):
        with pytest.raises(ValueError, match="--device"):
            parse_device(bad)
    assert provider_options("CUDAExecutionProvider", 1)["device_id"] == 1
    assert provider_options("TensorrtExecutionProvider", 2)["device_id"] == 2
    with pytest.raises(BackendUnavailable, match="'nosuch' is not available"):  # the backend's own error type
        OnnxRuntimeBackend(stub_model, providers="nosuch")
    assert OnnxRuntimeBackend(stub_model, device="cpu", threads=1).providers == ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="no CUDA or TensorRT provider"):
            OnnxRuntimeBackend(stub_model, device="cuda:0")


def test_a_fixed_batch_graph_takes_any_number_of_images(stub_model: Path, tmp_path: Path) -> None:
    fixed = make_stub_model(tmp_path, dynamic=False)  # exported at batch 2, static
    be = OnnxRuntimeBackend(fixed, providers="cpu", threads=1)
    assert be.max_batch == 2
    x = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
    ref = OnnxRuntimeBackend(stub_model, providers="cpu", threads=1).run(x)
    for n in (1, 2):
        out = be.run(x[:n])
        assert all(out[k].shape[0] == n and np.allclose(out[k], ref[k][:n]) for k in NAMES)


def test_onnxruntime_backend_named_outputs(stub_model: Path) -> None:
    be = OnnxRuntimeBackend(stub_model, providers="cpu", threads=1)
    assert be.output_names == NAMES and be.input_name == "image" and be.max_batch is None
    x = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    out = be.run(x)
    np.testing.assert_allclose(out["anomaly_map"][:, 0], x[..., 0] / 255.0, atol=1e-6)
    assert be.describe()["providers"] == ["CPUExecutionProvider"]


def test_open_model_by_extension(stub_model: Path, stub_sidecars: None) -> None:
    with rm.open_model(stub_model, providers="cpu") as m:
        assert m.spec == InputSpec(16, 16, 1, "gray")
        assert m.thresholds == {"pixel": 0.5, "image": 0.5}
        out = m(np.zeros((2, 16, 16, 1), np.uint8))
        assert set(out) == set(NAMES)
        with pytest.raises(ValueError, match="uint8"):
            m(np.zeros((2, 16, 16, 3), np.uint8))


def test_open_model_errors(tmp_path: Path, stub_model: Path, stub_sidecars: None) -> None:
    with pytest.raises(rm.ModelError, match="not found"):
        rm.open_model(tmp_path / "nope.onnx")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(rm.ModelError, match="unknown model extension"):
        rm.open_model(odd)
    renamed = tmp_path / "renamed.bin"  # as the message says: --backend opens the given file itself
    renamed.write_bytes(stub_model.read_bytes())
    side = yaml.safe_load(stub_model.with_suffix(".yaml").read_text())
    side["files"] = {"renamed.bin": {"sha256": "stub"}}
    renamed.with_suffix(".yaml").write_text(yaml.safe_dump(side))
    with rm.open_model(renamed, backend="onnxruntime", providers="cpu") as m:
        assert m.path == renamed
    with pytest.raises(rm.ModelError, match="no .trt/.engine/.plan file beside"):
        rm.open_model(stub_model, backend="tensorrt")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    broken.with_suffix(".yaml").write_bytes(stub_model.with_suffix(".yaml").read_bytes())
    with pytest.raises(rm.ModelError, match=r"broken\.onnx: ONNX Runtime cannot load the model"):
        rm.open_model(broken)


def test_onnxruntime_errors_become_backend_errors(stub_model: Path) -> None:
    """ORT's InvalidArgument/Fail are plain Exceptions: the backend re-raises them as BackendError."""
    be = OnnxRuntimeBackend(stub_model, providers="cpu", threads=1)
    with pytest.raises(BackendError, match=r"stub\.onnx: inference failed \(InvalidArgument: ") as e:
        be.run(np.zeros((1, 16, 16, 1), np.float32))  # the graph takes uint8
    assert "\n" not in str(e.value)


def test_relative_checkpoint_is_relative_to_the_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the current directory's file of the same name: that is another model."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.pt").write_bytes(b"the exported checkpoint")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "model.pt").write_bytes(b"another checkpoint")
    monkeypatch.chdir(elsewhere)
    for src in ("model.pt", "./model.pt"):
        assert rm.checkpoint_from_sidecar({"model": {"checkpoint": src}}, export / "m.onnx") == export / "model.pt"
    # export writes model.checkpoint only; an engine's files entry names its ONNX under `source`,
    # never a checkpoint
    for side in ({"checkpoint": "model.pt"}, {"source": {"checkpoint": "model.pt"}}):
        with pytest.raises(rm.ModelError, match="names no source checkpoint"):
            rm.checkpoint_from_sidecar(side, export / "m.onnx")
    (export / "model.pt").unlink()
    with pytest.raises(rm.ModelError, match="source checkpoint model.pt not found"):
        rm.checkpoint_from_sidecar({"model": {"checkpoint": "model.pt"}}, export / "m.onnx")
    absolute = elsewhere / "model.pt"
    assert rm.checkpoint_from_sidecar({"model": {"checkpoint": str(absolute)}}, export / "m.onnx") == absolute
    with pytest.raises(rm.ModelError, match="must be a path"):
        rm.checkpoint_from_sidecar({"model": {"checkpoint": 3}}, export / "m.onnx")


def test_torch_reference_is_the_checkpoint_whose_hash_was_checked(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--backend torch on an exported file: the sha256 checked against the sidecar is that of the
    bytes the module is built from, so a checkpoint rewritten between the check and the load is
    neither run unchecked nor mistaken for the exported one."""
    from export.onnx import export_onnx
    from test_export_graph import make_checkpoint, make_model
    from training.checkpoint import save_checkpoint

    ckpt = make_checkpoint(tmp_path / "model.pt", "mnist")
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx")["onnx"]
    newer = tmp_path / "newer.pt"
    save_checkpoint(newer, make_model("mnist", seed=1), torch.load(ckpt, weights_only=True)["config"])
    real_load = torch.load

    def rewrite_then_load(*args: Any, **kwargs: Any) -> Any:
        ckpt.write_bytes(newer.read_bytes())  # training saves its next model.pt as we load
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", rewrite_then_load)
    with rm.open_model(onnx_path, backend="torch", device="cpu") as m:
        assert torch.equal(m.backend.module.model.fc.weight, make_model("mnist").fc.weight)
    monkeypatch.undo()
    with pytest.raises(rm.ModelError, match="model.pt: sha256 differs from the checkpoint the sidecar"):
        rm.open_model(onnx_path, backend="torch", device="cpu")  # now model.pt is the newer one


def test_a_sidecar_whose_input_disagrees_with_the_graph_is_refused_at_open(tmp_path: Path, stub_model: Path,
                                                                          stub_sidecars: None) -> None:
    side = yaml.safe_load(stub_model.with_suffix(".yaml").read_text())
    side["input"]["height"] = side["input"]["width"] = 64  # the graph takes 16x16
    bad = tmp_path / "edited.onnx"
    bad.write_bytes(stub_model.read_bytes())
    side["files"] = {bad.name: {"sha256": "stub"}}
    bad.with_suffix(".yaml").write_text(yaml.safe_dump(side))
    with pytest.raises(rm.ModelError, match="its sidecar says input 64x64x1, the model itself 16x16x1"):
        rm.open_model(bad, providers="cpu")


def test_a_model_refused_for_missing_outputs_releases_its_backend(tmp_path: Path, stub_model: Path,
                                                                  stub_sidecars: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """open_model refused a sidecar listing outputs the graph lacks without closing the backend it
    had created (an ONNX Runtime session, or a TensorRT engine's GPU memory, held until exit)."""
    side = yaml.safe_load(stub_model.with_suffix(".yaml").read_text())
    side["outputs"] = list(NAMES) + ["alpha"]
    bad = tmp_path / "more.onnx"
    bad.write_bytes(stub_model.read_bytes())
    side["files"] = {bad.name: {"sha256": "stub"}}
    bad.with_suffix(".yaml").write_text(yaml.safe_dump(side))
    created: list[Any] = []
    real = rm.B.create

    def create(*a: Any, **k: Any) -> Any:
        be = real(*a, **k)
        created.append(be)
        close = be.close
        be.closed = False

        def tracked() -> None:
            be.closed = True
            close()
        be.close = tracked
        return be

    monkeypatch.setattr(rm.B, "create", create)
    with pytest.raises(rm.ModelError, match=r"outputs \['alpha'\] listed in the sidecar are not in the model"):
        rm.open_model(bad, providers="cpu")
    assert len(created) == 1 and created[0].closed

"""runtime.model with the real export: backend parity (ONNX Runtime vs the PyTorch export module),
--backend override, and the sidecar checks (missing, stale, other file)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime.inspect as ri
from runtime.model import ModelError, open_model
from core.files import sha256
from test_runtime_models import REPO, mnist_export  # noqa: F401 - fixture

DEFAULT_TOL = 1e-4  # export.check's parity tolerance: max |err| <= 1e-4 x the output's range


@pytest.fixture(scope="session")
def resnet_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ResNet18 VAE (64x64, layer3, recon_error_blur: decoder in the graph) exported with
    per-dimension alpha: every optional output of the contract."""
    import sys
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_mvtec, tiny_config
    from export.onnx import export_onnx
    from training.train import train

    base = tmp_path_factory.getbasetemp() / "resnet_export"
    if not (base / "res.onnx").exists():
        root = make_mvtec(base / "parts", size=64)
        ck = train(tiny_config(root), base, torch.device("cpu"), max_steps=2, progress=False)
        export_onnx(ck, base / "res.onnx", per_dim=True)
    return base / "res.onnx"


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, int]:
    """Elements beyond tol x range per output (ReLU-kink flips would show up here, counted)."""
    assert set(a) == set(b)
    out = {}
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == np.float32, k
        rng = float(b[k].max() - b[k].min()) or 1.0
        out[k] = int((np.abs(a[k] - b[k]) > DEFAULT_TOL * rng).sum())
    return out


@pytest.mark.parametrize("which", ["mnist", pytest.param("resnet", marks=pytest.mark.slow)])
def test_onnxruntime_and_torch_backends_agree(which: str, mnist_export: Path, request: pytest.FixtureRequest) -> None:
    path = mnist_export if which == "mnist" else request.getfixturevalue("resnet_export")
    ort = open_model(path, providers="cpu", threads=1)
    ref = open_model(path, backend="torch", device="cpu")  # the checkpoint the sidecar names
    assert ort.backend.name == "onnxruntime" and ref.backend.name == "torch"
    assert ort.output_names == ref.output_names == tuple(ort.sidecar["outputs"])
    assert ort.spec == ref.spec
    if which == "resnet":
        assert {"recon_error", "alpha"} <= set(ort.output_names)
    h, w, c = ort.spec.height, ort.spec.width, ort.spec.channels
    rng = np.random.default_rng(0)
    for n in (1, 3):
        x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
        a, b = ort(x), ref(x)
        assert all(v.shape[0] == n for v in a.values())
        outliers = compare(a, b)
        # the same module on both sides: any kink flip is rare; none may be in the forward outputs
        assert outliers["mu"] == outliers["logvar"] == outliers["activations"] == 0, outliers
        assert sum(outliers.values()) <= max(1, a["gradients"].size // 1000), outliers


def test_pt_checkpoint_opens_directly(mnist_export: Path) -> None:
    m = open_model(mnist_export.parent / "model.pt", device="cpu")
    assert m.backend.name == "torch" and m.sidecar is None and m.thresholds == {}
    assert (m.spec.height, m.spec.width, m.spec.channels) == (28, 28, 1)
    x = np.zeros((2, 28, 28, 1), np.uint8)
    ort = open_model(mnist_export, providers="cpu")
    assert compare(m(x), ort(x))["anomaly_map"] == 0


def test_torch_errors_become_backend_errors(mnist_export: Path) -> None:
    from runtime.backends import BackendError

    m = open_model(mnist_export.parent / "model.pt", device="cpu")

    def out_of_memory(x: torch.Tensor) -> None:
        raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported")

    m.backend.module = out_of_memory  # type: ignore[attr-defined]
    with pytest.raises(BackendError, match=r"model\.pt: inference failed \(RuntimeError: CUDA error: out of memory\)$"):
        m(np.zeros((1, 28, 28, 1), np.uint8))


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst / src.name)
    shutil.copy(src.with_suffix(".yaml"), dst / src.with_suffix(".yaml").name)
    return dst / src.name


def test_missing_and_stale_sidecar(tmp_path: Path, mnist_export: Path, capsys: pytest.CaptureFixture) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    stale = copy_model(mnist_export, tmp_path / "stale")
    side = stale.with_suffix(".yaml")
    # the sidecar of another export beside this model: its sha256 (and thresholds) are stale
    side.write_text(side.read_text().replace(sha256(stale), "0" * 64))
    with pytest.raises(ModelError, match="does not match its sidecar"):
        open_model(stale)
    missing = copy_model(mnist_export, tmp_path / "missing")
    missing.with_suffix(".yaml").unlink()
    with pytest.raises(ModelError, match="sidecar missing"):
        open_model(missing)
    for model in (stale, missing):
        code = ri.main(["--engine", str(model), "--input", str(inp), "--output", str(tmp_path / "o"), "--quiet"])
        assert code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and model.name in err[0]
    assert open_model(stale, verify=False).spec.height == 28  # an explicit opt-out still works


def test_tensorrt_engine_without_tensorrt(tmp_path: Path, mnist_export: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    """A .trt beside the .onnx, listed in the shared sidecar: opening it here (no TensorRT, no GPU)
    stops with the one-line install hint, via open_model, --backend tensorrt and the CLI."""
    import sys
    from core.sidecar import file_entry, update_sidecar

    onnx_path = copy_model(mnist_export, tmp_path / "m")
    trt = onnx_path.with_suffix(".trt")
    trt.write_bytes(b"not really an engine")
    update_sidecar(onnx_path, files={trt.name: file_entry(trt, precision="fp32")})
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    for args in ((trt,), (onnx_path, "tensorrt")):
        with pytest.raises(ModelError, match="pip install tensorrt") as e:
            open_model(*args)
        assert "\n" not in str(e.value)
    inp = tmp_path / "in"
    inp.mkdir()
    assert ri.main(["--engine", str(trt), "--input", str(inp), "--output", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install tensorrt" in err[0]

"""export.onnx + export.check: ONNX Runtime equals PyTorch autograd for every output (the
deployment contract), metadata and sidecar, CLI behaviour."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import export.check
import export.graph
from bench.export import main as bench_main
from core import ort
from core.prepare import InputSpec
from export.check import check, compare, format_report, load_images, main as check_main
from export.onnx import export_onnx, main as onnx_main, read_metadata
from core.sidecar import SidecarError, read_sidecar
from export.tensorrt import check_graph
from test_export_graph import make_checkpoint

REPO = Path(__file__).resolve().parents[1]

# (arch, checkpoint's inference overrides, export overrides): two target layers per VAE, both
# scores, per-dim alpha, every anomaly map kind
CONFIGS = {
    "mnist-conv2": ("mnist", {}, {}),
    "mnist-conv1": ("mnist", {"anomaly_map": "recon_error"}, {"layer": "conv1", "score": "difference", "per_dim": True}),
    # sum_mu without an fc ReLU: the fc-head cotangent (with the per-dim rows) is folded to a constant
    "resnet-layer4": ("resnet18", {"anomaly_map": "recon_error_blur"}, {"layer": "layer4", "per_dim": True}),
    "resnet-layer3": ("resnet18", {"anomaly_map": "fusion", "layer": "layer3", "score": "difference"},
                      {"layer": "layer3", "score": "difference", "per_dim": True}),
    "ucsd-conv3": ("ucsd", {"anomaly_map": "attention"}, {"layer": "conv3"}),
    "ucsd-conv2": ("ucsd", {"anomaly_map": "attention"}, {"layer": "conv2", "score": "difference"}),
    "ucsd-ssim": ("ucsd", {"anomaly_map": "ssim_error"}, {"layer": "conv3"}),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """Export lazily, once per configuration for the whole module."""
    root = tmp_path_factory.mktemp("onnx")
    cache: dict[str, tuple[Path, Path, dict]] = {}

    def get(name: str) -> tuple[Path, Path, dict]:
        if name not in cache:
            arch, inference, over = CONFIGS[name]
            ckpt = make_checkpoint(root / f"{name}.pt", arch, **inference)
            r = export_onnx(ckpt, root / f"{name}.onnx", **over)
            cache[name] = (ckpt, r["onnx"], r)
        return cache[name]

    return get


def _parity(exported, name: str) -> None:
    ckpt, path, _ = exported(name)
    result = check(path, ckpt, batches=(1, 3))
    print(format_report(result))
    assert result.ok, format_report(result)
    assert {r.batch for r in result.reports} == {1, 3}
    assert {r.name for r in result.reports} == set(read_metadata(path)["outputs"])
    for r in result.reports:  # any kink outlier is counted, and they stay rare
        assert r.kink_outliers <= max(2, r.elements // 1000), r


@pytest.mark.parametrize("name", ["mnist-conv2", "mnist-conv1", "resnet-layer4", "resnet-layer3"])
def test_onnx_runtime_matches_autograd(exported, name: str) -> None:
    _parity(exported, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ucsd-conv3", "ucsd-conv2", "ucsd-ssim"])
def test_onnx_runtime_matches_autograd_ucsd(exported, name: str) -> None:
    _parity(exported, name)  # 150 MB graphs: the 36864 x 1024 linear layer


def test_metadata_outputs_and_static_shapes(exported) -> None:
    ckpt, path, r = exported("resnet-layer3")
    meta = read_metadata(path)
    assert meta["layer"] == "layer3" and meta["score"] == "difference" and meta["anomaly_map"] == "fusion"
    assert (meta["input_height"], meta["input_width"], meta["input_channels"]) == (64, 64, 1)
    assert meta["per_dim"] and meta["recon"] and meta["weights"] == "fp32" and meta["opset"] == 17
    assert meta["outputs"] == ["mu", "logvar", "activations", "gradients", "attention", "anomaly_map",
                               "recon_error", "alpha"]
    assert meta["checkpoint_sha256"] == read_sidecar(path)["model"]["checkpoint_sha256"]
    model = onnx.load(str(path), load_external_data=False)
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [(d.dim_param or d.dim_value) for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 64, 64, 1]
    shapes = {o.name: [(d.dim_param or d.dim_value) for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes["activations"] == ["N", 256, 4, 4] == shapes["gradients"]
    assert shapes["attention"] == ["N", 1, 64, 64] and shapes["alpha"] == ["N", 8, 256]
    assert all(o.doc_string for o in model.graph.output)
    report = check_graph(model)
    assert report.ok, report.problems
    side = read_sidecar(path)
    assert side["outputs"] == meta["outputs"] and side["input"]["color"] == "gray"
    assert side["output_shapes"]["alpha"] == ["N", 8, 256] and side["export"]["opset"] == 17
    assert side["model"]["checkpoint"] == "resnet-layer3.pt"  # relative to the sidecar's folder
    assert (path.parent / side["model"]["checkpoint"]).resolve() == ckpt.resolve()


def test_gradients_are_computed_not_frozen(exported) -> None:
    """pytorch#89675: a traced autograd graph silently freezes gradients as constants."""
    _, path, _ = exported("mnist-conv2")
    sess = ort.session(path, device="cpu")
    rng = np.random.default_rng(1)
    a = ort.run(sess, rng.integers(0, 256, (1, 28, 28, 1), dtype=np.uint8))["gradients"]
    b = ort.run(sess, rng.integers(0, 256, (1, 28, 28, 1), dtype=np.uint8))["gradients"]
    assert not np.allclose(a, b)


def test_check_fails_for_a_wrong_backward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backward without its ReLU masks must fail, not be excused as kink outliers."""
    ckpt = make_checkpoint(tmp_path / "m.pt", "mnist")
    monkeypatch.setattr(export.graph, "_masked", lambda g, y, r, shape: g)
    export_onnx(ckpt, tmp_path / "bad.onnx", layer="conv1")
    monkeypatch.undo()
    result = check(tmp_path / "bad.onnx", ckpt, batches=(2,))
    bad = {r.name for r in result.reports if not r.ok}
    assert not result.ok and "gradients" in bad, format_report(result)
    assert all(r.kink_outliers < r.outliers for r in result.reports if r.name in bad)


def test_fp16_weights_halve_the_file(exported, tmp_path: Path) -> None:
    ckpt, path32, r32 = exported("resnet-layer4")
    r16 = export_onnx(ckpt, tmp_path / "half.onnx", layer="layer4", fp16=True)
    assert r16["bytes"] < 0.6 * r32["bytes"]
    assert read_metadata(r16["onnx"])["weights"] == "fp16"
    result = check(r16["onnx"], ckpt, batches=(2,))  # default tolerance for fp16 weights
    assert result.ok and result.rel_tol == 1e-3, format_report(result)
    assert any("fp16 weights" in n and "the rounding moves anomaly_map by" in n for n in result.notes)
    # the graph computes the rounded weights' function: mu to fp32 precision, not to rounding error
    assert next(r for r in result.reports if r.name == "mu").max_abs_err < 1e-5 * next(r for r in result.reports if r.name == "mu").range
    assert check_graph(r16["onnx"]).ok


def test_opset_18_and_recon(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", "mnist")
    r = export_onnx(ckpt, tmp_path / "m18.onnx", opset=18, recon=True)
    assert r["outputs"][-1] == "recon_error" and read_metadata(r["onnx"])["opset"] == 18
    assert check_graph(r["onnx"]).ok
    assert check(r["onnx"], ckpt, batches=(2,)).ok


def test_cli_export_and_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", "mnist")
    out = tmp_path / "deploy" / "digit.onnx"
    assert onnx_main(["--checkpoint", str(ckpt), "--out", str(out), "--layer", "conv1"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "digit.yaml" in text and "conv1" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["digit.onnx", "digit.yaml"]  # nothing half-written
    assert check_main(["--onnx", str(out), "--checkpoint", str(ckpt), "--batch", "1", "2",
                       "--json", str(tmp_path / "r.json")]) == 0
    assert "PASS" in capsys.readouterr().out and (tmp_path / "r.json").is_file()

    # the model file no longer matches its sidecar: refused, and the message says which file
    data = out.read_bytes()
    out.write_bytes(data + b"\0")
    assert check_main(["--onnx", str(out), "--checkpoint", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "digit.onnx" in err and "sidecar" in err and err.count("\n") == 1
    with pytest.raises(SidecarError):
        read_sidecar(out)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", "resnet18")
    out = str(tmp_path / "m.onnx")
    for argv in ([], ["--checkpoint", str(ckpt)], ["--checkpoint", str(ckpt), "--out", "m.txt"],
                 ["--checkpoint", str(ckpt), "--out", out, "--opset", "21"],
                 ["--checkpoint", str(ckpt), "--out", out, "--score", "max"]):
        with pytest.raises(SystemExit) as e:
            onnx_main(argv)
        assert e.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a path typed wrong is a usage error, as in every command
        onnx_main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", out])
    assert e.value.code == 2 and "--checkpoint " in capsys.readouterr().err
    assert onnx_main(["--checkpoint", str(ckpt), "--out", out, "--layer", "conv1"]) == 1
    err = capsys.readouterr().err
    assert "choose one of ['maxpool', 'layer1', 'layer2', 'layer3', 'layer4']" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "m.pt"]  # a failed export leaves nothing behind
    with pytest.raises(SystemExit) as e:
        check_main(["--onnx", out])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        check_main(["--onnx", out, "--checkpoint", str(ckpt)])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err


def test_cli_help_and_wrong_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for main in (onnx_main, check_main):
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        assert e.value.code == 0 and "--checkpoint" in capsys.readouterr().out
    ckpt = make_checkpoint(tmp_path / "a.pt", "mnist")
    export_onnx(ckpt, tmp_path / "a.onnx")
    other = make_checkpoint(tmp_path / "b.pt", "mnist", layer="conv1")  # same weights, another file
    assert check_main(["--onnx", str(tmp_path / "a.onnx"), "--checkpoint", str(other)]) == 1
    assert "not the checkpoint a.onnx was exported from" in capsys.readouterr().err

def test_kink_outliers_are_counted_only_where_autograd_at_our_activations_agrees() -> None:
    ref = {n: torch.zeros(2, 4) for n in ("mu", "gradients")}
    for n in ref:
        ref[n][0, 0] = 1.0  # range 1
    ours = {n: ref[n].numpy().copy() for n in ref}
    for n in ours:
        ours[n][1, 2] = 0.5  # an outlier in each output
    recheck = {n: torch.from_numpy(ours[n]) for n in ours}  # autograd at our activations agrees
    reports = {r.name: r for r in compare(ours, ref, 1e-4, 2, recheck)}
    assert reports["gradients"].outliers == reports["gradients"].kink_outliers == 1 and reports["gradients"].ok
    # mu is continuous: an outlier there is never a kink
    assert reports["mu"].outliers == 1 and reports["mu"].kink_outliers == 0 and not reports["mu"].ok
    reports = {r.name: r for r in compare(ours, ref, 1e-4, 2, {n: ref[n] for n in ref})}
    assert not reports["gradients"].ok  # autograd disagrees with us too: a real mismatch


def test_nan_or_inf_on_either_side_fails() -> None:
    """NaN compares false both ways: `err > tol` would let it pass."""
    ref = {"mu": torch.tensor([[0.0, 1.0, 2.0]]), "logvar": torch.tensor([[0.0, 1.0, 2.0]])}
    for bad in (np.nan, np.inf):
        ours = {"mu": np.array([[0.0, bad, 2.0]], np.float32), "logvar": np.array([[0.0, 1.0, 2.0]], np.float32)}
        reports = {r.name: r for r in compare(ours, ref, 1e-4, 1)}
        assert reports["mu"].outliers == 1 and not reports["mu"].ok and reports["logvar"].ok
        for value in (np.nan, np.inf):  # and in the reference
            nan_ref = {"mu": torch.tensor([[0.0, value, 2.0]]), "logvar": ref["logvar"]}
            clean = {"mu": np.array([[0.0, 1.0, 2.0]], np.float32), "logvar": ours["logvar"]}
            assert not {r.name: r for r in compare(clean, nan_ref, 1e-4, 1)}["mu"].ok


@pytest.mark.parametrize("kind,excused", [("attention", True), ("fusion", True), ("recon_error", False),
                                          ("recon_error_blur", False), ("ssim_error", False)])
def test_anomaly_map_outliers_are_excused_only_for_attention_maps(kind: str, excused: bool) -> None:
    """Only the attention and the fusion carry the backward's ReLU masks; a reconstruction map is
    continuous, so an outlier there is a real mismatch even where the recheck agrees."""
    ref = {"anomaly_map": torch.zeros(1, 1, 2, 2)}
    ref["anomaly_map"][0, 0, 0, 0] = 1.0
    ours = {"anomaly_map": ref["anomaly_map"].numpy().copy()}
    ours["anomaly_map"][0, 0, 1, 1] = 0.5
    recheck = {"anomaly_map": torch.from_numpy(ours["anomaly_map"])}
    (report,) = compare(ours, ref, 1e-4, 1, recheck, anomaly_map=kind)
    assert report.outliers == 1 and report.ok is excused


def test_check_errors_are_one_line(exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    ckpt, path, _ = exported("mnist-conv2")
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    def fail(session: object, image: np.ndarray) -> dict:
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code\nstack trace")

    monkeypatch.setattr(export.check.ort, "run", fail)
    assert check_main(["--onnx", str(path), "--checkpoint", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: inference failed (Fail: ") and err.count("\n") == 1
    monkeypatch.undo()
    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key != "anomaly_map"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    onnx.save(model, str(tmp_path / "old.onnx"))
    assert check_main(["--onnx", str(tmp_path / "old.onnx"), "--checkpoint", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "old.onnx: metadata lacks anomaly_map" in err and err.count("\n") == 1


def test_images_folder_is_read_once_and_repeated_to_fill_a_batch(exported, tmp_path: Path) -> None:
    import cv2

    ckpt, path, _ = exported("mnist-conv2")
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), np.full((40, 30), 60 * i + 20, np.uint8))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    spec = InputSpec(28, 28, 1)
    pool = load_images(tmp_path / "imgs", spec, limit=5)
    assert pool.shape == (2, 28, 28, 1)  # the broken file skipped
    assert load_images(tmp_path / "imgs", spec, limit=1).shape == (1, 28, 28, 1)
    result = check(path, ckpt, batches=(3,), images=tmp_path / "imgs")
    assert result.ok and {r.batch for r in result.reports} == {3}, format_report(result)
    (tmp_path / "none").mkdir()
    assert check_main(["--onnx", str(path), "--checkpoint", str(ckpt), "--images", str(tmp_path / "none")]) == 1


def test_bench_without_its_checkpoint_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["--config", str(REPO / "configs" / "screw_256.yaml"), "--checkpoint", str(tmp_path / "missing.pt"),
            "--results", str(tmp_path / "results")]
    assert bench_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.pt: checkpoint not found" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_trained_mnist_end_to_end(tmp_path: Path) -> None:
    """A briefly trained model (real ReLU patterns) through the CLIs: train, export, check."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "training.train", "--config", "configs/mnist_one_class.yaml",
                        "--out", str(out), "--epochs", "1", "--max-steps", "3", "--quiet"],
                       cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0 and "not found" in r.stderr:
        pytest.skip(f"MNIST data not available: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    onnx_path = tmp_path / "digit.onnx"
    assert onnx_main(["--checkpoint", str(out / "model.pt"), "--out", str(onnx_path), "--score", "difference",
                      "--quiet"]) == 0
    assert check_main(["--onnx", str(onnx_path), "--checkpoint", str(out / "model.pt"), "--batch", "1", "3"]) == 0


def test_constant_fc_head_cotangent_is_folded(exported) -> None:
    """sum_mu without an fc ReLU: ones @ W_mu @ W_fc is the same for every image, so the graph
    holds it as a constant instead of reading the fc weight again per image."""
    _, path, _ = exported("resnet-layer4")
    graph = onnx.load(str(path)).graph
    readers = [n.op_type for n in graph.node if "model.fc.weight" in n.input]
    assert readers == ["Gemm"]  # the forward only
    _, path, _ = exported("mnist-conv2")  # with the fc ReLU the product depends on the image
    assert "MatMul" in [n.op_type for n in onnx.load(str(path)).graph.node if "model.fc.weight" in n.input]


def test_line_graph_computes_only_its_outputs_and_passes_the_check(exported, tmp_path: Path) -> None:
    """--outputs anomaly_map of a reconstruction map: encoder + decoder, no backward; the check covers what it has."""
    ckpt, full, _ = exported("resnet-layer4")  # recon_error_blur, per_dim
    r = export_onnx(ckpt, tmp_path / "line.onnx", layer="layer4", outputs=["anomaly_map"])
    assert r["outputs"] == ["anomaly_map"] and read_metadata(r["onnx"])["outputs"] == ["anomaly_map"]
    side = read_sidecar(r["onnx"])
    assert side["outputs"] == ["anomaly_map"] and side["precision"] == "fp32"
    assert list(side["output_shapes"]) == ["anomaly_map"]
    line, whole = (onnx.load(str(p), load_external_data=False).graph.node for p in (r["onnx"], full))

    def backward(nodes: list) -> int:  # the explicit backward's transposed convolutions, and the attention
        return sum(n.op_type == "ConvTranspose" and not n.name.startswith("/decoder/") or "/attention/" in n.name
                   for n in nodes)
    assert backward(whole) > 10 and backward(line) == 0
    result = check(r["onnx"], ckpt, batches=(1, 3))
    assert result.ok and {(x.batch, x.name) for x in result.reports} == {(1, "anomaly_map"), (3, "anomaly_map")}
    ours = ort.run(ort.session(r["onnx"], device="cpu"), np.full((2, 64, 64, 1), 90, np.uint8))["anomaly_map"]
    theirs = ort.run(ort.session(full, device="cpu"), np.full((2, 64, 64, 1), 90, np.uint8))["anomaly_map"]
    assert np.abs(ours - theirs).max() <= 1e-5 * (theirs.max() - theirs.min())  # the same map, computed alone


def test_line_graph_with_attention_keeps_the_backward_in_contract_order(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", "mnist", anomaly_map="recon_error_blur")
    r = export_onnx(ckpt, tmp_path / "m.onnx", outputs=["anomaly_map", "attention"])
    assert r["outputs"] == ["attention", "anomaly_map"]
    assert any("/attention/" in n.name for n in onnx.load(str(r["onnx"]), load_external_data=False).graph.node)
    result = check(r["onnx"], ckpt, batches=(2,))
    assert result.ok and {x.name for x in result.reports} == {"attention", "anomaly_map"}


def test_outputs_flag_errors_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", "mnist")
    out = str(tmp_path / "m.onnx")
    for outputs, message in (("anomaly_map,heatmap", "unknown output(s) heatmap"),
                             (",", "unknown output(s) (none given)")):
        with pytest.raises(SystemExit) as e:
            onnx_main(["--checkpoint", str(ckpt), "--out", out, "--outputs", outputs])
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        onnx_main(["--checkpoint", str(ckpt), "--out", out, "--outputs", "anomaly_map", "--per-dim"])
    assert e.value.code == 2 and "per_dim asks for 'alpha'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "m.pt"]


def test_a_line_graph_refuses_explain_attention_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--explain attention|both needs the attention output: a graph without it is typed wrong (exit 2)."""
    from runtime.inspect import main as inspect_main
    from runtime.pipeline import ExplainUnavailable, Pipeline

    ckpt = make_checkpoint(tmp_path / "m.pt", "mnist", anomaly_map="recon_error_blur")
    line = export_onnx(ckpt, tmp_path / "line.onnx", outputs=["anomaly_map"])["onnx"]
    images = tmp_path / "in"
    images.mkdir()
    import cv2
    cv2.imwrite(str(images / "a.png"), np.full((28, 28), 128, np.uint8))
    for explain in ("attention", "both"):
        rc = inspect_main(["--engine", str(line), "--input", str(images), "--output", str(tmp_path / f"out_{explain}"),
                           "--explain", explain])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error:") and err.count("\n") == 1, err
        assert "line.onnx" in err and f"--explain {explain} needs the model's 'attention' output" in err
    with pytest.raises(ExplainUnavailable):
        Pipeline.open(line, explain="attention")
    with Pipeline.open(line) as pipe:  # the map that decides needs nothing else
        [res] = pipe(str(images / "a.png"))
        assert set(res.outputs) == {"anomaly_map"} and res.inspection.score >= 0


def test_the_runtime_fetches_the_attention_only_where_it_is_drawn(exported) -> None:
    from runtime.pipeline import Pipeline

    _, path, _ = exported("mnist-conv2")
    x = np.full((28, 28, 1), 77, np.uint8)
    for explain, want in (("anomaly_map", {"anomaly_map"}), ("attention", {"anomaly_map", "attention"}),
                          ("both", {"anomaly_map", "attention"})):
        with Pipeline.open(path, explain=explain) as pipe:
            [out] = pipe.infer([pipe.prepare(x, decoded=True)])
            assert set(out) == want
            full = pipe.model(x[None])  # the model itself still gives every output when asked for all
            assert set(full) == set(read_metadata(path)["outputs"])
            assert np.array_equal(full["anomaly_map"][0], out["anomaly_map"])
            with pytest.raises(ValueError, match="outputs \\['heatmap'\\] are not in the model"):
                pipe.model(x[None], ["heatmap"])
